//! GitHub App authentication, sans I/O like the forges: the App settings checked once, the
//! RS256 JWT, and the installation-token exchange as requests to send (the installation
//! lookup, then the token) and answers to read. The exchanged tokens are cached per App and
//! shared by every forge that uses the same App; the transport sends the requests
//! (see `exchanged`).
//!
//! Flux exchanges the token while building the notifier; we have no I/O at construction, so
//! the settings and the private key are checked in [`AppAuth::new`] and the exchange happens
//! on the first delivery that needs a token.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::encode::path_segment;
use super::exchanged::{Refused, Step, TokenExchange};
use crate::credentials::GitHubApp;
use crate::error::{Failure, classify, forge_message};
use crate::request::Response;
use crate::token_cache::{ProviderRef, TokenCache, TokenSlot};
use crate::transport::USER_AGENT;
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
    /// Where the App's tokens are cached.
    pub(crate) slot: TokenSlot,
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
            slot: TokenSlot::new(cache, digest, provider),
            fingerprint: hex::encode(digest),
        })
    }

    /// A new installation-token exchange.
    pub(crate) fn exchange(&self) -> AppExchange<'_> {
        AppExchange {
            auth: self,
            stage: Stage::Token,
            sent: None,
        }
    }

    /// A request to the App API, authenticated with a JWT signed `now`, and that JWT.
    fn request(
        &self,
        method: Method,
        url: String,
        now: SystemTime,
    ) -> Result<(ForgeRequest, Secret), Refused> {
        let bare = ForgeRequest::new(method, url);
        let jwt = sign(&self.app_id, &self.key, now).map_err(|message| {
            self.error(
                &bare,
                &Secret::default(),
                Failure::Transport {
                    message: format!("could not sign the JWT: {message}"),
                    retry: Retry::No,
                },
            )
        })?;
        let request = bare
            .header("Authorization", format!("Bearer {jwt}"))
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .header("User-Agent", USER_AGENT);
        Ok((request, Secret::new(jwt)))
    }

    /// `GET {base}{orgs|users}/{owner}/installation`.
    fn installation_request(
        &self,
        kind: &str,
        owner: &str,
        now: SystemTime,
    ) -> Result<(ForgeRequest, Secret), Refused> {
        let url = format!("{}{kind}/{}/installation", self.base, path_segment(owner));
        self.request(Method::GET, url, now)
    }

    /// `POST {base}app/installations/{id}/access_tokens`.
    fn token_request(&self, id: &str, now: SystemTime) -> Result<(ForgeRequest, Secret), Refused> {
        let url = format!(
            "{}app/installations/{}/access_tokens",
            self.base,
            path_segment(id)
        );
        self.request(Method::POST, url, now)
    }

    /// A 2xx answer's body, else the error.
    fn body(
        &self,
        (request, jwt): &(ForgeRequest, Secret),
        answer: Result<Response, Failure>,
        now: SystemTime,
    ) -> Result<Vec<u8>, Refused> {
        let answer = answer.map_err(|failure| self.error(request, jwt, failure))?;
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
                now,
            ),
        };
        Err(self.error(request, jwt, failure))
    }

    /// The installation ID in an answer to [`AppAuth::installation_request`].
    fn installation_id(
        &self,
        sent: &(ForgeRequest, Secret),
        answer: Result<Response, Failure>,
        now: SystemTime,
    ) -> Result<String, Refused> {
        let body = self.body(sent, answer, now)?;
        serde_json::from_slice::<InstallationAnswer>(&body)
            .map(|a| a.id.to_string())
            .map_err(|e| {
                self.error(
                    &sent.0,
                    &sent.1,
                    Failure::Decode {
                        message: e.to_string(),
                    },
                )
            })
    }

    /// The token in an answer to [`AppAuth::token_request`], and how long it may be used.
    fn access_token(
        &self,
        sent: &(ForgeRequest, Secret),
        answer: Result<Response, Failure>,
        now: SystemTime,
    ) -> Result<(Secret, Duration), Refused> {
        let body = self.body(sent, answer, now)?;
        let answer: AccessToken = serde_json::from_slice(&body)
            .ok()
            .filter(|a: &AccessToken| !a.token.trim().is_empty())
            .ok_or_else(|| {
                self.error(
                    &sent.0,
                    &sent.1,
                    Failure::Decode {
                        message: "no token in the answer".to_owned(),
                    },
                )
            })?;
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

    fn error(&self, request: &ForgeRequest, jwt: &Secret, failure: Failure) -> Refused {
        Box::new(
            DeliveryError::new(
                ForgeKind::GitHub,
                Some(CONTEXT),
                request.method.clone(),
                request.url.clone(),
                failure,
            )
            .scrub(&[jwt.expose().to_owned()]),
        )
    }
}

