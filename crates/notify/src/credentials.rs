//! What a forge authenticates with, and the caches forges share: the Provider secret's
//! credentials (GitHub App settings included), the workload-identity sources of Kubernetes
//! mode, and [`ClientCache`] (HTTP clients, exchanged tokens). Plain data and state; the
//! exchanges themselves are built in `forge` and sent by the transport.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use crate::token_cache::{ProviderRef, TokenCache, TokenCacheObserver, TokenCacheSettings};
use crate::transport::{Clients, NetworkConfig};
use crate::{ConfigError, Secret};

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

/// GitHub App credentials, from the Provider secret keys `githubAppID`,
/// `githubAppInstallationID`, `githubAppInstallationOwner`, `githubAppPrivateKey` and
/// `githubAppBaseURL`. `Debug` never shows the private key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GitHubApp {
    /// `githubAppID`: the App ID (the JWT issuer).
    pub app_id: String,
    /// `githubAppInstallationID`; exactly one of this and `installation_owner`.
    pub installation_id: Option<String>,
    /// `githubAppInstallationOwner`: org or user login whose installation is looked up.
    pub installation_owner: Option<String>,
    /// `githubAppPrivateKey`: PEM RSA key (PKCS#1 as GitHub hands it out, or PKCS#8).
    pub private_key: Secret,
    /// `githubAppBaseURL`: API base for the App calls (GitHub Enterprise Server,
    /// e.g. `https://ghe.example.com/api/v3`); default `https://api.github.com/`.
    pub base_url: Option<String>,
}

// === workload identity (Azure DevOps, Kubernetes mode) ===

/// The Entra application to get a token for, and the Kubernetes token proving who asks.
pub struct FederatedIdentity {
    pub tenant_id: String,
    pub client_id: String,
    pub assertion: Secret,
}

/// Future of [`IdentitySource::identity`].
pub type IdentityFuture<'a> =
    Pin<Box<dyn Future<Output = Result<FederatedIdentity, String>> + Send + 'a>>;

/// One identity: a ServiceAccount, or the controller itself.
pub trait IdentitySource: Send + Sync {
    /// Tells identities apart: Providers with equal keys share one token.
    fn key(&self) -> String;
    /// In Flux's words, whose token it is: `service account 'ns/name'` or `the controller`.
    fn subject(&self) -> String;
    /// The tenant, the client and a fresh assertion. The error is the whole message after
    /// `failed to get token: `, worded as Flux's.
    fn identity(&self) -> IdentityFuture<'_>;
}

/// Hands out the identity a Provider uses. Only Kubernetes mode has one.
pub trait WorkloadIdentity: Send + Sync {
    /// `namespace`: the Provider's; `service_account`: its `spec.serviceAccountName`.
    fn source(
        &self,
        namespace: &str,
        service_account: Option<&str>,
    ) -> Result<Arc<dyn IdentitySource>, String>;
}

// === impl ClientCache ===

/// Shares reqwest clients between providers with the same (proxy, TLS) settings so 1,000
/// providers do not mean 1,000 connection pools, and exchanged tokens (GitHub App
/// installation tokens, Azure access tokens) between providers using the same identity.
/// Cheap to clone (Arc inside). Timeouts are per request, not per client.
#[derive(Clone, Default)]
pub struct ClientCache {
    clients: Clients,
    app_tokens: TokenCache,
    /// Kubernetes mode's workload identity, set once the cluster is connected.
    workload_identity: Arc<OnceLock<Arc<dyn WorkloadIdentity>>>,
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
            clients: Clients::default(),
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
        self.clients.len()
    }

    /// Whether no client was built yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn app_tokens(&self) -> &TokenCache {
        &self.app_tokens
    }

    /// The client for these settings, built on first use.
    pub(crate) fn client(&self, network: &NetworkConfig) -> Result<reqwest::Client, ConfigError> {
        self.clients.get(network)
    }
}

impl fmt::Debug for ClientCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCache")
            .field("clients", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{ProxyConfig, TlsConfig};
    use crate::{ForgeConfig, ForgeKind};

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
        assert_eq!(
            NetworkConfig::default().timeout,
            std::time::Duration::from_secs(15)
        );
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
}
