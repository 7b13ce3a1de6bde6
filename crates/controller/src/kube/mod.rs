//! Kubernetes mode: the same event path, fed by watch caches of Flux's `Provider` and `Alert`
//! objects and of the Secrets they reference, with Kubernetes Events on Alerts, label lookups
//! for `matchLabels`, and the finalizer housekeeping Flux's controller does; and, beyond Flux,
//! commit statuses healed from the selected objects' state.
//!
//! May use: [`crate::events`] (healed statuses take the event path's intake), [`crate::route`],
//! [`crate::delivery`], [`crate::config`], [`crate::metrics`].

mod finalizers;
pub mod heal;
mod labels;
mod notices;
mod sources;
pub mod state;
mod throttle;
pub mod workload_identity;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::ValueEnum;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use notify::ClientCache;

use crate::config::catalog::SharedCatalog;
use crate::config::hooks::{LabelSource, Notices};

/// The finalizer Flux puts on Providers (and used to put on Alerts).
pub const FINALIZER: &str = "finalizers.fluxcd.io";
/// The name under which Kubernetes Events are reported.
pub const CONTROLLER_NAME: &str = "commit-status-controller";

/// Prints the CRDs of `group` (Flux's, ours, or both) as a YAML stream.
pub fn crd_yaml(group: crate::kube::ApiGroup) -> Result<String, serde_saphyr::SerializeError> {
    let mut crds = Vec::new();
    if group.flux() {
        crds.extend([api::crd::alert_crd(), api::crd::provider_crd()]);
    }
    if group.own() {
        crds.extend([api::crd::own_alert_crd(), api::crd::own_provider_crd()]);
    }
    let mut out = String::new();
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}

/// Leader election, with Flux's flag names and defaults.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    pub release_on_cancel: bool,
}

#[derive(Clone, Debug)]
pub struct Settings {
    /// `None`: all namespaces; otherwise only this one.
    pub namespace: Option<String>,
    /// Where the leader-election Lease lives.
    pub runtime_namespace: String,
    pub leader_election: Option<LeaderElection>,
    /// `--kube-api-qps` / `--kube-api-burst`: the client's token bucket.
    pub kube_api_qps: f32,
    pub kube_api_burst: u32,
    /// Azure DevOps workload identity (issue 11).
    pub workload_identity: workload_identity::WorkloadIdentitySettings,
    /// `--api-group` (issue 13): whose Providers and Alerts are watched.
    pub groups: crate::kube::ApiGroup,
}

/// What the event path gets from the cluster.
pub struct Cluster {
    pub notices: Arc<dyn Notices>,
    pub labels: Arc<dyn LabelSource>,
    pub client: kube::Client,
    /// Whether this replica does the leader-only work now.
    pub leading: tokio::sync::watch::Receiver<bool>,
}

/// Connects, fills the caches, builds the first catalog, and starts the background work.
/// Returns once the configuration is loaded, so readiness can follow.
pub async fn start(
    settings: Settings,
    metrics: Arc<crate::metrics::Metrics>,
    catalog: SharedCatalog,
    clients: ClientCache,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<Cluster> {
    const NO_CLUSTER: &str = "cannot connect to Kubernetes (in-cluster configuration or KUBECONFIG); to run without a cluster, pass --manifests PATH";
    let config = kube::Config::infer().await.context(NO_CLUSTER)?;
    let own_config = config.clone();
    let client = kube::client::ClientBuilder::try_from(config)
        .context(NO_CLUSTER)?
        .with_layer(&throttle::Throttle::new(
            settings.kube_api_qps,
            settings.kube_api_burst,
        ))
        .build();
    // Before the first catalog: Azure DevOps Providers without a token need it.
    clients.set_workload_identity(Arc::new(workload_identity::KubeWorkloadIdentity::new(
        client.clone(),
        &own_config,
        settings.workload_identity.clone(),
    )));
    let group = if settings.groups.flux() {
        api::NOTIFICATION_GROUP
    } else {
        api::OWN_GROUP
    };
    let notices = notices::KubeNotices::start(
        client.clone(),
        format!("{group}/v1beta3"),
        shutdown.clone(),
        tasks,
    );
    sources::start(
        client.clone(),
        &settings,
        metrics,
        catalog,
        clients,
        notices.clone(),
        shutdown.clone(),
        tasks,
    )
    .await?;
    let leading = finalizers::start(
        client.clone(),
        &settings,
        notices.clone(),
        shutdown.clone(),
        tasks,
    );
    Ok(Cluster {
        notices,
        labels: Arc::new(labels::KubeLabels::new(client.clone())),
        client,
        leading,
    })
}

/// Which API group(s) of `Provider` and `Alert` are watched (and whose CRDs are printed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ApiGroup {
    /// notification.toolkit.fluxcd.io: the drop-in for Flux's notification-controller.
    Flux,
    /// notification.commit-status-controller.dev: beside Flux's notification-controller.
    Own,
    Both,
}

impl ApiGroup {
    pub fn flux(self) -> bool {
        matches!(self, ApiGroup::Flux | ApiGroup::Both)
    }

    pub fn own(self) -> bool {
        matches!(self, ApiGroup::Own | ApiGroup::Both)
    }
}
