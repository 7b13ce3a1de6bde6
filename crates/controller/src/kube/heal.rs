//! Level-triggered commit statuses: watches the objects the commit-status Alerts select (any
//! Flux kind, found through discovery) and feeds the event their state implies into the event
//! path, on start, on every change of the fields a status depends on, and on a periodic
//! resync. A status already posted costs a store read, not a forge request. Leader only.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, ApiResource};
use kube::discovery::Scope;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::state::{self, FluxObject, ObjectState, Selection};
use crate::config::catalog::Catalog;
use crate::delivery::plan;
use crate::delivery::store::Pending;
use crate::events::server::{self, EventState, Origin};
use crate::metrics::{KindLabel, Metrics};
use crate::route;

/// How often the configuration snapshot is checked for a new version.
const CATALOG_POLL: Duration = Duration::from_secs(1);

/// (kind, namespace): the unit of one watch.
type WatchKey = (String, String);
/// (kind, namespace, name).
type ObjectKey = (String, String, String);

struct Shared {
    state: EventState,
    metrics: Arc<Metrics>,
    objects: Mutex<HashMap<WatchKey, HashMap<String, Arc<ObjectState>>>>,
    /// Objects whose status must be looked at again.
    dirty: Mutex<BTreeSet<ObjectKey>>,
    wake: Notify,
    /// Kinds whose list was refused, reported once each.
    forbidden: Mutex<BTreeSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn mark(&self, keys: impl IntoIterator<Item = ObjectKey>) {
        lock(&self.dirty).extend(keys);
        self.wake.notify_one();
    }

    fn mark_all(&self) {
        let keys: Vec<ObjectKey> = lock(&self.objects)
            .iter()
            .flat_map(|((kind, ns), objects)| {
                objects
                    .keys()
                    .map(move |name| (kind.clone(), ns.clone(), name.clone()))
            })
            .collect();
        self.mark(keys);
    }

    /// Replaces what one watch holds (after a list); only objects whose state changed are
    /// looked at again.
    fn replace(&self, key: &WatchKey, fresh: HashMap<String, Arc<ObjectState>>) {
        let changed: Vec<ObjectKey> = {
            let mut objects = lock(&self.objects);
            let old = objects.remove(key).unwrap_or_default();
            let changed = fresh
                .iter()
                .filter(|(name, o)| old.get(*name) != Some(*o))
                .map(|(name, _)| (key.0.clone(), key.1.clone(), name.clone()))
                .collect();
            if !fresh.is_empty() {
                objects.insert(key.clone(), fresh);
            }
            changed
        };
        self.count(&key.0);
        self.mark(changed);
    }

    fn apply(&self, key: &WatchKey, o: ObjectState) {
        let name = o.name.clone();
        let changed = {
            let mut objects = lock(&self.objects);
            let slot = objects.entry(key.clone()).or_default();
            if slot.get(&name).is_some_and(|old| **old == o) {
                false
            } else {
                slot.insert(name.clone(), Arc::new(o));
                true
            }
        };
        if changed {
            self.count(&key.0);
            self.mark([(key.0.clone(), key.1.clone(), name)]);
        }
    }

    fn remove(&self, key: &WatchKey, name: &str) {
        if let Some(slot) = lock(&self.objects).get_mut(key) {
            slot.remove(name);
        }
        self.count(&key.0);
    }

    fn get(&self, key: &ObjectKey) -> Option<Arc<ObjectState>> {
        lock(&self.objects)
            .get(&(key.0.clone(), key.1.clone()))
            .and_then(|slot| slot.get(&key.2))
            .cloned()
    }

    fn count(&self, kind: &str) {
        let n: usize = lock(&self.objects)
            .iter()
            .filter(|((k, _), _)| k == kind)
            .map(|(_, objects)| objects.len())
            .sum();
        self.metrics
            .watched_objects
            .get_or_create(&KindLabel { kind: kind.into() })
            .set(n as i64);
    }

    fn clear(&self) {
        let kinds: BTreeSet<String> = lock(&self.objects).keys().map(|k| k.0.clone()).collect();
        lock(&self.objects).clear();
        lock(&self.dirty).clear();
        for kind in kinds {
            self.count(&kind);
        }
    }
}

