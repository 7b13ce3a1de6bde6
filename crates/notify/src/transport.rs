//! The one HTTP transport: provider network settings, a cache of `reqwest` clients shared by
//! providers with the same proxy/TLS settings, and sending a [`ForgeRequest`] under a deadline.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Certificate, Identity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::forge::azure_identity::WorkloadIdentity;
use crate::token_cache::{ProviderRef, TokenCache, TokenCacheObserver, TokenCacheSettings};
use crate::{ConfigError, ForgeKind, ForgeRequest, GitHubApp, Retry, Secret};

/// Sent on every request, so forge admins can tell our traffic apart.
pub(crate) const USER_AGENT: &str = concat!("commit-status-controller/", env!("CARGO_PKG_VERSION"));

/// Flux's default Provider `spec.timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// Answers larger than this are cut: the biggest legitimate one is Azure DevOps' status list
/// (up to 1000 entries of well under 2 KiB each).
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Redirects a read follows; GitHub answers 301 for renamed repositories.
const MAX_REDIRECTS: usize = 5;

/// Credentials read from the Provider's secret. Which fields a forge uses is the forge's business.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// Secret key `token`.
    pub token: Option<Secret>,
    /// Secret key `username`.
    pub username: Option<String>,
    /// Secret key `password`.
    pub password: Option<Secret>,
    /// GitHub App settings (secret keys `githubApp*`); GitHub only, used when there is no
    /// `token`/`password`. Set it when the secret has the key `githubAppID`.
    pub github_app: Option<GitHubApp>,
    /// The Provider these credentials belong to: labels token-cache metrics, and names the
    /// namespace of workload-identity ServiceAccounts.
    pub provider: Option<ProviderRef>,
    /// Provider `spec.serviceAccountName` (Azure DevOps workload identity).
    pub service_account_name: Option<String>,
}

impl Credentials {
    /// Surrounding whitespace (typically the newline of a secret created from a file) can never
    /// be part of a valid token, and would make the header invalid.
    pub(crate) fn token(&self) -> Option<&str> {
        non_empty(self.token.as_ref())
    }

    pub(crate) fn password(&self) -> Option<&str> {
        non_empty(self.password.as_ref())
    }

    /// `token`, else `password` (GitHub and GitLab accept either).
    pub(crate) fn token_or_password(&self) -> Option<&str> {
        self.token().or_else(|| self.password())
    }

    /// Values to scrub from error texts.
    pub(crate) fn values(&self) -> Vec<String> {
        [self.token.as_ref(), self.password.as_ref()]
            .into_iter()
            .flatten()
            .flat_map(|s| [s.expose().to_owned(), s.expose().trim().to_owned()])
            .filter(|s| !s.is_empty())
            .collect()
    }
}

fn non_empty(secret: Option<&Secret>) -> Option<&str> {
    secret.map(|s| s.expose().trim()).filter(|s| !s.is_empty())
}

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

/// Everything needed to build a [`crate::Forge`].
#[derive(Clone, Debug)]
pub struct ForgeConfig {
    /// Provider type.
    pub kind: ForgeKind,
    /// Repository address (Provider `spec.address` or secret `address`).
    pub address: String,
    /// Credentials from the Provider's secret.
    pub credentials: Credentials,
    /// Timeout, proxy and TLS.
    pub network: NetworkConfig,
}

// === impl ClientCache ===

#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    proxy: Option<ProxyConfig>,
    tls: Option<TlsConfig>,
}

/// Shares reqwest clients between providers with the same (proxy, TLS) settings so 1,000
/// providers do not mean 1,000 connection pools, and GitHub App installation tokens between
/// providers using the same App. Cheap to clone (Arc inside). Timeouts are per request, not
/// per client.
#[derive(Clone, Default)]
pub struct ClientCache {
    clients: Arc<Mutex<HashMap<ClientKey, reqwest::Client>>>,
    app_tokens: TokenCache,
    /// Kubernetes mode's workload identity, set once the cluster is connected.
    workload_identity: Arc<std::sync::OnceLock<Arc<dyn WorkloadIdentity>>>,
}

