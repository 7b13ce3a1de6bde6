//! Turns a Provider and the Secrets it references into a forge configuration, in the order and
//! with the error messages of Flux's `createNotifier` (§2.10).

use std::collections::BTreeMap;

use api::{Provider, Secret};
use notify::{Credentials, ForgeConfig, ForgeKind, NetworkConfig, ProxyConfig, TlsConfig};

use crate::config::error::{ConfigError, SecretProblem};

/// Looks a Secret up by namespace and name.
pub trait SecretSource {
    fn secret(&self, namespace: &str, name: &str) -> Option<&Secret>;
}

impl SecretSource for std::collections::HashMap<(String, String), std::sync::Arc<Secret>> {
    fn secret(&self, namespace: &str, name: &str) -> Option<&Secret> {
        self.get(&(namespace.to_string(), name.to_string()))
            .map(|s| s.as_ref())
    }
}

fn get_secret<'a>(
    src: &'a dyn SecretSource,
    ns: &str,
    name: &str,
) -> Result<&'a Secret, ConfigError> {
    src.secret(ns, name)
        .ok_or_else(|| ConfigError::SecretNotFound {
            namespace: ns.to_owned(),
            name: name.to_owned(),
        })
}

const MAX_ADDRESS: usize = 2048;

/// What `AuthMethodsFromSecret` finds in a credentials Secret.
struct AuthMethods {
    token: Option<String>,
    basic: Option<(String, String)>,
    tls: Option<TlsConfig>,
    github_app: Option<notify::GitHubApp>,
}

/// Flux reads credentials through `runtime/secrets`, which refuses a half-present basic-auth
/// pair or unusable TLS material; that refusal matters for where errors surface.
///
/// `spec_username`: Bitbucket Server's `spec.username`, which Flux documents as pairing with
/// a `password`-only Secret; Flux broke that in 1.7, we keep it working.
fn auth_methods(
    secret: &Secret,
    ns: &str,
    name: &str,
    spec_username: Option<&str>,
) -> Result<AuthMethods, ConfigError> {
    let username = secret.string("username");
    let password = secret.string("password");
    let basic = match (username, password) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, Some(p)) if spec_username.is_some_and(|u| !u.is_empty()) => {
            Some((spec_username.unwrap_or_default().to_string(), p))
        }
        (None, Some(_)) => {
            return Err(ConfigError::secret(
                ns,
                name,
                SecretProblem::PasswordWithoutUsername,
            ));
        }
        (Some(_), None) => {
            return Err(ConfigError::secret(
                ns,
                name,
                SecretProblem::UsernameWithoutPassword,
            ));
        }
        (None, None) => None,
    };
    let tls = tls_from_secret(secret, ns, name, false)?;
    // The App's own checks (installation ID or owner, key format) are the forge's, with
    // Flux's messages; here the keys are only gathered.
    // GitHub takes the App's client ID as the JWT issuer as well as its numeric ID (and
    // recommends the client ID); `githubAppID` wins when both are set, as before.
    let app_id = secret.string("githubAppID");
    let issuer = match app_id {
        Some(id) if !id.trim().is_empty() => Some(id),
        id => secret
            .string("githubAppClientID")
            .filter(|c| !c.trim().is_empty())
            .or(id),
    };
    let github_app = issuer.map(|app_id| notify::GitHubApp {
        app_id: app_id.trim().to_string(),
        installation_id: secret
            .string("githubAppInstallationID")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty()),
        installation_owner: secret
            .string("githubAppInstallationOwner")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty()),
        private_key: notify::Secret::new(secret.string("githubAppPrivateKey").unwrap_or_default()),
        base_url: secret
            .string("githubAppBaseURL")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty()),
    });
    Ok(AuthMethods {
        token: secret.string("token"),
        basic,
        tls,
        github_app,
    })
}

