//! Watch caches: reflectors for Providers and Alerts (no API call per event), and one
//! name-scoped watch per referenced Secret. Secrets are never listed cluster-wide: only the
//! ones a Provider names are fetched, cached and refreshed when they change. Any change
//! rebuilds the catalog snapshot the event path reads.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use api::{
    Alert, AlertResource, ObjectMeta, OwnAlertResource, OwnProviderResource, Provider,
    ProviderResource, Secret,
};
use notify::ClientCache;

use super::Settings;
use super::notices::KubeNotices;
use crate::config::catalog::SharedCatalog;
use crate::config::catalog::{Catalog, Objects};
use crate::config::hooks::reason;
use crate::config::status_expr::check_provider;

/// How long to let a burst of changes settle before rebuilding.
const DEBOUNCE: Duration = Duration::from_millis(100);

type SecretKey = (String, String);
/// The watch keeping a Secret current, and the latest copy it saw.
type SecretWatch = (JoinHandle<()>, Arc<Mutex<Option<Secret>>>);

/// The Secrets referenced by Providers, each kept current by its own watch.
struct SecretWatches {
    client: Client,
    changed: mpsc::Sender<()>,
    entries: Mutex<HashMap<SecretKey, SecretWatch>>,
}

impl SecretWatches {
    /// Starts watches for newly referenced Secrets (seeding each with a GET, so the catalog
    /// built next sees it) and stops those no longer referenced.
    async fn ensure(&self, wanted: BTreeSet<SecretKey>) {
        let new: Vec<SecretKey> = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries.retain(|k, (task, _)| {
                let keep = wanted.contains(k);
                if !keep {
                    task.abort();
                }
                keep
            });
            wanted
                .into_iter()
                .filter(|k| !entries.contains_key(k))
                .collect()
        };
        for key in new {
            let api: Api<KubeSecret> = Api::namespaced(self.client.clone(), &key.0);
            let slot = Arc::new(Mutex::new(None));
            match api.get_opt(&key.1).await {
                Ok(s) => *slot.lock().unwrap_or_else(|p| p.into_inner()) = s.map(convert_secret),
                Err(e) => {
                    tracing::warn!(secret = %format!("{}/{}", key.0, key.1), error = %e, "cannot read secret")
                }
            }
            let config = watcher::Config::default().fields(&format!("metadata.name={}", key.1));
            let changed = self.changed.clone();
            let task_slot = slot.clone();
            let task = tokio::spawn(async move {
                let mut stream = watcher(api, config).default_backoff().boxed();
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                            *task_slot.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(convert_secret(s));
                        }
                        Ok(watcher::Event::Delete(_)) => {
                            *task_slot.lock().unwrap_or_else(|p| p.into_inner()) = None
                        }
                        Ok(watcher::Event::Init) => {}
                        Ok(watcher::Event::InitDone) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "secret watch failed; retrying");
                            continue;
                        }
                    }
                    let _ = changed.try_send(());
                }
            });
            self.entries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, (task, slot));
        }
    }

    fn current(&self) -> Vec<Secret> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .values()
            .filter_map(|(_, slot)| slot.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect()
    }
}

fn convert_secret(s: KubeSecret) -> Secret {
    let mut data: std::collections::BTreeMap<String, Vec<u8>> = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    // `stringData` is write-only on a real server, but honour it if a client sent it through.
    for (k, v) in s.string_data.unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    Secret {
        metadata: ObjectMeta {
            name: s.metadata.name.unwrap_or_default(),
            namespace: s.metadata.namespace.unwrap_or_default(),
            uid: s.metadata.uid.unwrap_or_default(),
            ..Default::default()
        },
        type_: s.type_.unwrap_or_default(),
        data,
    }
}