impl ClientCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache whose exchanged tokens are bounded by `settings` and reported to `observer`
    /// (`--token-cache-max-size`, `--token-cache-max-duration`).
    pub fn with_token_cache(
        settings: TokenCacheSettings,
        observer: Option<Arc<dyn TokenCacheObserver>>,
    ) -> Self {
        Self {
            clients: Arc::default(),
            app_tokens: TokenCache::new(settings, observer),
            workload_identity: Arc::default(),
        }
    }

    /// Lets Azure DevOps Providers without a token use workload identity (Kubernetes mode).
    /// Set once; later calls are ignored.
    pub fn set_workload_identity(&self, identity: Arc<dyn WorkloadIdentity>) {
        let _ = self.workload_identity.set(identity);
    }

    pub(crate) fn workload_identity(&self) -> Option<&Arc<dyn WorkloadIdentity>> {
        self.workload_identity.get()
    }

    /// Number of distinct clients built so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no client was built yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, reqwest::Client>> {
        // A panic while holding the lock cannot leave the map half-updated (one insert).
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn app_tokens(&self) -> &TokenCache {
        &self.app_tokens
    }

    /// The client for these settings, built on first use.
    pub(crate) fn client(&self, network: &NetworkConfig) -> Result<reqwest::Client, ConfigError> {
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

impl fmt::Debug for ClientCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCache")
            .field("clients", &self.len())
            .finish()
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

/// A complete answer.
pub(crate) struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

/// No answer.
pub(crate) enum SendError {
    Timeout,
    Transport { message: String, retry: Retry },
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
    fn debug_hides_secrets() {
        let network = NetworkConfig {
            proxy: Some(ProxyConfig {
                url: "http://u:proxypass@proxy:3128".into(),
                username: Some("u".into()),
                password: Some(Secret::new("proxypass2")),
            }),
            tls: Some(TlsConfig {
                ca_pem: Some(b"ca".to_vec()),
                client_cert_pem: Some(b"cert".to_vec()),
                client_key_pem: Some(Secret::new("PRIVATEKEY")),
            }),
            ..NetworkConfig::default()
        };
        let config = ForgeConfig {
            kind: ForgeKind::GitHub,
            address: "https://github.com/o/r".into(),
            credentials: Credentials {
                token: Some(Secret::new("ghp_tok")),
                username: None,
                password: Some(Secret::new("pw_secret")),
                github_app: Some(GitHubApp {
                    app_id: "1".into(),
                    private_key: Secret::new("APPKEY"),
                    ..GitHubApp::default()
                }),
                provider: None,
                service_account_name: None,
            },
            network,
        };
        let text = format!("{config:?}");
        for secret in [
            "proxypass",
            "PRIVATEKEY",
            "ghp_tok",
            "pw_secret",
            "APPKEY",
            "u:",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(NetworkConfig::default().timeout, Duration::from_secs(15));
    }

    #[test]
    fn credentials_are_trimmed() {
        let c = Credentials {
            token: Some(Secret::new(" \n")),
            password: Some(Secret::new("pw\n")),
            ..Credentials::default()
        };
        assert_eq!(c.token(), None);
        assert_eq!(c.token_or_password(), Some("pw"));
        assert!(c.values().contains(&"pw".to_owned()));
    }

    #[test]
    fn proxy_validation() {
        let cache = ClientCache::new();
        let net = |url: &str| NetworkConfig {
            proxy: Some(ProxyConfig {
                url: url.into(),
                username: None,
                password: None,
            }),
            ..NetworkConfig::default()
        };
        for bad in ["wrong\nURL", "ftp://proxy:21", "not a url", "http://"] {
            let err = cache.client(&net(bad)).unwrap_err();
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
            cache.client(&net(good)).unwrap();
        }
        assert_eq!(cache.len(), 4);
        cache.client(&net("http://proxy:3128")).unwrap();
        assert_eq!(cache.len(), 4, "same settings share a client");
        let err = cache
            .client(&net("ftp://user:Pr0xyPass@proxy:21"))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("Pr0xyPass") && !err.contains("user"), "{err}");
    }

    #[test]
    fn tls_validation() {
        let cache = ClientCache::new();
        let net = |tls: TlsConfig| NetworkConfig {
            tls: Some(tls),
            ..NetworkConfig::default()
        };
        let err = cache
            .client(&net(TlsConfig {
                ca_pem: Some(b"garbage".to_vec()),
                ..TlsConfig::default()
            }))
            .unwrap_err();
        assert!(matches!(err, ConfigError::CaCertificate(_)), "{err}");

        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = generated.cert.pem().into_bytes();
        let key = Secret::new(generated.signing_key.serialize_pem());
        cache
            .client(&net(TlsConfig {
                ca_pem: Some(cert.clone()),
                ..TlsConfig::default()
            }))
            .unwrap();
        cache
            .client(&net(TlsConfig {
                ca_pem: None,
                client_cert_pem: Some(cert.clone()),
                client_key_pem: Some(key.clone()),
            }))
            .unwrap();
        let half = cache
            .client(&net(TlsConfig {
                client_cert_pem: Some(cert.clone()),
                ..TlsConfig::default()
            }))
            .unwrap_err();
        assert!(matches!(half, ConfigError::ClientCertificate(_)), "{half}");
        let bad_key = cache
            .client(&net(TlsConfig {
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
        cache.client(&net(TlsConfig::default())).unwrap();
        cache.client(&NetworkConfig::default()).unwrap();
        assert_eq!(cache.len(), 3);
    }
}