/// TLS material from `ca.crt`/`tls.crt`/`tls.key` (or the legacy `caFile`/`certFile`/`keyFile`).
/// `required`: a `certSecretRef` Secret must hold at least a CA or a key pair.
fn tls_from_secret(
    secret: &Secret,
    ns: &str,
    name: &str,
    required: bool,
) -> Result<Option<TlsConfig>, ConfigError> {
    let pick = |new: &str, legacy: &str| {
        secret
            .data
            .get(new)
            .or_else(|| secret.data.get(legacy))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let ca = pick("ca.crt", "caFile");
    let cert = pick("tls.crt", "certFile");
    let key = pick("tls.key", "keyFile");
    if let Some(ca) = &ca
        && !looks_like_pem(ca, "CERTIFICATE")
    {
        return Err(ConfigError::secret(ns, name, SecretProblem::CaNotPem));
    }
    let pair = match (cert, key) {
        (Some(c), Some(k)) => {
            if !looks_like_pem(&c, "CERTIFICATE") || !looks_like_pem(&k, "PRIVATE KEY") {
                return Err(ConfigError::secret(
                    ns,
                    name,
                    SecretProblem::ClientPairNotPem,
                ));
            }
            Some((c, k))
        }
        (Some(_), None) => {
            return Err(ConfigError::secret(ns, name, SecretProblem::CertWithoutKey));
        }
        (None, Some(_)) => {
            return Err(ConfigError::secret(ns, name, SecretProblem::KeyWithoutCert));
        }
        (None, None) => None,
    };
    if ca.is_none() && pair.is_none() {
        if required {
            return Err(ConfigError::secret(ns, name, SecretProblem::NoTlsMaterial));
        }
        return Ok(None);
    }
    let (client_cert_pem, client_key_pem) = match pair {
        Some((c, k)) => (
            Some(c),
            Some(notify::Secret::new(String::from_utf8_lossy(&k))),
        ),
        None => (None, None),
    };
    Ok(Some(TlsConfig {
        ca_pem: ca,
        client_cert_pem,
        client_key_pem,
    }))
}

fn looks_like_pem(data: &[u8], label: &str) -> bool {
    let text = String::from_utf8_lossy(data);
    text.contains("-----BEGIN ") && text.contains(label)
}

/// Resolves everything a forge needs. `kind` is the Provider's (commit-status) type.
pub fn forge_config(
    provider: &Provider,
    kind: ForgeKind,
    secrets: &dyn SecretSource,
) -> Result<ForgeConfig, ConfigError> {
    let spec = &provider.spec;
    let ns = provider.metadata.namespace.as_str();
    let mut address = spec.address.clone().unwrap_or_default();
    let mut proxy: Option<ProxyConfig> = spec.proxy.as_ref().map(|url| ProxyConfig {
        url: url.clone(),
        username: None,
        password: None,
    });
    let mut credentials = Credentials {
        username: spec.username.clone(),
        provider: Some(notify::token_cache::ProviderRef {
            namespace: ns.to_owned(),
            name: provider.metadata.name.clone(),
        }),
        service_account_name: spec
            .service_account_name
            .clone()
            .filter(|s| !s.trim().is_empty()),
        ..Credentials::default()
    };
    let mut auth_error = None;
    let mut secret_tls = None;

    if let Some(secret_ref) = &spec.secret_ref {
        let secret = get_secret(secrets, ns, &secret_ref.name)?;
        if let Some(addr) = secret.data.get("address") {
            if addr.len() > MAX_ADDRESS {
                return Err(ConfigError::SecretAddressTooLong { max: MAX_ADDRESS });
            }
            address = String::from_utf8_lossy(addr).trim().to_string();
        }
        if let Some(p) = secret.string("proxy") {
            let p = p.trim().to_string();
            if url::Url::parse(&p).is_err() {
                return Err(ConfigError::SecretProxy {
                    namespace: ns.to_owned(),
                    name: secret_ref.name.clone(),
                });
            }
            proxy = Some(ProxyConfig {
                url: p,
                username: None,
                password: None,
            });
        }
        if let Some(headers) = secret.string("headers")
            && let Err(e) = serde_saphyr::from_str::<BTreeMap<String, String>>(&headers)
        {
            // The headers are credentials more often than not: position only, no source text.
            return Err(ConfigError::SecretHeaders(crate::config::yaml::yaml_error(
                &e, 0,
            )));
        }
        let spec_username = (kind == ForgeKind::BitbucketServer)
            .then_some(spec.username.as_deref())
            .flatten();
        match auth_methods(secret, ns, &secret_ref.name, spec_username) {
            Ok(auth) => {
                credentials.token = auth.token.map(notify::Secret::new);
                credentials.github_app = auth.github_app;
                if let Some((u, p)) = auth.basic {
                    credentials.username = Some(u);
                    credentials.password = Some(notify::Secret::new(p));
                }
                secret_tls = auth.tls;
            }
            // Flux drops all credentials silently here, then fails below while reading TLS.
            Err(e) => auth_error = Some(e),
        }
    }

    if let Some(proxy_ref) = &spec.proxy_secret_ref {
        let proxy_error = |e| ConfigError::Proxy(Box::new(e));
        let problem = |problem| proxy_error(ConfigError::secret(ns, &proxy_ref.name, problem));
        let secret = get_secret(secrets, ns, &proxy_ref.name).map_err(proxy_error)?;
        let addr = secret
            .string("address")
            .map(|a| a.trim().to_string())
            .unwrap_or_default();
        if addr.is_empty() {
            return Err(problem(SecretProblem::NoAddress));
        }
        if addr.len() > MAX_ADDRESS {
            return Err(problem(SecretProblem::AddressTooLong { max: MAX_ADDRESS }));
        }
        match url::Url::parse(&addr) {
            Ok(u) if notify::PROXY_SCHEMES.contains(&u.scheme()) => {}
            // The address may carry a password: only its redacted form is shown.
            _ => {
                return Err(problem(SecretProblem::ProxyScheme {
                    address: notify::address::redacted(&addr),
                    schemes: notify::PROXY_SCHEMES.join(", "),
                }));
            }
        }
        proxy = Some(ProxyConfig {
            url: addr,
            username: secret.string("username").filter(|u| !u.is_empty()),
            password: secret
                .string("password")
                .filter(|p| !p.is_empty())
                .map(notify::Secret::new),
        });
    }

    let tls_error = |e| ConfigError::Tls(Box::new(e));
    let tls = if let Some(cert_ref) = &spec.cert_secret_ref {
        let secret = get_secret(secrets, ns, &cert_ref.name).map_err(tls_error)?;
        if !matches!(secret.type_.as_str(), "" | "Opaque" | "kubernetes.io/tls") {
            return Err(tls_error(ConfigError::secret(
                ns,
                &cert_ref.name,
                SecretProblem::Type(secret.type_.clone()),
            )));
        }
        tls_from_secret(secret, ns, &cert_ref.name, true).map_err(tls_error)?
    } else {
        if let Some(e) = auth_error {
            return Err(tls_error(e));
        }
        secret_tls
    };

    Ok(ForgeConfig {
        kind,
        address,
        credentials,
        network: NetworkConfig {
            timeout: spec.timeout(),
            proxy,
            tls,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::{LocalObjectReference, ProviderSpec};
    use std::collections::HashMap;
    use std::sync::Arc;

    fn secret(name: &str, data: &[(&str, &str)]) -> ((String, String), Arc<Secret>) {
        let s = Secret::test("ns", name).with_all(data);
        (("ns".into(), name.into()), Arc::new(s))
    }

    fn provider(spec: ProviderSpec) -> Provider {
        Provider {
            spec,
            ..Provider::test("ns", "p")
        }
    }

    /// A GitHub Provider's spec with its token in Secret `secret`.
    fn spec_with(secret: &str) -> ProviderSpec {
        Provider::test("ns", "p").secret_ref(secret).spec
    }

    #[test]
    fn secret_overrides_and_errors() {
        let secrets: HashMap<_, _> = [
            secret(
                "tok",
                &[
                    ("token", "ghp_x"),
                    ("address", "  https://github.com/a/b \n"),
                ],
            ),
            secret("half", &[("token", "t"), ("password", "p")]),
            secret(
                "badproxy",
                &[("token", "t"), ("proxy", "https://exampleproxy.com|")],
            ),
            secret("headers", &[("token", "t"), ("headers", "foo")]),
            secret(
                "long",
                &[(
                    "address",
                    &format!("https://example.org/{}", "a".repeat(2029)),
                )],
            ),
        ]
        .into_iter()
        .collect();
        let cfg = forge_config(&provider(spec_with("tok")), ForgeKind::GitHub, &secrets).unwrap();
        assert_eq!(cfg.address, "https://github.com/a/b");
        assert_eq!(cfg.credentials.token.unwrap().expose(), "ghp_x");
        let err = |s: &str| {
            forge_config(&provider(spec_with(s)), ForgeKind::GitHub, &secrets)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("missing"),
            "failed to get secret 'ns/missing': secrets \"missing\" not found"
        );
        assert_eq!(
            err("half"),
            "failed to get TLS config: secret 'ns/half': malformed basic auth - has 'password' but missing 'username'"
        );
        assert_eq!(err("badproxy"), "invalid 'proxy' in secret 'ns/badproxy'");
        assert!(err("headers").starts_with("failed to read headers from secret: "));
        assert_eq!(
            err("long"),
            "invalid address in secret: address exceeds maximum length of 2048 bytes"
        );
    }

    #[test]
    fn github_app_client_id_as_issuer() {
        let key = ("githubAppPrivateKey", "pem");
        let secrets: HashMap<_, _> = [
            secret(
                "client",
                &[
                    ("githubAppClientID", " Iv23li \n"),
                    ("githubAppInstallationID", "1"),
                    key,
                ],
            ),
            secret(
                "both",
                &[("githubAppID", "42"), ("githubAppClientID", "Iv23li"), key],
            ),
            secret(
                "empty-id",
                &[("githubAppID", ""), ("githubAppClientID", "Iv23li"), key],
            ),
            secret("none", &[("githubAppInstallationID", "1"), key]),
        ]
        .into_iter()
        .collect();
        let app = |s: &str| {
            forge_config(&provider(spec_with(s)), ForgeKind::GitHub, &secrets)
                .unwrap()
                .credentials
                .github_app
                .map(|a| a.app_id)
        };
        assert_eq!(app("client").as_deref(), Some("Iv23li"));
        assert_eq!(app("both").as_deref(), Some("42"));
        assert_eq!(app("empty-id").as_deref(), Some("Iv23li"));
        assert_eq!(app("none"), None);
    }

    #[test]
    fn timeout_and_proxy_secret() {
        let secrets: HashMap<_, _> = [
            secret("tok", &[("token", "t")]),
            secret(
                "proxy",
                &[
                    ("address", "http://127.0.0.1:3128"),
                    ("username", "u"),
                    ("password", "pw"),
                ],
            ),
            secret("noaddr", &[("username", "u")]),
        ]
        .into_iter()
        .collect();
        let mut spec = spec_with("tok");
        spec.timeout = Some("2s".into());
        spec.proxy_secret_ref = Some(LocalObjectReference {
            name: "proxy".into(),
        });
        let cfg = forge_config(&provider(spec.clone()), ForgeKind::GitHub, &secrets).unwrap();
        assert_eq!(cfg.network.timeout, std::time::Duration::from_secs(2));
        let p = cfg.network.proxy.unwrap();
        assert_eq!(p.url, "http://127.0.0.1:3128");
        assert_eq!(p.username.as_deref(), Some("u"));
        spec.proxy_secret_ref = Some(LocalObjectReference {
            name: "noaddr".into(),
        });
        let e = forge_config(&provider(spec.clone()), ForgeKind::GitHub, &secrets).unwrap_err();
        assert_eq!(e.name(), "secret_address");
        assert!(
            e.to_string().starts_with("failed to get proxy URL: "),
            "{e}"
        );

        // socks5h (DNS through the proxy) is taken like socks5; a refused scheme is shown
        // without its password.
        let secrets: HashMap<_, _> = [
            secret("tok", &[("token", "t")]),
            secret(
                "socks",
                &[("address", "socks5h://u:Pr0xyPass@127.0.0.1:1080")],
            ),
            secret(
                "ftp",
                &[("address", "ftp://u:Pr0xyPass@127.0.0.1:2121/?k=Pr0xyPass")],
            ),
            secret(
                "hdr",
                &[
                    ("token", "t"),
                    ("headers", "Authorization: \"Bearer Hdr5ecret\n"),
                ],
            ),
        ]
        .into_iter()
        .collect();
        spec.proxy_secret_ref = Some(LocalObjectReference {
            name: "socks".into(),
        });
        let cfg = forge_config(&provider(spec.clone()), ForgeKind::GitHub, &secrets).unwrap();
        assert!(cfg.network.proxy.unwrap().url.starts_with("socks5h://"));
        spec.proxy_secret_ref = Some(LocalObjectReference { name: "ftp".into() });
        let e = forge_config(&provider(spec), ForgeKind::GitHub, &secrets)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "failed to get proxy URL: secret 'ns/ftp': invalid proxy address \"ftp://127.0.0.1:2121/\": scheme must be one of http, https, socks5, socks5h"
        );
        let e = forge_config(&provider(spec_with("hdr")), ForgeKind::GitHub, &secrets)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("failed to read headers from secret: line 1"),
            "{e}"
        );
        assert!(!e.contains("Hdr5ecret"), "{e}");
    }

    #[test]
    fn cert_secret_rules() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let key = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";
        let secrets: HashMap<_, _> = [
            secret("tok", &[("token", "t")]),
            secret("ca", &[("ca.crt", pem)]),
            secret("legacy", &[("caFile", pem)]),
            secret("mtls", &[("tls.crt", pem), ("tls.key", key)]),
            secret("half", &[("tls.crt", pem)]),
            secret("empty", &[("foo", "bar")]),
            secret("badca", &[("ca.crt", "nope")]),
        ]
        .into_iter()
        .collect();
        let with_cert = |name: &str| {
            let mut spec = spec_with("tok");
            spec.cert_secret_ref = Some(LocalObjectReference { name: name.into() });
            forge_config(&provider(spec), ForgeKind::GitHub, &secrets)
        };
        assert!(
            with_cert("ca")
                .unwrap()
                .network
                .tls
                .unwrap()
                .ca_pem
                .is_some()
        );
        assert!(
            with_cert("legacy")
                .unwrap()
                .network
                .tls
                .unwrap()
                .ca_pem
                .is_some()
        );
        let tls = with_cert("mtls").unwrap().network.tls.unwrap();
        assert!(tls.client_cert_pem.is_some() && tls.client_key_pem.is_some());
        for bad in ["half", "empty", "badca", "absent"] {
            let e = with_cert(bad).unwrap_err().to_string();
            assert!(e.starts_with("failed to get TLS config: "), "{bad}: {e}");
        }
    }
}