// A wiring function: each argument is a distinct shared handle of the process.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    client: Client,
    settings: &Settings,
    metrics: Arc<crate::metrics::Metrics>,
    catalog: SharedCatalog,
    clients: ClientCache,
    notices: Arc<KubeNotices>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let (changed, mut rx) = mpsc::channel::<()>(1);
    // One watch cache per kind and watched API group (--api-group); the catalog is built from
    // all of them.
    let mut watches = Watches::default();
    let ns = settings.namespace.as_deref();
    if settings.groups.flux() {
        watches.add::<ProviderResource, AlertResource>(&client, ns, &changed, &shutdown, tasks);
    }
    if settings.groups.own() {
        watches
            .add::<OwnProviderResource, OwnAlertResource>(&client, ns, &changed, &shutdown, tasks);
    }
    let (providers, alerts) = (watches.providers, watches.alerts);
    let ready = futures::future::try_join_all(std::mem::take(&mut watches.ready));
    tokio::select! {
        r = ready => {
            r.map(|_| ()).context_kube()?;
        }
        () = shutdown.cancelled() => return Ok(()),
    }
    let secrets = Arc::new(SecretWatches {
        client,
        changed,
        entries: Mutex::default(),
    });
    let mut reported = BTreeSet::new();
    rebuild(
        &providers,
        &alerts,
        &secrets,
        &catalog,
        &clients,
        &notices,
        &mut reported,
    )
    .await;
    metrics.set_rejected(reported.iter().filter_map(|k| k.split('/').next()));
    tasks.spawn(async move {
        loop {
            tokio::select! {
                r = rx.recv() => if r.is_none() { return },
                () = shutdown.cancelled() => return,
            }
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            rebuild(
                &providers,
                &alerts,
                &secrets,
                &catalog,
                &clients,
                &notices,
                &mut reported,
            )
            .await;
            metrics.set_rejected(reported.iter().filter_map(|k| k.split('/').next()));
        }
    });
    Ok(())
}

type Lister<T> = Box<dyn Fn() -> Vec<T> + Send + Sync>;

/// The watch caches of the watched groups, as listers of converted objects.
#[derive(Default)]
struct Watches {
    providers: Vec<Lister<Provider>>,
    alerts: Vec<Lister<Alert>>,
    ready: Vec<futures::future::BoxFuture<'static, Result<(), reflector::store::WriterDropped>>>,
}

impl Watches {
    fn add<P, A>(
        &mut self,
        client: &Client,
        namespace: Option<&str>,
        changed: &mpsc::Sender<()>,
        shutdown: &CancellationToken,
        tasks: &mut JoinSet<()>,
    ) where
        P: Watched + Into<Provider>,
        A: Watched + Into<Alert>,
    {
        let providers = watch::<P>(client, namespace, changed, shutdown, tasks);
        let alerts = watch::<A>(client, namespace, changed, shutdown, tasks);
        let p = providers.clone();
        self.ready
            .push(Box::pin(async move { p.wait_until_ready().await }));
        let a = alerts.clone();
        self.ready
            .push(Box::pin(async move { a.wait_until_ready().await }));
        self.providers.push(Box::new(move || {
            providers
                .state()
                .iter()
                .map(|p| (**p).clone().into())
                .collect()
        }));
        self.alerts.push(Box::new(move || {
            alerts
                .state()
                .iter()
                .map(|a| (**a).clone().into())
                .collect()
        }));
    }
}

/// A namespaced kind we keep a watch cache of.
trait Watched:
    kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

fn watch<K: Watched>(
    client: &Client,
    namespace: Option<&str>,
    changed: &mpsc::Sender<()>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Store<K> {
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (store, writer) = reflector::store();
    tasks.spawn(drive(
        watcher(api, watcher::Config::default()),
        writer,
        changed.clone(),
        shutdown.clone(),
    ));
    store
}

trait KubeContext<T> {
    fn context_kube(self) -> anyhow::Result<T>;
}

impl<T> KubeContext<T> for Result<T, reflector::store::WriterDropped> {
    fn context_kube(self) -> anyhow::Result<T> {
        self.map_err(|_| {
            anyhow::anyhow!("the watch of Providers and Alerts stopped before its first list")
        })
    }
}

async fn drive<K>(
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    writer: reflector::store::Writer<K>,
    changed: mpsc::Sender<()>,
    shutdown: CancellationToken,
) where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let mut stream = stream.default_backoff().reflect(writer).boxed();
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            () = shutdown.cancelled() => return,
        };
        match item {
            Some(Ok(_)) => {
                let _ = changed.try_send(());
            }
            Some(Err(e)) => tracing::warn!(error = %e, "watch failed; retrying with backoff"),
            None => return,
        }
    }
}

