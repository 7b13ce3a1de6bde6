//! Azure DevOps workload identity: a Kubernetes-issued ServiceAccount token (the client
//! assertion) exchanged at Microsoft Entra ID for an Azure DevOps access token, as Flux's
//! `fluxcd/pkg/auth/azure` does through azidentity. Where the assertion comes from (a
//! TokenRequest, the projected token file) is the controller's business, behind
//! [`IdentitySource`]; the exchange (sans I/O: the request to send and how to read its
//! answer), its cache key and its errors are here; the transport sends it (see `exchanged`).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Method;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::exchanged::{Refused, Step, TokenExchange};
use crate::error::{Failure, classify, forge_message};
use crate::request::Response;
use crate::token_cache::{ProviderRef, TokenCache, TokenSlot};
use crate::transport::{NetworkConfig, USER_AGENT};
use crate::{DeliveryError, ForgeKind, ForgeRequest, Retry, Secret};

/// The identity sources live with the other credentials; named here too, where the controller
/// has always found them.
pub use crate::credentials::{FederatedIdentity, IdentityFuture, IdentitySource, WorkloadIdentity};

/// Where Entra ID is reached, as azidentity reads it.
pub const AUTHORITY_HOST_ENV: &str = "AZURE_AUTHORITY_HOST";
/// Azure public cloud.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com/";
/// The audience Azure expects on the ServiceAccount token.
pub const AUDIENCE: &str = "api://AzureADTokenExchange";
/// Azure DevOps' resource ID, as Flux's `azure.ScopeDevOps`.
pub const SCOPE_DEVOPS: &str = "499b84ac-1321-427f-aa17-267ca6975798/.default";
/// Annotations of the ServiceAccount naming the Entra application (Azure Workload Identity).
pub const CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
pub const TENANT_ID_ANNOTATION: &str = "azure.workload.identity/tenant-id";
/// Prefix of every error, Flux's (`NewAzureDevOps` wrapping `newManagedIdentityToken`).
const CONTEXT: &str = "failed to acquire azure devops token: failed to get token";
const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Replaced this long before Entra says it expires (azidentity refreshes 5 minutes early).
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// The token source of one Azure DevOps forge.
pub(crate) struct AzureAuth {
    source: Arc<dyn IdentitySource>,
    /// Ends with `/`.
    authority: String,
    digest: [u8; 32],
    /// Where the identity's tokens are cached.
    pub(crate) slot: TokenSlot,
}

impl fmt::Debug for AzureAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureAuth")
            .field("subject", &self.source.subject())
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl AzureAuth {
    pub(crate) fn new(
        source: Arc<dyn IdentitySource>,
        authority: Option<String>,
        network: &NetworkConfig,
        tokens: &TokenCache,
        provider: Option<&ProviderRef>,
    ) -> Self {
        let authority = authority
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.to_owned());
        let authority = if authority.ends_with('/') {
            authority
        } else {
            format!("{authority}/")
        };
        // Flux's cache key: provider, identity, scope, proxy and CA.
        let mut digest = Sha256::new();
        for part in [
            "azure",
            &source.key(),
            &authority,
            SCOPE_DEVOPS,
            network.proxy.as_ref().map_or("", |p| p.url.as_str()),
        ] {
            digest.update(part.as_bytes());
            digest.update([0]);
        }
        if let Some(ca) = network.tls.as_ref().and_then(|t| t.ca_pem.as_ref()) {
            digest.update(ca);
        }
        let digest: [u8; 32] = digest.finalize().into();
        Self {
            source,
            authority,
            digest,
            slot: TokenSlot::new(tokens, digest, provider),
        }
    }

    /// Identifies the identity without revealing anything (rate-limit budgets).
    pub(crate) fn fingerprint(&self) -> String {
        hex::encode(self.digest)
    }

    /// The tenant, the client and a fresh assertion, from the controller's source.
    pub(crate) async fn identity(&self) -> Result<FederatedIdentity, DeliveryError> {
        self.source.identity().await.map_err(|message| {
            DeliveryError::new(
                ForgeKind::AzureDevOps,
                Some(CONTEXT),
                Method::POST,
                String::new(),
                Failure::Transport {
                    message: message.clone(),
                    retry: Retry::Backoff,
                },
            )
            .with_text(Some(format!("{CONTEXT}: {message}")))
        })
    }

    /// The exchange of `identity`'s assertion for an access token.
    pub(crate) fn exchange(&self, identity: FederatedIdentity) -> AzureExchange<'_> {
        let url = format!(
            "{}{}/oauth2/v2.0/token",
            self.authority,
            super::encode::path_segment(&identity.tenant_id)
        );
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("client_assertion", identity.assertion.expose())
            .append_pair("client_assertion_type", CLIENT_ASSERTION_TYPE)
            .append_pair("client_id", &identity.client_id)
            .append_pair("grant_type", "client_credentials")
            .append_pair("scope", SCOPE_DEVOPS)
            .finish();
        let request = ForgeRequest::new(Method::POST, url)
            .header("Accept", "application/json")
            .header("User-Agent", USER_AGENT)
            .json("application/x-www-form-urlencoded", body.into_bytes());
        AzureExchange {
            auth: self,
            assertion: identity.assertion,
            request,
        }
    }
}