/// Starts healing from state; it runs while `leading` says this replica leads.
pub fn start(
    client: Client,
    resync: Duration,
    state: EventState,
    metrics: Arc<Metrics>,
    mut leading: watch::Receiver<bool>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let shared = Arc::new(Shared {
        state,
        metrics,
        objects: Mutex::default(),
        dirty: Mutex::default(),
        wake: Notify::new(),
        forbidden: Mutex::default(),
    });
    let resync = resync.max(Duration::from_secs(1));
    tasks.spawn(async move {
        loop {
            tokio::select! {
                r = leading.wait_for(|l| *l) => if r.map(|_| ()).is_err() { return },
                () = shutdown.cancelled() => return,
            }
            tracing::info!(resync = ?resync, "healing commit statuses from the selected objects' state");
            let token = shutdown.child_token();
            let session = tokio::spawn(run(shared.clone(), client.clone(), resync, token.clone()));
            let lost = async {
                // Without leader election the sender is gone and this replica always leads.
                if leading.wait_for(|l| !*l).await.map(|_| ()).is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = lost => {}
                () = shutdown.cancelled() => {}
            }
            token.cancel();
            let _ = session.await;
            shared.clear();
        }
    });
}

/// One leadership term: keeps a watch per selected (kind, namespace) and heals what changes.
async fn run(shared: Arc<Shared>, client: Client, resync: Duration, token: CancellationToken) {
    let healer = tokio::spawn(heal_loop(shared.clone(), token.clone()));
    let mut kinds: HashMap<String, ApiResource> = HashMap::new();
    let mut watches: HashMap<WatchKey, (Selection, JoinHandle<()>)> = HashMap::new();
    let mut last: Option<Arc<Catalog>> = None;
    let mut poll = tokio::time::interval(CATALOG_POLL);
    let mut resync_tick = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
    loop {
        let resync_now = tokio::select! {
            _ = poll.tick() => false,
            _ = resync_tick.tick() => true,
            () = token.cancelled() => break,
        };
        let catalog = shared
            .state
            .catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let changed = last.as_ref().is_none_or(|l| !Arc::ptr_eq(l, &catalog));
        if !changed && !resync_now {
            continue;
        }
        last = Some(catalog.clone());
        let wanted = state::targets(&catalog, shared.state.settings.no_cross_namespace_refs);
        watches.retain(|key, (selection, task)| {
            // A watch that stopped (its list was refused) is tried again on resync.
            let keep = wanted.get(key) == Some(selection) && !(resync_now && task.is_finished());
            if !keep {
                task.abort();
                shared.replace(key, HashMap::new());
            }
            keep
        });
        let missing: Vec<_> = wanted
            .iter()
            .filter(|(key, _)| !watches.contains_key(*key))
            .collect();
        if missing
            .iter()
            .any(|((kind, _), _)| !kinds.contains_key(kind))
        {
            match discover(&client).await {
                Ok(found) => kinds = found,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot discover the Flux kinds to watch; retrying")
                }
            }
        }
        for (key, selection) in missing {
            let Some(resource) = kinds.get(&key.0) else {
                tracing::debug!(kind = %key.0, "no such Flux kind is served; nothing to watch");
                continue;
            };
            let task = tokio::spawn(watch_objects(
                shared.clone(),
                client.clone(),
                resource.clone(),
                key.clone(),
                selection.clone(),
                token.clone(),
            ));
            watches.insert(key.clone(), (selection.clone(), task));
        }
        // A new configuration (or the resync) may imply other statuses for the same states.
        shared.mark_all();
    }
    for (_, (_, task)) in watches {
        task.abort();
    }
    let _ = healer.await;
}

/// Every namespaced kind the Flux API groups serve (`*.fluxcd.io`), at its preferred version.
async fn discover(client: &Client) -> Result<HashMap<String, ApiResource>, kube::Error> {
    let mut kinds = HashMap::new();
    let groups = client.list_api_groups().await?;
    for g in groups
        .groups
        .iter()
        .filter(|g| g.name.ends_with(".fluxcd.io"))
    {
        let group = match kube::discovery::group(client, &g.name).await {
            Ok(group) => group,
            Err(e) => {
                tracing::warn!(group = %g.name, error = %e, "cannot discover an API group");
                continue;
            }
        };
        for (resource, caps) in group.recommended_resources() {
            if caps.scope == Scope::Namespaced {
                kinds.entry(resource.kind.clone()).or_insert(resource);
            }
        }
    }
    Ok(kinds)
}

fn is_forbidden(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.is_forbidden(),
        watcher::Error::WatchError(s) => s.is_forbidden(),
        _ => false,
    }
}

