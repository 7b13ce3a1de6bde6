//! Flux's housekeeping on the objects themselves (§2.6): every Provider carries the
//! `finalizers.fluxcd.io` finalizer, released when it is deleted; Alerts lose the finalizer
//! older Flux versions gave them. Runs in one replica at a time when leader election is on;
//! whether this replica leads is published for the other leader-only work (healing from state).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use api::{AlertResource, OwnAlertResource, OwnProviderResource, ProviderResource};
use kube::core::NamespaceResourceScope;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::notices::KubeNotices;
use super::{FINALIZER, LeaderElection, Settings};

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Finalizer(#[from] Box<kube::runtime::finalizer::Error<kube::Error>>),
}

struct Ctx {
    client: Client,
    notices: Arc<KubeNotices>,
    /// `--api-group`: the same housekeeping for each watched group's objects.
    groups: crate::kube::ApiGroup,
}

/// What the Alert housekeeping reads of an Alert, in either API group.
trait Suspendable {
    fn suspended(&self) -> bool;
}

impl Suspendable for AlertResource {
    fn suspended(&self) -> bool {
        self.spec.suspend
    }
}

impl Suspendable for OwnAlertResource {
    fn suspended(&self) -> bool {
        self.spec.0.suspend
    }
}

/// A namespaced object the housekeeping can watch and patch.
trait Object:
    kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Object for K where
    K: kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// Returns whether this replica leads (always, without leader election).
pub fn start(
    client: Client,
    settings: &Settings,
    notices: Arc<KubeNotices>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> watch::Receiver<bool> {
    let (leader, leading) = watch::channel(settings.leader_election.is_none());
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        notices,
        groups: settings.groups,
    });
    let namespace = settings.namespace.clone();
    match settings.leader_election.clone() {
        None => {
            tasks.spawn(run(ctx, namespace, shutdown));
        }
        Some(le) => {
            let lease_ns = settings.runtime_namespace.clone();
            tasks.spawn(lead(client, lease_ns, le, ctx, namespace, leader, shutdown));
        }
    }
    leading
}

/// Runs the reconcilers only while this replica holds the Lease.
async fn lead(
    client: Client,
    lease_ns: String,
    le: LeaderElection,
    ctx: Arc<Ctx>,
    namespace: Option<String>,
    leader: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let identity = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("{}-{}", super::CONTROLLER_NAME, std::process::id()));
    let manager = kube_lease_manager::LeaseManagerBuilder::new(
        client,
        "commit-status-controller-leader-election",
    )
    .with_namespace(lease_ns)
    .with_identity(identity)
    .with_duration(le.lease_duration.as_secs().max(1))
    .with_grace(
        le.lease_duration
            .saturating_sub(le.renew_deadline)
            .as_secs()
            .max(1),
    )
    .build()
    .await;
    let manager = match manager {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "leader election unavailable; finalizers are not managed");
            return;
        }
    };
    let (mut leading, handle) = manager.watch().await;
    let mut running: Option<(CancellationToken, tokio::task::JoinHandle<()>)> = None;
    loop {
        let is_leader = *leading.borrow_and_update();
        leader.send_replace(is_leader);
        match (is_leader, running.is_some()) {
            (true, false) => {
                tracing::info!("acquired the leader-election lease");
                let token = shutdown.child_token();
                running = Some((
                    token.clone(),
                    tokio::spawn(run(ctx.clone(), namespace.clone(), token)),
                ));
            }
            (false, true) => {
                tracing::info!("lost the leader-election lease");
                if let Some((token, task)) = running.take() {
                    token.cancel();
                    let _ = task.await;
                }
            }
            _ => {}
        }
        tokio::select! {
            r = leading.changed() => if r.is_err() { break },
            () = shutdown.cancelled() => break,
        }
    }
    if let Some((token, task)) = running.take() {
        token.cancel();
        let _ = task.await;
    }
    leader.send_replace(false);
    if le.release_on_cancel {
        drop(leading);
        let _ = tokio::time::timeout(le.retry_period.max(Duration::from_secs(1)), handle).await;
    }
}

async fn run(ctx: Arc<Ctx>, namespace: Option<String>, shutdown: CancellationToken) {
    let flux = async {
        if ctx.groups.flux() {
            housekeep::<ProviderResource, AlertResource>(&ctx, &namespace, &shutdown).await;
        }
    };
    let own = async {
        if ctx.groups.own() {
            housekeep::<OwnProviderResource, OwnAlertResource>(&ctx, &namespace, &shutdown).await;
        }
    };
    futures::join!(flux, own);
}

/// The Provider finalizer and the Alert migration for one API group's kinds.
async fn housekeep<P: Object, A: Object + Suspendable>(
    ctx: &Arc<Ctx>,
    namespace: &Option<String>,
    shutdown: &CancellationToken,
) {
    let (providers, alerts): (Api<P>, Api<A>) = match namespace {
        Some(ns) => (
            Api::namespaced(ctx.client.clone(), ns),
            Api::namespaced(ctx.client.clone(), ns),
        ),
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    let p = Controller::new(providers, watcher::Config::default())
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile_provider::<P>, error_policy, ctx.clone())
        .for_each(|_| async {});
    let a = Controller::new(alerts, watcher::Config::default())
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile_alert::<A>, error_policy, ctx.clone())
        .for_each(|_| async {});
    futures::join!(p, a);
}

async fn reconcile_provider<P: Object>(p: Arc<P>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let api: Api<P> = Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
    finalizer(&api, FINALIZER, p, |ev| async move {
        match ev {
            // Nothing to do on apply or cleanup beyond the finalizer itself: caches are rebuilt
            // from the watch, and the next catalog no longer holds a deleted Provider.
            Finalizer::Apply(_) | Finalizer::Cleanup(_) => {
                Ok::<_, kube::Error>(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn reconcile_alert<A: Object + Suspendable>(
    a: Arc<A>,
    ctx: Arc<Ctx>,
) -> Result<Action, Error> {
    let finalizers = a.finalizers();
    let Some(index) = finalizers.iter().position(|f| f == FINALIZER) else {
        return Ok(Action::await_change());
    };
    // Flux leaves a suspended Alert alone unless it is being deleted.
    if a.suspended() && a.meta().deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let ns = a.namespace().unwrap_or_default();
    let api: Api<A> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!([
        {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": FINALIZER},
        {"op": "remove", "path": format!("/metadata/finalizers/{index}")},
    ]);
    let patch: json_patch::Patch = serde_json::from_value(patch).expect("static patch");
    api.patch(
        &a.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await?;
    ctx.notices.normal(
        "Alert",
        &ns,
        &a.name_any(),
        "Migration",
        "removed finalizer from Alert to migrate to static Alert".into(),
    );
    Ok(Action::await_change())
}

fn error_policy<K>(_obj: Arc<K>, error: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(error = %error, "finalizer housekeeping failed; retrying");
    Action::requeue(Duration::from_secs(10))
}
