//! The one HTTP transport: provider network settings, a cache of `reqwest` clients shared by
//! providers with the same proxy/TLS settings, and sending a [`ForgeRequest`] under a deadline.
//! It knows nothing of forges or credentials: whatever it sends was built elsewhere.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Certificate, Identity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Failure;
use crate::request::Response;
use crate::{ConfigError, ForgeRequest, Retry, Secret};

/// Sent on every request, so forge admins can tell our traffic apart.
pub(crate) const USER_AGENT: &str = concat!("commit-status-controller/", env!("CARGO_PKG_VERSION"));

/// Flux's default Provider `spec.timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// Answers larger than this are cut: the biggest legitimate one is Azure DevOps' status list
/// (up to 1000 entries of well under 2 KiB each).
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Redirects a read follows; GitHub answers 301 for renamed repositories.
const MAX_REDIRECTS: usize = 5;

/// Proxy URL schemes taken everywhere a proxy can be set (`socks5h` resolves names through
/// the proxy, `socks5` locally).
pub const PROXY_SCHEMES: [&str; 4] = ["http", "https", "socks5", "socks5h"];

/// An HTTP(S) or SOCKS5 proxy for every request of a forge.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ProxyConfig {
    /// `http://`, `https://`, `socks5://` or `socks5h://` URL. Shown ([`fmt::Debug`]) without
    /// user info.
    pub url: String,
    /// Proxy basic-auth user.
    pub username: Option<String>,
    /// Proxy basic-auth password.
    pub password: Option<Secret>,
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("url", &redact_url(&self.url))
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

/// The URL without user info, query or fragment.
fn redact_url(raw: &str) -> String {
    crate::address::redacted(raw)
}

/// TLS material: a CA bundle that *replaces* the system roots, and/or a client certificate.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct TlsConfig {
    /// PEM CA bundle (`ca.crt`).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate chain (`tls.crt`).
    pub client_cert_pem: Option<Vec<u8>>,
    /// PEM client key (`tls.key`).
    pub client_key_pem: Option<Secret>,
}

impl TlsConfig {
    fn is_empty(&self) -> bool {
        self.ca_pem.is_none() && self.client_cert_pem.is_none() && self.client_key_pem.is_none()
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = |v: &Option<Vec<u8>>| v.as_ref().map(|v| format!("{} bytes", v.len()));
        f.debug_struct("TlsConfig")
            .field("ca_pem", &len(&self.ca_pem))
            .field("client_cert_pem", &len(&self.client_cert_pem))
            .field("client_key_pem", &self.client_key_pem)
            .finish()
    }
}

/// How to reach the forge.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// Deadline for each HTTP request (Provider `spec.timeout`).
    pub timeout: Duration,
    /// Provider proxy; without one, `HTTP(S)_PROXY`/`NO_PROXY` from the environment apply.
    pub proxy: Option<ProxyConfig>,
    /// Custom trust and client certificate.
    pub tls: Option<TlsConfig>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            proxy: None,
            tls: None,
        }
    }
}

// === impl Clients ===

#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    proxy: Option<ProxyConfig>,
    tls: Option<TlsConfig>,
}

/// The reqwest clients built so far, one per distinct (proxy, TLS) settings. Cheap to clone
/// (Arc inside); the credentials' `ClientCache` holds one.
#[derive(Clone, Default)]
pub(crate) struct Clients {
    clients: Arc<Mutex<HashMap<ClientKey, reqwest::Client>>>,
}

