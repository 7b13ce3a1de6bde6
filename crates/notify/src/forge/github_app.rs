//! GitHub App authentication: the App settings from the Provider's secret, the RS256 JWT, the
//! installation lookup and the installation-token exchange, with tokens cached per App and
//! shared by every forge that uses the same App.
//!
//! Flux exchanges the token while building the notifier; we have no I/O at construction, so
//! the settings and the private key are checked in [`AppAuth::new`] and the exchange happens
//! on the first delivery that needs a token.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::encode::path_segment;
use crate::error::{Failure, classify, forge_message};
use crate::token_cache::{ProviderRef, TokenCache};
use crate::transport::{self, SendError, USER_AGENT};
use crate::{ConfigError, DeliveryError, ForgeKind, ForgeRequest, Retry, Secret};

/// The API every App talks to unless `githubAppBaseURL` says otherwise.
const DEFAULT_BASE: &str = "https://api.github.com/";
/// `iat` is backdated so a server clock slightly behind ours still accepts the JWT.
const JWT_BACKDATE_SECS: u64 = 30;
/// The JWT only has to live through the two or three calls of one exchange; GitHub refuses
/// anything over ten minutes.
const JWT_LIFETIME_SECS: u64 = 120;
/// A cached token is replaced this long before GitHub says it expires, so a delivery never
/// starts with a token that dies mid-flight.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Installation tokens live one hour; a longer `expires_at` is not believed (Flux caps its
/// token cache at one hour too).
const MAX_TOKEN_AGE: Duration = Duration::from_secs(60 * 60);
/// Prefix of every error of the token exchange.
const CONTEXT: &str = "could not get github app installation token";

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

#[derive(Clone, Debug, PartialEq, Eq)]
enum Installation {
    Id(String),
    Owner(String),
}

/// A validated App of one forge: signs JWTs and hands out installation tokens.
pub(crate) struct AppAuth {
    app_id: String,
    installation: Installation,
    /// Ends with `/`.
    base: String,
    key: EncodingKey,
    tokens: TokenCache,
    digest: [u8; 32],
    slot: Arc<tokio::sync::Mutex<()>>,
    /// Labels the token-cache events.
    provider: Option<ProviderRef>,
    /// Hex digest of the settings: identifies the App without revealing anything.
    pub(crate) fingerprint: String,
}

impl fmt::Debug for AppAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppAuth")
            .field("app_id", &self.app_id)
            .field("installation", &self.installation)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn non_empty(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

#[derive(Serialize)]
struct Claims<'a> {
    iat: u64,
    exp: u64,
    iss: &'a str,
}

fn sign(app_id: &str, key: &EncodingKey, now: SystemTime) -> Result<String, String> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let iat = now.saturating_sub(JWT_BACKDATE_SECS);
    let claims = Claims {
        iat,
        exp: iat + JWT_LIFETIME_SECS,
        iss: app_id,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, key).map_err(|e| e.to_string())
}

#[derive(Deserialize)]
struct InstallationAnswer {
    id: u64,
}

#[derive(Deserialize)]
struct AccessToken {
    token: String,
    #[serde(default)]
    expires_at: Option<String>,
}

