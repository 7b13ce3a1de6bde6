//! Azure DevOps workload identity in Kubernetes mode (issue 11): which ServiceAccount a
//! Provider without a token uses — its `spec.serviceAccountName` (object level, behind the
//! `ObjectLevelWorkloadIdentity` gate), `--default-service-account`, or the controller's own —
//! and the Kubernetes side of the exchange: the ServiceAccount's Azure annotations and a
//! TokenRequest for the `api://AzureADTokenExchange` audience. Errors are worded as Flux's
//! `fluxcd/pkg/auth`.

use std::sync::Arc;

use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};

use notify::Secret;
use notify::forge::azure_identity::{
    AUDIENCE, CLIENT_ID_ANNOTATION, FederatedIdentity, IdentityFuture, IdentitySource,
    TENANT_ID_ANNOTATION, WorkloadIdentity,
};

/// The feature gate that lets a Provider name its own service account (Flux's name).
pub const OBJECT_LEVEL_WORKLOAD_IDENTITY: &str = "ObjectLevelWorkloadIdentity";

/// Flux's `auth.ErrDefaultServiceAccountNotFound`.
const DEFAULT_SA_NOT_FOUND: &str = "the specified default service account does not exist in the object namespace. your cluster is subject to multi-tenant workload identity lockdown, reach out to your cluster administrator for help";
/// azidentity's workload-identity environment (set by the Azure Workload Identity webhook).
const FEDERATED_TOKEN_FILE_ENV: &str = "AZURE_FEDERATED_TOKEN_FILE";
const CLIENT_ID_ENV: &str = "AZURE_CLIENT_ID";
const TENANT_ID_ENV: &str = "AZURE_TENANT_ID";
/// Lifetime asked for the ServiceAccount token; it is only used for one exchange.
const ASSERTION_SECONDS: i64 = 600;
/// A `kubernetes.io/serviceaccount` username: `system:serviceaccount:<ns>:<name>`.
const SA_USER_PREFIX: &str = "system:serviceaccount:";

/// `--feature-gates=ObjectLevelWorkloadIdentity` and `--default-service-account`.
#[derive(Clone, Debug, Default)]
pub struct WorkloadIdentitySettings {
    pub object_level: bool,
    pub default_service_account: Option<String>,
}

pub struct KubeWorkloadIdentity {
    client: kube::Client,
    settings: WorkloadIdentitySettings,
    /// The ServiceAccount (namespace, name) the controller's own credential belongs to.
    own: Option<(String, String)>,
}

impl KubeWorkloadIdentity {
    pub fn new(
        client: kube::Client,
        config: &kube::Config,
        settings: WorkloadIdentitySettings,
    ) -> Self {
        Self {
            client,
            settings,
            own: own_service_account(config),
        }
    }
}

/// The ServiceAccount of the controller's bearer token (the `sub` of the JWT the API server
/// issued), from the kubeconfig or the in-cluster token file. Clusters too old for
/// SelfSubjectReview need this; the token is only read, never verified or logged.
fn own_service_account(config: &kube::Config) -> Option<(String, String)> {
    use base64::Engine as _;
    use secrecy::ExposeSecret as _;
    let auth = &config.auth_info;
    let token = match (&auth.token, &auth.token_file) {
        (Some(t), _) => t.expose_secret().to_owned(),
        (None, Some(file)) => std::fs::read_to_string(file).ok()?,
        (None, None) => return None,
    };
    let payload = token.trim().split('.').nth(1)?;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?,
    )
    .ok()?;
    let (ns, name) = claims["sub"]
        .as_str()?
        .strip_prefix(SA_USER_PREFIX)?
        .split_once(':')?;
    Some((ns.to_owned(), name.to_owned()))
}

impl WorkloadIdentity for KubeWorkloadIdentity {
    fn source(
        &self,
        namespace: &str,
        service_account: Option<&str>,
    ) -> Result<Arc<dyn IdentitySource>, String> {
        let named = service_account.map(str::trim).filter(|s| !s.is_empty());
        let (name, default) = match (named, &self.settings.default_service_account) {
            (Some(name), _) => (name.to_owned(), false),
            (None, Some(d)) => (d.clone(), true),
            (None, None) => {
                return Ok(Arc::new(ControllerIdentity {
                    client: self.client.clone(),
                    own: self.own.clone(),
                }));
            }
        };
        if !self.settings.object_level {
            return Err(format!(
                "failed to get token: {} feature gate is not enabled",
                OBJECT_LEVEL_WORKLOAD_IDENTITY
            ));
        }
        Ok(Arc::new(ServiceAccountIdentity {
            client: self.client.clone(),
            namespace: namespace.to_owned(),
            name,
            default,
        }))
    }
}

/// Why a ServiceAccount's (or the controller's) identity cannot be had, in Flux's words. It
/// crosses into the forge layer as text (the whole message after `failed to get token: `).
#[derive(Debug, thiserror::Error)]
enum IdentityError {
    /// `reason`: the API server's message, or Flux's for a missing default ServiceAccount.
    #[error("failed to get service account '{key}': {reason}")]
    ServiceAccount { key: String, reason: String },
    #[error(
        "failed to get provider identity from service account '{key}' annotations: azure {what} is not set in the service account annotation {annotation}"
    )]
    Annotation {
        key: String,
        what: &'static str,
        annotation: &'static str,
    },
    #[error("failed to create kubernetes token for service account '{key}': {reason}")]
    Token { key: String, reason: String },
    #[error("reading {FEDERATED_TOKEN_FILE_ENV} {file}: {source}")]
    TokenFile {
        file: String,
        source: std::io::Error,
    },
    #[error("cannot tell which ServiceAccount the controller runs as: {0}")]
    WhoAmI(String),
    #[error(
        "the controller runs as {0:?}, not as a ServiceAccount: set {CLIENT_ID_ENV}, {TENANT_ID_ENV} and {FEDERATED_TOKEN_FILE_ENV}, or give the Provider a token"
    )]
    NotServiceAccount(String),
    #[error("failed to create provider access token for the controller: {0}")]
    Controller(Box<IdentityError>),
}