/// Watches one kind in one namespace with partial objects, keeping each object's state.
async fn watch_objects(
    shared: Arc<Shared>,
    client: Client,
    resource: ApiResource,
    key: WatchKey,
    selection: Selection,
    token: CancellationToken,
) {
    let api: Api<FluxObject> = Api::namespaced_with(client, &key.1, &resource);
    let mut config = watcher::Config::default();
    if let Some(name) = selection.only_name() {
        config = config.fields(&format!("metadata.name={name}"));
    }
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut listing: Option<HashMap<String, Arc<ObjectState>>> = None;
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            () = token.cancelled() => return,
        };
        let project = |o: FluxObject| ObjectState::from_object(o, &resource);
        match item {
            None => return,
            Some(Ok(watcher::Event::Init)) => listing = Some(HashMap::new()),
            Some(Ok(watcher::Event::InitApply(o))) => {
                let o = project(o);
                if let Some(l) = listing.as_mut()
                    && selection.admits(&o.name, &o.labels)
                {
                    l.insert(o.name.clone(), Arc::new(o));
                }
            }
            Some(Ok(watcher::Event::InitDone)) => {
                let fresh = listing.take().unwrap_or_default();
                tracing::info!(kind = %key.0, namespace = %key.1, objects = fresh.len(), "watching the state of selected objects");
                shared.replace(&key, fresh);
            }
            Some(Ok(watcher::Event::Apply(o))) => {
                let o = project(o);
                if selection.admits(&o.name, &o.labels) {
                    shared.apply(&key, o);
                } else {
                    // Its labels no longer match.
                    shared.remove(&key, &o.name);
                }
            }
            Some(Ok(watcher::Event::Delete(o))) => {
                shared.remove(&key, o.metadata.name.as_deref().unwrap_or_default());
            }
            Some(Err(e)) if is_forbidden(&e) => {
                if lock(&shared.forbidden).insert(key.0.clone()) {
                    tracing::warn!(kind = %key.0, namespace = %key.1, error = %e, "cannot list this kind; its commit statuses follow events only");
                }
                shared.replace(&key, HashMap::new());
                return;
            }
            Some(Err(e)) => {
                tracing::warn!(kind = %key.0, namespace = %key.1, error = %e, "watch failed; retrying with backoff")
            }
        }
    }
}

async fn heal_loop(shared: Arc<Shared>, token: CancellationToken) {
    loop {
        tokio::select! {
            () = shared.wake.notified() => {}
            () = token.cancelled() => return,
        }
        let batch = std::mem::take(&mut *lock(&shared.dirty));
        if batch.is_empty() {
            continue;
        }
        let n = batch.len();
        for key in batch {
            if token.is_cancelled() {
                return;
            }
            if let Some(o) = shared.get(&key) {
                heal(&shared, &o).await;
            }
        }
        tracing::debug!(objects = n, "looked at the state of objects");
    }
}

/// Feeds the status an object's state implies into the event path, unless it is the status
/// last posted.
async fn heal(shared: &Shared, o: &ObjectState) {
    let state = &shared.state;
    let Some(mut event) = state::desired_event(o, state.settings.progressing) else {
        return;
    };
    route::cleanup_metadata(&mut event);
    let catalog = state
        .catalog
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let Some(mut records) =
        server::deliveries_for(state, &catalog, &event, Some(&o.labels), Origin::State)
    else {
        return;
    };
    records.retain_mut(|r| !already_posted(state, &catalog, r));
    if records.is_empty() {
        tracing::debug!(object = %event.object_ref(), "the object's state matches the statuses last posted");
        return;
    }
    let n = records.len() as u64;
    let what: Vec<String> = records
        .iter()
        .map(|r| {
            let d = &r.delivery;
            format!("{} {} {} on {}", d.provider, d.status_id, d.state, d.sha)
        })
        .collect();
    match server::store(state, records).await {
        Ok(()) => {
            shared
                .metrics
                .healed
                .get_or_create(&KindLabel {
                    kind: o.kind.clone(),
                })
                .inc_by(n);
            tracing::info!(object = %event.object_ref(), statuses = ?what, "commit status healed from the object's state");
        }
        // The next resync tries again.
        Err(why) => {
            tracing::warn!(object = %event.object_ref(), kind = why.name(), "cannot heal from the object's state: {why}")
        }
    }
}

/// Whether the forge already shows exactly this status (the scheduler's "last posted"
/// memory), or the commit has its final state and this is an in-progress one: then the state
/// costs no delivery at all.
fn already_posted(state: &EventState, catalog: &Catalog, record: &mut Pending) -> bool {
    if crate::delivery::superseded_progressing(&state.outbox, record) {
        return true;
    }
    let provider = &record.delivery.provider;
    let (ns, name) = provider.split_once('/').unwrap_or(("", provider));
    let Some(provider) = catalog.provider(ns, name) else {
        return false;
    };
    let Some(Ok(forge)) = provider.forge.as_ref() else {
        return false;
    };
    // Built as the attempt builds them, so that our own delivery-page link (which names the
    // delivery) is left out of the fingerprint on both sides.
    let settings = &state.settings;
    let public_url = settings.public_url.as_deref();
    let Ok(Some(prepared)) = plan::requests(forge, record, settings.progressing, public_url) else {
        return false;
    };
    state.outbox.posted(&record.key()).ok().flatten().as_deref()
        == Some(prepared.fingerprint.as_str())
}