/// One exchange at Entra ID: a single request, and how to read its answer.
pub(crate) struct AzureExchange<'a> {
    auth: &'a AzureAuth,
    /// Scrubbed from every error.
    assertion: Secret,
    request: ForgeRequest,
}

impl AzureExchange<'_> {
    fn fail(&self, failure: Failure) -> Refused {
        let detail = match &failure {
            Failure::Status {
                status, message, ..
            } => format!("{status} {message}"),
            Failure::Timeout { after } => format!("request timed out after {after:?}"),
            Failure::Transport { message, .. } => message.clone(),
            Failure::Decode { message } => format!("could not decode the response: {message}"),
        };
        let text = format!(
            "{CONTEXT}: failed to create provider access token for {}: POST {}: {detail}",
            self.auth.source.subject(),
            self.request.url
        );
        Box::new(
            DeliveryError::new(
                ForgeKind::AzureDevOps,
                Some(CONTEXT),
                Method::POST,
                self.request.url.clone(),
                failure,
            )
            .with_text(Some(text))
            .scrub(&[self.assertion.expose().to_owned()]),
        )
    }
}

impl TokenExchange for AzureExchange<'_> {
    fn start(&mut self, _now: SystemTime) -> Result<ForgeRequest, Refused> {
        tracing::trace!(url = %self.request.url, "azure workload identity token exchange");
        Ok(self.request.clone())
    }

    fn answer(
        &mut self,
        answer: Result<Response, Failure>,
        now: SystemTime,
    ) -> Result<Step, Refused> {
        let answer = answer.map_err(|failure| self.fail(failure))?;
        if !(200..300).contains(&answer.status) {
            let message = serde_json::from_slice::<ErrorAnswer>(&answer.body)
                .ok()
                .and_then(|e| match (e.error, e.error_description) {
                    (Some(code), Some(d)) => Some(format!("{code}: {d}")),
                    (code, d) => code.or(d),
                })
                .unwrap_or_else(|| forge_message(answer.status, &answer.body));
            let class = classify(
                ForgeKind::AzureDevOps,
                answer.status,
                &answer.headers,
                &answer.body,
                now,
            );
            return Err(self.fail(Failure::Status {
                status: answer.status,
                message,
                class,
            }));
        }
        let token: TokenAnswer = serde_json::from_slice(&answer.body)
            .ok()
            .filter(|t: &TokenAnswer| !t.access_token.trim().is_empty())
            .ok_or_else(|| {
                self.fail(Failure::Decode {
                    message: "no access_token in the answer".to_owned(),
                })
            })?;
        let lifetime = Duration::from_secs(token.expires_in.unwrap_or(3600));
        tracing::debug!(subject = %self.auth.source.subject(), valid_for = ?lifetime, "azure devops access token obtained");
        Ok(Step::Done(
            Secret::new(token.access_token.trim()),
            lifetime.saturating_sub(REFRESH_MARGIN),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    impl IdentitySource for Fixed {
        fn key(&self) -> String {
            "sa/flux".to_owned()
        }
        fn subject(&self) -> String {
            "service account 'flux-system/flux'".to_owned()
        }
        fn identity(&self) -> crate::credentials::IdentityFuture<'_> {
            Box::pin(async { Err("no cluster".to_owned()) })
        }
    }

    fn identity() -> FederatedIdentity {
        FederatedIdentity {
            tenant_id: "tenant one".into(),
            client_id: "client-1".into(),
            assertion: Secret::new("eyJ.k8s-sa-token.sig"),
        }
    }

    fn answer(status: u16, body: &str) -> Result<Response, Failure> {
        Ok(Response {
            status,
            headers: http::HeaderMap::new(),
            body: body.as_bytes().to_vec(),
        })
    }

    fn auth() -> AzureAuth {
        AzureAuth::new(
            Arc::new(Fixed),
            Some(" https://login.example.com ".into()),
            &NetworkConfig::default(),
            &TokenCache::default(),
            None,
        )
    }

    #[test]
    fn the_exchange_request_and_its_answer() {
        let auth = auth();
        let now = SystemTime::now();
        let mut exchange = auth.exchange(identity());
        let request = exchange.start(now).unwrap();
        assert_eq!(request.method, Method::POST);
        assert_eq!(
            request.url,
            "https://login.example.com/tenant%20one/oauth2/v2.0/token"
        );
        assert_eq!(request.header_value("accept"), Some("application/json"));
        assert_eq!(
            request.header_value("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        let form: Vec<(String, String)> =
            url::form_urlencoded::parse(request.body.as_deref().unwrap())
                .into_owned()
                .collect();
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(field("client_assertion"), Some("eyJ.k8s-sa-token.sig"));
        assert_eq!(field("client_assertion_type"), Some(CLIENT_ASSERTION_TYPE));
        assert_eq!(field("client_id"), Some("client-1"));
        assert_eq!(field("grant_type"), Some("client_credentials"));
        assert_eq!(field("scope"), Some(SCOPE_DEVOPS));
        let Step::Done(token, usable) = exchange
            .answer(
                answer(200, r#"{"access_token":"aad-token","expires_in":3600}"#),
                now,
            )
            .unwrap()
        else {
            panic!("one request is the whole exchange");
        };
        assert_eq!(token.expose(), "aad-token");
        assert_eq!(usable, Duration::from_secs(3600) - REFRESH_MARGIN);
    }

    #[test]
    fn refusals_are_worded_as_flux_and_never_show_the_assertion() {
        let auth = auth();
        let now = SystemTime::now();
        let mut exchange = auth.exchange(identity());
        exchange.start(now).unwrap();
        let err = exchange
            .answer(
                answer(
                    400,
                    r#"{"error":"invalid_client","error_description":"AADSTS700213 for eyJ.k8s-sa-token.sig"}"#,
                ),
                now,
            )
            .unwrap_err();
        let text = err.to_string();
        assert_eq!(
            text,
            "failed to acquire azure devops token: failed to get token: failed to create provider access token for service account 'flux-system/flux': POST https://login.example.com/tenant%20one/oauth2/v2.0/token: 400 invalid_client: AADSTS700213 for *****"
        );
        assert!(!format!("{err:?}").contains("k8s-sa-token"));
        let mut exchange = auth.exchange(identity());
        exchange.start(now).unwrap();
        let err = exchange
            .answer(answer(200, r#"{"access_token":" "}"#), now)
            .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("could not decode the response: no access_token in the answer"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_missing_identity_is_retried() {
        let Err(err) = auth().identity().await else {
            panic!("an identity without a cluster");
        };
        assert_eq!(
            err.to_string(),
            "failed to acquire azure devops token: failed to get token: no cluster"
        );
        assert_eq!(err.retry(), Retry::Backoff);
    }
}