/// The message of a Kubernetes API error as Go's client prints it.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

/// Tenant, client and a fresh token of one ServiceAccount, or Flux's error after
/// `failed to get token: `.
async fn service_account_identity(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    default: bool,
) -> Result<FederatedIdentity, IdentityError> {
    let key = format!("{namespace}/{name}");
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let sa = api
        .get(name)
        .await
        .map_err(|e| IdentityError::ServiceAccount {
            key: key.clone(),
            reason: if default && is_not_found(&e) {
                DEFAULT_SA_NOT_FOUND.to_owned()
            } else {
                api_message(&e)
            },
        })?;
    let annotations = sa.metadata.annotations.unwrap_or_default();
    let annotation = |annotation: &'static str, what: &'static str| {
        annotations
            .get(annotation)
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| IdentityError::Annotation {
                key: key.clone(),
                what,
                annotation,
            })
    };
    let tenant_id = annotation(TENANT_ID_ANNOTATION, "tenant ID")?;
    let client_id = annotation(CLIENT_ID_ANNOTATION, "client ID")?;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![AUDIENCE.to_owned()],
            expiration_seconds: Some(ASSERTION_SECONDS),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = api
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .map_err(|e| IdentityError::Token {
            key: key.clone(),
            reason: api_message(&e),
        })?;
    let token = answer
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| IdentityError::Token {
            key: key.clone(),
            reason: "empty token".to_owned(),
        })?;
    Ok(FederatedIdentity {
        tenant_id,
        client_id,
        assertion: Secret::new(token),
    })
}

/// `spec.serviceAccountName`, or `--default-service-account`, in the Provider's namespace.
struct ServiceAccountIdentity {
    client: kube::Client,
    namespace: String,
    name: String,
    default: bool,
}

impl IdentitySource for ServiceAccountIdentity {
    fn key(&self) -> String {
        format!("serviceaccount {}/{}", self.namespace, self.name)
    }

    fn subject(&self) -> String {
        format!("service account '{}/{}'", self.namespace, self.name)
    }

    fn identity(&self) -> IdentityFuture<'_> {
        Box::pin(async move {
            service_account_identity(&self.client, &self.namespace, &self.name, self.default)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The controller's own identity: azidentity's workload-identity environment when the Azure
/// webhook injected it, else the ServiceAccount the controller runs as.
struct ControllerIdentity {
    client: kube::Client,
    own: Option<(String, String)>,
}

impl ControllerIdentity {
    async fn resolve(&self) -> Result<FederatedIdentity, IdentityError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let (Some(file), Some(client_id), Some(tenant_id)) = (
            env(FEDERATED_TOKEN_FILE_ENV),
            env(CLIENT_ID_ENV),
            env(TENANT_ID_ENV),
        ) {
            let token = tokio::fs::read_to_string(&file).await.map_err(|source| {
                IdentityError::TokenFile {
                    file: file.clone(),
                    source,
                }
            })?;
            return Ok(FederatedIdentity {
                tenant_id,
                client_id,
                assertion: Secret::new(token.trim()),
            });
        }
        if let Some((namespace, name)) = &self.own {
            return service_account_identity(&self.client, namespace, name, false).await;
        }
        let review: Api<SelfSubjectReview> = Api::all(self.client.clone());
        let me = review
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
            .map_err(|e| IdentityError::WhoAmI(api_message(&e)))?;
        let user = me
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .unwrap_or_default();
        let Some((namespace, name)) = user
            .strip_prefix(SA_USER_PREFIX)
            .and_then(|rest| rest.split_once(':'))
        else {
            return Err(IdentityError::NotServiceAccount(user.clone()));
        };
        service_account_identity(&self.client, namespace, name, false).await
    }
}

impl IdentitySource for ControllerIdentity {
    fn key(&self) -> String {
        "controller".to_owned()
    }

    fn subject(&self) -> String {
        "the controller".to_owned()
    }

    fn identity(&self) -> IdentityFuture<'_> {
        Box::pin(async move {
            self.resolve()
                .await
                .map_err(|e| IdentityError::Controller(Box::new(e)).to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_errors_keep_fluxs_words() {
        let key = || "apps/sa".to_owned();
        let cases = [
            (
                IdentityError::ServiceAccount {
                    key: key(),
                    reason: DEFAULT_SA_NOT_FOUND.into(),
                },
                format!("failed to get service account 'apps/sa': {DEFAULT_SA_NOT_FOUND}"),
            ),
            (
                IdentityError::Annotation {
                    key: key(),
                    what: "tenant ID",
                    annotation: TENANT_ID_ANNOTATION,
                },
                format!(
                    "failed to get provider identity from service account 'apps/sa' annotations: azure tenant ID is not set in the service account annotation {TENANT_ID_ANNOTATION}"
                ),
            ),
            (
                IdentityError::Token {
                    key: key(),
                    reason: "empty token".into(),
                },
                "failed to create kubernetes token for service account 'apps/sa': empty token"
                    .into(),
            ),
            (
                IdentityError::Controller(Box::new(IdentityError::WhoAmI("forbidden".into()))),
                "failed to create provider access token for the controller: cannot tell which ServiceAccount the controller runs as: forbidden".into(),
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }
}