/// Validates what the caches hold, as standalone mode validates manifests: an object the
/// API server accepted but that cannot work (old servers skip the CRDs' CEL rules; regexes
/// and expressions are only checked here) gets an `InvalidConfig` event and is skipped.
async fn rebuild(
    providers: &[Lister<Provider>],
    alerts: &[Lister<Alert>],
    secrets: &SecretWatches,
    catalog: &SharedCatalog,
    clients: &ClientCache,
    notices: &KubeNotices,
    reported: &mut BTreeSet<String>,
) {
    let mut objects = Objects::default();
    let mut now_reported = BTreeSet::new();
    let mut invalid = |kind: &'static str, ns: &str, name: &str, problems: Vec<api::FieldError>| {
        let text = problems
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        let key = format!("{kind}/{ns}/{name}: {text}");
        if !reported.contains(&key) {
            tracing::error!(object = %format!("{kind}/{ns}/{name}"), "invalid object skipped: {text}");
            notices.warn_on(
                kind,
                ns,
                name,
                reason::INVALID_CONFIG,
                format!("invalid {kind} skipped: {text}"),
            );
        }
        now_reported.insert(key);
    };
    let mut referenced = BTreeSet::new();
    let providers: Vec<Provider> = providers.iter().flat_map(|list| list()).collect();
    let alerts: Vec<Alert> = alerts.iter().flat_map(|list| list()).collect();
    notices.set_api_versions(
        providers
            .iter()
            .map(|p| (&p.kind, &p.metadata, &p.api_version))
            .chain(
                alerts
                    .iter()
                    .map(|a| (&a.kind, &a.metadata, &a.api_version)),
            )
            .map(|(kind, m, v)| (format!("{kind}/{}/{}", m.namespace, m.name), v.clone()))
            .collect(),
    );
    for provider in providers {
        let (ns, name) = (
            provider.metadata.namespace.clone(),
            provider.metadata.name.clone(),
        );
        let exprs = match check_provider(&provider) {
            Ok(exprs) => exprs,
            Err(errors) => {
                invalid("Provider", &ns, &name, errors);
                continue;
            }
        };
        for r in [
            &provider.spec.secret_ref,
            &provider.spec.proxy_secret_ref,
            &provider.spec.cert_secret_ref,
        ]
        .into_iter()
        .flatten()
        {
            referenced.insert((ns.clone(), r.name.clone()));
        }
        objects.providers.push((provider, exprs));
    }
    for alert in alerts {
        let errors = alert.validate();
        if !errors.is_empty() {
            invalid(
                "Alert",
                &alert.metadata.namespace,
                &alert.metadata.name,
                errors,
            );
            continue;
        }
        objects.alerts.push(alert);
    }
    *reported = now_reported;
    secrets.ensure(referenced).await;
    objects.secrets = secrets.current();
    // A stable order keeps matching order deterministic (Flux uses its cache order).
    // With both groups watched, a name taken in both resolves to ours (built last).
    let ours = |p: &Provider| p.api_version.starts_with(api::OWN_GROUP);
    objects.providers.sort_by(|a, b| {
        (&a.0.metadata.namespace, &a.0.metadata.name, ours(&a.0)).cmp(&(
            &b.0.metadata.namespace,
            &b.0.metadata.name,
            ours(&b.0),
        ))
    });
    objects.alerts.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let built = Catalog::build(objects, clients);
    for p in built.providers() {
        if let Some(Err(e)) = &p.forge {
            tracing::debug!(provider = %p.key(), "provider cannot post commit statuses until fixed: {e}");
        }
    }
    let (np, na, ns) = built.counts();
    *catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(built);
    tracing::debug!(
        providers = np,
        alerts = na,
        secrets = ns,
        "configuration reloaded from the cluster"
    );
}
