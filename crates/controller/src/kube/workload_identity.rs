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
) -> Result<FederatedIdentity, String> {
    let key = format!("{namespace}/{name}");
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let sa = api.get(name).await.map_err(|e| {
        if default && is_not_found(&e) {
            format!("failed to get service account '{key}': {DEFAULT_SA_NOT_FOUND}")
        } else {
            format!("failed to get service account '{key}': {}", api_message(&e))
        }
    })?;
    let annotations = sa.metadata.annotations.unwrap_or_default();
    let annotation = |k: &str, what: &str| {
        annotations
            .get(k)
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| {
                format!(
                    "failed to get provider identity from service account '{key}' annotations: azure {what} is not set in the service account annotation {k}"
                )
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
        .map_err(|e| {
            format!(
                "failed to create kubernetes token for service account '{key}': {}",
                api_message(&e)
            )
        })?;
    let token = answer
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            format!("failed to create kubernetes token for service account '{key}': empty token")
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
        Box::pin(service_account_identity(
            &self.client,
            &self.namespace,
            &self.name,
            self.default,
        ))
    }
}

/// The controller's own identity: azidentity's workload-identity environment when the Azure
/// webhook injected it, else the ServiceAccount the controller runs as.
struct ControllerIdentity {
    client: kube::Client,
    own: Option<(String, String)>,
}

impl ControllerIdentity {
    async fn resolve(&self) -> Result<FederatedIdentity, String> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let (Some(file), Some(client_id), Some(tenant_id)) = (
            env(FEDERATED_TOKEN_FILE_ENV),
            env(CLIENT_ID_ENV),
            env(TENANT_ID_ENV),
        ) {
            let token = tokio::fs::read_to_string(&file)
                .await
                .map_err(|e| format!("reading {FEDERATED_TOKEN_FILE_ENV} {file}: {e}"))?;
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
            .map_err(|e| {
                format!(
                    "cannot tell which ServiceAccount the controller runs as: {}",
                    api_message(&e)
                )
            })?;
        let user = me
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .unwrap_or_default();
        let Some((namespace, name)) = user
            .strip_prefix(SA_USER_PREFIX)
            .and_then(|rest| rest.split_once(':'))
        else {
            return Err(format!(
                "the controller runs as {user:?}, not as a ServiceAccount: set {CLIENT_ID_ENV}, {TENANT_ID_ENV} and {FEDERATED_TOKEN_FILE_ENV}, or give the Provider a token"
            ));
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
            self.resolve().await.map_err(|e| {
                format!("failed to create provider access token for the controller: {e}")
            })
        })
    }
}