impl AppAuth {
    /// Validates the App settings in Flux's order (installation, then key) and parses the key.
    /// The caller has already checked that the App ID is present.
    pub(crate) fn new(
        app: &GitHubApp,
        cache: &TokenCache,
        provider: Option<&ProviderRef>,
    ) -> Result<Self, ConfigError> {
        let app_id = app.app_id.trim().to_owned();
        let installation = match (
            non_empty(app.installation_id.as_deref()),
            non_empty(app.installation_owner.as_deref()),
        ) {
            (Some(_), Some(_)) => return Err(ConfigError::GitHubAppInstallationAmbiguous),
            (None, None) => return Err(ConfigError::GitHubAppInstallationMissing),
            (Some(id), None) if id.bytes().all(|b| b.is_ascii_digit()) => Installation::Id(id),
            (Some(_), None) => return Err(ConfigError::GitHubAppInstallationId),
            (None, Some(owner)) => Installation::Owner(owner),
        };
        let pem = app.private_key.expose().trim();
        if pem.is_empty() {
            return Err(ConfigError::GitHubAppPrivateKeyMissing);
        }
        let key = EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|e| ConfigError::GitHubAppPrivateKey(e.to_string()))?;
        // The PEM parser only unwraps the envelope; signing once proves the key is a usable
        // RSA key now rather than on every delivery.
        sign(&app_id, &key, SystemTime::now()).map_err(ConfigError::GitHubAppPrivateKey)?;
        let base = match non_empty(app.base_url.as_deref()) {
            None => DEFAULT_BASE.to_owned(),
            Some(raw) => {
                let url = url::Url::parse(&raw)
                    .map_err(|e| ConfigError::GitHubAppBaseUrl(e.to_string()))?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return Err(ConfigError::GitHubAppBaseUrl(
                        "must be an absolute http(s) URL".to_owned(),
                    ));
                }
                if raw.ends_with('/') {
                    raw
                } else {
                    format!("{raw}/")
                }
            }
        };
        let mut digest = Sha256::new();
        for part in [
            app_id.as_str(),
            non_empty(app.installation_id.as_deref())
                .as_deref()
                .unwrap_or_default(),
            non_empty(app.installation_owner.as_deref())
                .as_deref()
                .unwrap_or_default(),
            base.as_str(),
            pem,
        ] {
            digest.update(part.as_bytes());
            digest.update([0]);
        }
        let digest: [u8; 32] = digest.finalize().into();
        Ok(Self {
            app_id,
            installation,
            base,
            key,
            tokens: cache.clone(),
            digest,
            slot: cache.exchange_lock(digest),
            provider: provider.cloned(),
            fingerprint: hex::encode(digest),
        })
    }

    /// An installation token: the cached one while it is fresh and not `stale` (the one the
    /// forge just refused), else a new one from GitHub.
    pub(crate) async fn token(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
        stale: Option<&Secret>,
    ) -> Result<Secret, DeliveryError> {
        self.tokens
            .get_or_fetch(
                self.digest,
                &self.slot,
                stale,
                self.provider.as_ref(),
                || async {
                    let (token, lifetime) = self.exchange(client, timeout).await?;
                    tracing::debug!(app_id = %self.app_id, valid_for = ?lifetime, "github app installation token obtained");
                    Ok((token, lifetime.saturating_sub(REFRESH_MARGIN)))
                },
            )
            .await
    }

    /// JWT → (installation lookup) → installation token and how long it may be used.
    async fn exchange(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
    ) -> Result<(Secret, Duration), DeliveryError> {
        let id = match &self.installation {
            Installation::Id(id) => id.clone(),
            Installation::Owner(owner) => {
                // An owner is an organisation or a user; GitHub has one endpoint for each.
                match self.installation_of(client, timeout, "orgs", owner).await {
                    Ok(id) => id,
                    Err(_) => {
                        self.installation_of(client, timeout, "users", owner)
                            .await?
                    }
                }
            }
        };
        let url = format!(
            "{}app/installations/{}/access_tokens",
            self.base,
            path_segment(&id)
        );
        let (request, jwt) = self.request(Method::POST, url).map_err(|e| *e)?;
        let body = self.call(client, timeout, &request, &jwt).await?;
        let answer: AccessToken = serde_json::from_slice(&body)
            .ok()
            .filter(|a: &AccessToken| !a.token.trim().is_empty())
            .ok_or_else(|| {
                self.error(
                    &request,
                    &jwt,
                    Failure::Decode {
                        message: "no token in the answer".to_owned(),
                    },
                )
            })?;
        let now = SystemTime::now();
        let lifetime = answer
            .expires_at
            .as_deref()
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
            .map(|at| {
                let at =
                    UNIX_EPOCH + Duration::from_secs(u64::try_from(at.timestamp()).unwrap_or(0));
                at.duration_since(now).unwrap_or_default()
            })
            .unwrap_or(MAX_TOKEN_AGE)
            .min(MAX_TOKEN_AGE);
        Ok((Secret::new(answer.token.trim()), lifetime))
    }

    async fn installation_of(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
        kind: &str,
        owner: &str,
    ) -> Result<String, DeliveryError> {
        let url = format!("{}{kind}/{}/installation", self.base, path_segment(owner));
        let (request, jwt) = self.request(Method::GET, url).map_err(|e| *e)?;
        let body = self.call(client, timeout, &request, &jwt).await?;
        serde_json::from_slice::<InstallationAnswer>(&body)
            .map(|a| a.id.to_string())
            .map_err(|e| {
                self.error(
                    &request,
                    &jwt,
                    Failure::Decode {
                        message: e.to_string(),
                    },
                )
            })
    }

    /// A request to the App API, authenticated with a fresh JWT. (Boxed: the error is rare and
    /// large.)
    fn request(
        &self,
        method: Method,
        url: String,
    ) -> Result<(ForgeRequest, Secret), Box<DeliveryError>> {
        let bare = ForgeRequest::new(method, url);
        let jwt = sign(&self.app_id, &self.key, SystemTime::now()).map_err(|message| {
            Box::new(self.error(
                &bare,
                &Secret::default(),
                Failure::Transport {
                    message: format!("could not sign the JWT: {message}"),
                    retry: Retry::No,
                },
            ))
        })?;
        let request = bare
            .header("Authorization", format!("Bearer {jwt}"))
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .header("User-Agent", USER_AGENT);
        Ok((request, Secret::new(jwt)))
    }

    /// Sends one App API request; a 2xx answer's body, else the error.
    async fn call(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
        request: &ForgeRequest,
        jwt: &Secret,
    ) -> Result<Vec<u8>, DeliveryError> {
        tracing::trace!(method = %request.method, url = %request.url, "github app api call");
        let answer = transport::send(client, request, timeout)
            .await
            .map_err(|e| {
                let failure = match e {
                    SendError::Timeout => Failure::Timeout { after: timeout },
                    SendError::Transport { message, retry } => {
                        Failure::Transport { message, retry }
                    }
                };
                self.error(request, jwt, failure)
            })?;
        if (200..300).contains(&answer.status) {
            return Ok(answer.body);
        }
        let failure = Failure::Status {
            status: answer.status,
            message: forge_message(answer.status, &answer.body),
            class: classify(
                ForgeKind::GitHub,
                answer.status,
                &answer.headers,
                &answer.body,
                SystemTime::now(),
            ),
        };
        Err(self.error(request, jwt, failure))
    }

    fn error(&self, request: &ForgeRequest, jwt: &Secret, failure: Failure) -> DeliveryError {
        DeliveryError::new(
            ForgeKind::GitHub,
            Some(CONTEXT),
            request.method.clone(),
            request.url.clone(),
            failure,
        )
        .scrub(&[jwt.expose().to_owned()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_pem() -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        key.serialize_pem()
    }

    fn app(pem: &str) -> GitHubApp {
        GitHubApp {
            app_id: "123".into(),
            installation_id: Some("456".into()),
            private_key: Secret::new(pem),
            ..GitHubApp::default()
        }
    }

    #[test]
    fn validation_in_flux_order() {
        let cache = TokenCache::default();
        let pem = key_pem();
        let err = |a: GitHubApp| AppAuth::new(&a, &cache, None).unwrap_err().to_string();
        assert_eq!(
            err(GitHubApp {
                installation_id: None,
                ..app(&pem)
            }),
            "app installation owner or ID must be provided to use github app authentication"
        );
        assert_eq!(
            err(GitHubApp {
                installation_owner: Some("acme".into()),
                ..app(&pem)
            }),
            "only one of app installation owner or ID must be provided to use github app authentication"
        );
        assert_eq!(
            err(GitHubApp {
                private_key: Secret::new(" \n"),
                ..app(&pem)
            }),
            "private key must be provided to use github app authentication"
        );
        let bad = err(app(
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        ));
        assert!(bad.starts_with("could not parse private key: "), "{bad}");
        assert!(err(app("not a pem")).starts_with("could not parse private key: "));
        assert_eq!(
            err(GitHubApp {
                installation_id: Some("12ab".into()),
                ..app(&pem)
            }),
            "app installation ID must be a number to use github app authentication"
        );
        assert!(
            err(GitHubApp {
                base_url: Some("ghe.example.com/api/v3".into()),
                ..app(&pem)
            })
            .starts_with("invalid github app base URL")
        );
        let ok = AppAuth::new(
            &GitHubApp {
                base_url: Some("https://ghe.example.com/api/v3".into()),
                ..app(&pem)
            },
            &cache,
            None,
        )
        .unwrap();
        assert_eq!(ok.base, "https://ghe.example.com/api/v3/");
        assert_eq!(
            AppAuth::new(&app(&pem), &cache, None).unwrap().base,
            DEFAULT_BASE
        );
        let text = format!("{ok:?}");
        assert!(!text.contains("PRIVATE"), "{text}");
    }

    #[test]
    fn same_app_shares_a_slot() {
        let cache = TokenCache::default();
        let pem = key_pem();
        let a = AppAuth::new(&app(&pem), &cache, None).unwrap();
        let b = AppAuth::new(&app(&pem), &cache, None).unwrap();
        assert!(Arc::ptr_eq(&a.slot, &b.slot));
        assert_eq!(a.fingerprint, b.fingerprint);
        let other = AppAuth::new(
            &GitHubApp {
                installation_id: Some("789".into()),
                ..app(&pem)
            },
            &cache,
            None,
        )
        .unwrap();
        assert!(!Arc::ptr_eq(&a.slot, &other.slot));
        assert_eq!(cache.identities(), 2);
        drop((a, b, other));
        // Unused slots go when the next App is registered.
        let _c = AppAuth::new(&app(&pem), &cache, None).unwrap();
        assert_eq!(cache.identities(), 1);
    }

    #[test]
    fn jwt_claims() {
        let pem = key_pem();
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let jwt = sign("123", &key, now).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        use base64::Engine as _;
        let decode = |s: &str| -> serde_json::Value {
            serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(s)
                    .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(decode(parts[0])["alg"], "RS256");
        let claims = decode(parts[1]);
        assert_eq!(claims["iss"], "123");
        assert_eq!(claims["iat"], 1_700_000_000 - 30);
        assert_eq!(claims["exp"], 1_700_000_000 - 30 + 120);
    }
}