/// Where an exchange is: JWT → (installation lookup: the org, else the user) → token.
enum Stage {
    Org(String),
    User,
    Token,
}

/// One installation-token exchange of an [`AppAuth`].
pub(crate) struct AppExchange<'a> {
    auth: &'a AppAuth,
    /// What the request in flight asks for.
    stage: Stage,
    /// The request in flight and the JWT it carries (scrubbed from its errors).
    sent: Option<(ForgeRequest, Secret)>,
}

impl AppExchange<'_> {
    fn send(&mut self, stage: Stage, sent: (ForgeRequest, Secret)) -> ForgeRequest {
        self.stage = stage;
        let request = sent.0.clone();
        self.sent = Some(sent);
        request
    }

    fn token_request(&mut self, id: &str, now: SystemTime) -> Result<Step, Refused> {
        let sent = self.auth.token_request(id, now)?;
        Ok(Step::Send(self.send(Stage::Token, sent)))
    }
}

impl TokenExchange for AppExchange<'_> {
    fn start(&mut self, now: SystemTime) -> Result<ForgeRequest, Refused> {
        let auth = self.auth;
        match &auth.installation {
            Installation::Id(id) => {
                let sent = auth.token_request(id, now)?;
                Ok(self.send(Stage::Token, sent))
            }
            // An owner is an organisation or a user; GitHub has one endpoint for each, and
            // any failure of the first (even to sign its JWT) means trying the second.
            Installation::Owner(owner) => match auth.installation_request("orgs", owner, now) {
                Ok(sent) => Ok(self.send(Stage::Org(owner.clone()), sent)),
                Err(_) => {
                    let sent = auth.installation_request("users", owner, now)?;
                    Ok(self.send(Stage::User, sent))
                }
            },
        }
    }

    fn answer(
        &mut self,
        answer: Result<Response, Failure>,
        now: SystemTime,
    ) -> Result<Step, Refused> {
        let auth = self.auth;
        let Some(sent) = self.sent.take() else {
            // Answers only come to requests this exchange handed out.
            return Err(auth.error(
                &ForgeRequest::new(Method::POST, String::new()),
                &Secret::default(),
                Failure::Transport {
                    message: "no request was sent".to_owned(),
                    retry: Retry::No,
                },
            ));
        };
        match std::mem::replace(&mut self.stage, Stage::Token) {
            Stage::Org(owner) => match auth.installation_id(&sent, answer, now) {
                Ok(id) => self.token_request(&id, now),
                Err(_) => {
                    let users = auth.installation_request("users", &owner, now)?;
                    Ok(Step::Send(self.send(Stage::User, users)))
                }
            },
            Stage::User => {
                let id = auth.installation_id(&sent, answer, now)?;
                self.token_request(&id, now)
            }
            Stage::Token => {
                let (token, lifetime) = auth.access_token(&sent, answer, now)?;
                tracing::debug!(app_id = %auth.app_id, valid_for = ?lifetime, "github app installation token obtained");
                Ok(Step::Done(token, lifetime.saturating_sub(REFRESH_MARGIN)))
            }
        }
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
        assert!(a.slot.shares_exchange_with(&b.slot));
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
        assert!(!a.slot.shares_exchange_with(&other.slot));
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

    fn answer(status: u16, body: &str) -> Result<Response, Failure> {
        Ok(Response {
            status,
            headers: http::HeaderMap::new(),
            body: body.as_bytes().to_vec(),
        })
    }

    fn sent(step: Step) -> ForgeRequest {
        match step {
            Step::Send(request) => request,
            Step::Done(..) => panic!("the exchange ended early"),
        }
    }

    #[test]
    fn owner_exchange_falls_back_to_the_user_then_takes_the_token() {
        let cache = TokenCache::default();
        let pem = key_pem();
        let auth = AppAuth::new(
            &GitHubApp {
                installation_id: None,
                installation_owner: Some("octo cat".into()),
                base_url: Some("https://ghe.example.com/api/v3".into()),
                ..app(&pem)
            },
            &cache,
            None,
        )
        .unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut exchange = auth.exchange();
        let org = exchange.start(now).unwrap();
        assert_eq!(org.method, Method::GET);
        assert_eq!(
            org.url,
            "https://ghe.example.com/api/v3/orgs/octo%20cat/installation"
        );
        let jwt = org.header_value("authorization").unwrap().to_owned();
        assert!(jwt.starts_with("Bearer ey"), "{jwt}");
        assert_eq!(
            org.header_value("accept"),
            Some("application/vnd.github+json")
        );
        assert_eq!(org.header_value("x-github-api-version"), Some("2022-11-28"));
        assert_eq!(org.header_value("user-agent"), Some(USER_AGENT));
        // Not an organisation: the user's installation is looked up instead.
        let user = sent(
            exchange
                .answer(answer(404, r#"{"message":"Not Found"}"#), now)
                .unwrap(),
        );
        assert_eq!(
            user.url,
            "https://ghe.example.com/api/v3/users/octo%20cat/installation"
        );
        let token = sent(exchange.answer(answer(200, r#"{"id":77}"#), now).unwrap());
        assert_eq!(token.method, Method::POST);
        assert_eq!(
            token.url,
            "https://ghe.example.com/api/v3/app/installations/77/access_tokens"
        );
        let done = exchange
            .answer(
                answer(
                    201,
                    r#"{"token":" ghs_abc\n","expires_at":"2023-11-14T23:13:20Z"}"#,
                ),
                now,
            )
            .unwrap();
        let Step::Done(token, usable) = done else {
            panic!("no token");
        };
        assert_eq!(token.expose(), "ghs_abc");
        // 1,700,000,000 is 22:13:20: one hour of life, less the refresh margin.
        assert_eq!(usable, Duration::from_secs(3600) - REFRESH_MARGIN);
    }

    #[test]
    fn exchange_errors_name_the_call_and_hide_the_jwt() {
        let cache = TokenCache::default();
        let pem = key_pem();
        let auth = AppAuth::new(&app(&pem), &cache, None).unwrap();
        let now = SystemTime::now();
        let mut exchange = auth.exchange();
        let request = exchange.start(now).unwrap();
        assert_eq!(
            request.url,
            "https://api.github.com/app/installations/456/access_tokens"
        );
        let jwt = request
            .header_value("authorization")
            .unwrap()
            .trim_start_matches("Bearer ")
            .to_owned();
        let echoed = format!(r#"{{"message":"bad JWT {jwt}"}}"#);
        let err = exchange.answer(answer(401, &echoed), now).unwrap_err();
        assert_eq!((err.status(), err.retry()), (Some(401), Retry::No));
        let text = err.to_string();
        assert!(
            text.starts_with(
                "could not get github app installation token: POST https://api.github.com/app/installations/456/access_tokens: 401 bad JWT "
            ),
            "{text}"
        );
        assert!(!text.contains(&jwt), "{text}");
        // No answer at all keeps the transport's verdict.
        let mut exchange = auth.exchange();
        exchange.start(now).unwrap();
        let err = exchange
            .answer(
                Err(Failure::Timeout {
                    after: Duration::from_secs(2),
                }),
                now,
            )
            .unwrap_err();
        assert!(err.is_timeout());
        assert_eq!(err.retry(), Retry::Backoff);
        // A 2xx answer without a token is a decode failure.
        let mut exchange = auth.exchange();
        exchange.start(now).unwrap();
        let err = exchange
            .answer(answer(201, r#"{"token":"  "}"#), now)
            .unwrap_err();
        assert!(err.to_string().contains("no token in the answer"), "{err}");
        // A token without an expiry is believed for an hour at most.
        let mut exchange = auth.exchange();
        exchange.start(now).unwrap();
        let Step::Done(_, usable) = exchange
            .answer(answer(201, r#"{"token":"ghs_x"}"#), now)
            .unwrap()
        else {
            panic!("no token");
        };
        assert_eq!(usable, MAX_TOKEN_AGE - REFRESH_MARGIN);
    }
}