impl Clients {
    /// Number of distinct clients built so far.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, reqwest::Client>> {
        // A panic while holding the lock cannot leave the map half-updated (one insert).
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The client for these settings, built on first use.
    pub(crate) fn get(&self, network: &NetworkConfig) -> Result<reqwest::Client, ConfigError> {
        let key = ClientKey {
            proxy: network.proxy.clone(),
            tls: network.tls.clone().filter(|t| !t.is_empty()),
        };
        let mut clients = self.lock();
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = build_client(key.proxy.as_ref(), key.tls.as_ref())?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

fn build_client(
    proxy: Option<&ProxyConfig>,
    tls: Option<&TlsConfig>,
) -> Result<reqwest::Client, ConfigError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        // Redirects are followed by `send`, which knows the method; reqwest's policy would
        // replay a POST answered 302 as a GET and keep forge-specific credential headers
        // (`PRIVATE-TOKEN`) on a hop to another origin.
        .redirect(reqwest::redirect::Policy::none());
    if let Some(proxy) = proxy {
        builder = builder.proxy(proxy_from(proxy)?);
    }
    if let Some(tls) = tls {
        if let Some(ca) = &tls.ca_pem {
            builder = builder.tls_certs_only(ca_certificates(ca)?);
        }
        if let Some(identity) = identity(tls)? {
            builder = builder.identity(identity);
        }
    }
    builder
        .build()
        .map_err(|e| ConfigError::HttpClient(error_chain(&e)))
}

fn proxy_from(config: &ProxyConfig) -> Result<reqwest::Proxy, ConfigError> {
    let url =
        url::Url::parse(config.url.trim()).map_err(|e| ConfigError::ProxyUrl(e.to_string()))?;
    if !PROXY_SCHEMES.contains(&url.scheme()) {
        return Err(ConfigError::ProxyUrl(format!(
            "scheme {:?} is not one of {}",
            url.scheme(),
            PROXY_SCHEMES.join(", ")
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::ProxyUrl("no host".to_owned()));
    }
    let mut proxy = reqwest::Proxy::all(url.as_str())
        .map_err(|e| ConfigError::ProxyUrl(error_chain(&e.without_url())))?;
    if let Some(username) = config.username.as_deref().filter(|u| !u.is_empty()) {
        let password = config
            .password
            .as_ref()
            .map(Secret::expose)
            .unwrap_or_default();
        proxy = proxy.basic_auth(username, password);
    }
    Ok(proxy)
}

fn ca_certificates(pem: &[u8]) -> Result<Vec<Certificate>, ConfigError> {
    let ders = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::CaCertificate(format!("{e:?}")))?;
    if ders.is_empty() {
        return Err(ConfigError::CaCertificate(
            "no PEM certificate found".to_owned(),
        ));
    }
    ders.iter()
        .map(|der| {
            Certificate::from_der(der).map_err(|e| ConfigError::CaCertificate(error_chain(&e)))
        })
        .collect()
}

fn identity(tls: &TlsConfig) -> Result<Option<Identity>, ConfigError> {
    let (cert, key) = match (&tls.client_cert_pem, &tls.client_key_pem) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => {
            return Err(ConfigError::ClientCertificate(
                "a client certificate and its key must be given together".to_owned(),
            ));
        }
    };
    let certs = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::ClientCertificate(format!("certificate: {e:?}")))?;
    if certs.is_empty() {
        return Err(ConfigError::ClientCertificate(
            "no PEM certificate found".to_owned(),
        ));
    }
    // Parsed here only to report a bad key as such; the error never includes key material.
    PrivateKeyDer::from_pem_slice(key.expose().as_bytes()).map_err(|_| {
        ConfigError::ClientCertificate("the key is not a PEM private key".to_owned())
    })?;
    let mut bundle = cert.clone();
    bundle.push(b'\n');
    bundle.extend_from_slice(key.expose().as_bytes());
    Identity::from_pem(&bundle)
        .map(Some)
        .map_err(|e| ConfigError::ClientCertificate(error_chain(&e)))
}

/// An error and its sources on one line (`a: b: c`).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

// === sending ===

/// No answer.
pub(crate) enum SendError {
    Timeout,
    Transport { message: String, retry: Retry },
}

impl SendError {
    /// The failure of a request sent with `timeout` as its deadline.
    pub(crate) fn failure(self, timeout: Duration) -> Failure {
        match self {
            SendError::Timeout => Failure::Timeout { after: timeout },
            SendError::Transport { message, retry } => Failure::Transport { message, retry },
        }
    }
}

