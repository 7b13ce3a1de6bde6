//! Azure DevOps workload identity: a Kubernetes-issued ServiceAccount token (the client
//! assertion) exchanged at Microsoft Entra ID for an Azure DevOps access token, as Flux's
//! `fluxcd/pkg/auth/azure` does through azidentity. Where the assertion comes from (a
//! TokenRequest, the projected token file) is the controller's business, behind
//! [`IdentitySource`]; the exchange, its cache and its errors are here.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::error::{Failure, classify, forge_message};
use crate::token_cache::{ProviderRef, TokenCache};
use crate::transport::{self, SendError, USER_AGENT};
use crate::{DeliveryError, ForgeKind, ForgeRequest, NetworkConfig, Retry, Secret};

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
    tokens: TokenCache,
    digest: [u8; 32],
    exchange_lock: Arc<tokio::sync::Mutex<()>>,
    provider: Option<ProviderRef>,
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
            tokens: tokens.clone(),
            digest,
            exchange_lock: tokens.exchange_lock(digest),
            provider: provider.cloned(),
        }
    }

    /// Identifies the identity without revealing anything (rate-limit budgets).
    pub(crate) fn fingerprint(&self) -> String {
        hex::encode(self.digest)
    }

    /// An access token: the cached one while fresh and not `stale`, else a new exchange.
    pub(crate) async fn token(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
        stale: Option<&Secret>,
    ) -> Result<Secret, DeliveryError> {
        self.tokens
            .get_or_fetch(
                self.digest,
                &self.exchange_lock,
                stale,
                self.provider.as_ref(),
                || self.exchange(client, timeout),
            )
            .await
    }

    async fn exchange(
        &self,
        client: &reqwest::Client,
        timeout: Duration,
    ) -> Result<(Secret, Duration), DeliveryError> {
        let identity = self.source.identity().await.map_err(|message| {
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
        })?;
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
        let subject = self.source.subject();
        let fail = |failure: Failure| {
            let detail = match &failure {
                Failure::Status {
                    status, message, ..
                } => format!("{status} {message}"),
                Failure::Timeout { after } => format!("request timed out after {after:?}"),
                Failure::Transport { message, .. } => message.clone(),
                Failure::Decode { message } => format!("could not decode the response: {message}"),
            };
            let text = format!(
                "{CONTEXT}: failed to create provider access token for {subject}: POST {}: {detail}",
                request.url
            );
            DeliveryError::new(
                ForgeKind::AzureDevOps,
                Some(CONTEXT),
                Method::POST,
                request.url.clone(),
                failure,
            )
            .with_text(Some(text))
            .scrub(&[identity.assertion.expose().to_owned()])
        };
        tracing::trace!(url = %request.url, "azure workload identity token exchange");
        let answer = transport::send(client, &request, timeout)
            .await
            .map_err(|e| {
                fail(match e {
                    SendError::Timeout => Failure::Timeout { after: timeout },
                    SendError::Transport { message, retry } => {
                        Failure::Transport { message, retry }
                    }
                })
            })?;
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
                std::time::SystemTime::now(),
            );
            return Err(fail(Failure::Status {
                status: answer.status,
                message,
                class,
            }));
        }
        let token: TokenAnswer = serde_json::from_slice(&answer.body)
            .ok()
            .filter(|t: &TokenAnswer| !t.access_token.trim().is_empty())
            .ok_or_else(|| {
                fail(Failure::Decode {
                    message: "no access_token in the answer".to_owned(),
                })
            })?;
        let lifetime = Duration::from_secs(token.expires_in.unwrap_or(3600));
        tracing::debug!(subject = %subject, valid_for = ?lifetime, "azure devops access token obtained");
        Ok((
            Secret::new(token.access_token.trim()),
            lifetime.saturating_sub(REFRESH_MARGIN),
        ))
    }
}