/// Sends one request; the deadline covers connecting, sending, reading the whole body and
/// any redirect followed.
///
/// Only reads (`GET`) follow redirects, and only to HTTPS URLs of the request's own origin,
/// where the credentials are already going. Any other 3xx (every redirect of a write, a hop to
/// another origin or to plain HTTP, one hop too many) is returned as the answer, which the
/// forge refuses as a failure: no credential ever travels to a host the Provider did not name.
pub(crate) async fn send(
    client: &reqwest::Client,
    request: &ForgeRequest,
    timeout: Duration,
) -> Result<Response, SendError> {
    let exchange = async {
        let mut url = request.url.clone();
        let mut hops = 0;
        loop {
            let response = send_once(client, request, &url).await?;
            match redirect_target(request, &url, &response) {
                Some(next) if hops < MAX_REDIRECTS => {
                    tracing::debug!(method = %request.method, from = %crate::address::redacted(&url), to = %crate::address::redacted(&next), status = response.status, "following a same-origin redirect");
                    url = next;
                    hops += 1;
                }
                _ => return Ok::<_, reqwest::Error>(response),
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(SendError::Timeout),
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) if e.is_timeout() => Err(SendError::Timeout),
        Ok(Err(e)) => {
            // A request we could not even build (bad header, bad URL) will never succeed.
            let retry = if e.is_builder() || e.is_redirect() {
                Retry::No
            } else {
                Retry::Backoff
            };
            Err(SendError::Transport {
                message: error_chain(&e.without_url()),
                retry,
            })
        }
    }
}

/// One HTTP exchange of `request`, sent to `url` (the request's own, or a redirect's).
async fn send_once(
    client: &reqwest::Client,
    request: &ForgeRequest,
    url: &str,
) -> Result<Response, reqwest::Error> {
    let mut builder = client.request(request.method.clone(), url);
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    if let Some(body) = &request.body {
        builder = builder.body(body.clone());
    }
    let mut response = builder.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_RESPONSE_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if chunk.len() >= room {
            break;
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Where a redirect answer to `request` (sent to `current`) may be followed, if anywhere:
/// reads only, to an HTTPS URL with the same origin as the request's own URL. The request is
/// then sent again unchanged, credentials included, which is safe because the origin is the
/// one they were meant for; nothing is sent anywhere else.
pub(crate) fn redirect_target(
    request: &ForgeRequest,
    current: &str,
    response: &Response,
) -> Option<String> {
    if !matches!(response.status, 301 | 302 | 303 | 307 | 308)
        || request.method != http::Method::GET
    {
        return None;
    }
    let location = response
        .headers
        .get(http::header::LOCATION)?
        .to_str()
        .ok()?;
    let origin = url::Url::parse(&request.url).ok()?;
    let next = url::Url::parse(current).ok()?.join(location).ok()?;
    let same_origin = next.scheme() == "https"
        && origin.scheme() == "https"
        && next.origin() == origin.origin()
        && next.username().is_empty()
        && next.password().is_none();
    same_origin.then(|| next.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_validation() {
        let cache = Clients::default();
        let net = |url: &str| NetworkConfig {
            proxy: Some(ProxyConfig {
                url: url.into(),
                username: None,
                password: None,
            }),
            ..NetworkConfig::default()
        };
        for bad in ["wrong\nURL", "ftp://proxy:21", "not a url", "http://"] {
            let err = cache.get(&net(bad)).unwrap_err();
            assert!(
                err.to_string().starts_with("invalid proxy URL"),
                "{bad}: {err}"
            );
        }
        for good in [
            "http://proxy:3128",
            "https://proxy",
            "socks5://proxy:1080",
            "socks5h://user:pass@proxy:1080",
        ] {
            cache.get(&net(good)).unwrap();
        }
        assert_eq!(cache.len(), 4);
        cache.get(&net("http://proxy:3128")).unwrap();
        assert_eq!(cache.len(), 4, "same settings share a client");
        let err = cache
            .get(&net("ftp://user:Pr0xyPass@proxy:21"))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("Pr0xyPass") && !err.contains("user"), "{err}");
    }

    #[test]
    fn tls_validation() {
        let cache = Clients::default();
        let net = |tls: TlsConfig| NetworkConfig {
            tls: Some(tls),
            ..NetworkConfig::default()
        };
        let err = cache
            .get(&net(TlsConfig {
                ca_pem: Some(b"garbage".to_vec()),
                ..TlsConfig::default()
            }))
            .unwrap_err();
        assert!(matches!(err, ConfigError::CaCertificate(_)), "{err}");

        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = generated.cert.pem().into_bytes();
        let key = Secret::new(generated.signing_key.serialize_pem());
        cache
            .get(&net(TlsConfig {
                ca_pem: Some(cert.clone()),
                ..TlsConfig::default()
            }))
            .unwrap();
        cache
            .get(&net(TlsConfig {
                ca_pem: None,
                client_cert_pem: Some(cert.clone()),
                client_key_pem: Some(key.clone()),
            }))
            .unwrap();
        let half = cache
            .get(&net(TlsConfig {
                client_cert_pem: Some(cert.clone()),
                ..TlsConfig::default()
            }))
            .unwrap_err();
        assert!(matches!(half, ConfigError::ClientCertificate(_)), "{half}");
        let bad_key = cache
            .get(&net(TlsConfig {
                ca_pem: None,
                client_cert_pem: Some(cert),
                client_key_pem: Some(Secret::new("not a key")),
            }))
            .unwrap_err();
        assert!(
            matches!(bad_key, ConfigError::ClientCertificate(_)),
            "{bad_key}"
        );
        // An all-empty TLS config is no TLS config.
        cache.get(&net(TlsConfig::default())).unwrap();
        cache.get(&NetworkConfig::default()).unwrap();
        assert_eq!(cache.len(), 3);
    }
}
