//! Forwarding (`--forward-events-to`): every event the event API accepts is sent on, unchanged
//! (the same body bytes and `Content-Type`), to each configured receiver — typically Flux's
//! own notification-controller, which then serves the chat Providers we do not.
//!
//! Forwards go through the delivery store like commit statuses: the body is committed to its
//! own tables of the same redb database before the 202, so a restart, a `kill -9` or an outage
//! of the receiver loses nothing. Each body is stored once, however many receivers there are,
//! and only its id and a few numbers are held in memory. Per receiver and involved object,
//! forwards are sent one at a time in the order they were accepted; different objects go in
//! parallel (up to `--max-in-flight-per-host` per receiver). Retries use the deliveries'
//! backoff and `--delivery-max-age`.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::delivery::store::{Attempt, Committed, StoreError, now_ms, rfc3339};

/// Bodies waiting to be forwarded: event id → the bytes as received.
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("forward_bodies");
/// Forwards not finished: (event id, receiver) → [`Forward`] (JSON).
const PENDING: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("forward_pending");
/// Finished forwards in the order they ended: id → [`ForwardOutcome`] (JSON).
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("forward_history");
const META: TableDefinition<&str, u64> = TableDefinition::new("forward_meta");

/// Finished forwards kept; older ones are dropped.
const HISTORY_CAP: u64 = 20_000;
/// Attempts kept per forward for its time line.
const ATTEMPT_LOG_CAP: usize = 20;
/// Writes applied in one transaction at most.
const MAX_BATCH: usize = 1024;
/// One attempt at a receiver, connection and answer included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// How much of a refusing receiver's answer is kept.
const ANSWER_CAP: usize = 512;
const USER_AGENT: &str = concat!("commit-status-controller/", env!("CARGO_PKG_VERSION"));

/// A receiver from `--forward-events-to`.
#[derive(Clone)]
pub struct Target {
    /// The URL without its userinfo: what logs, history and metrics show, and the key of its
    /// forwards in the store (so no credential is ever written to disk).
    pub id: String,
    url: reqwest::Url,
    auth: Option<(String, Option<String>)>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id)
    }
}

impl Target {
    /// Parses one `--forward-events-to` value; the error never repeats a credential.
    pub fn parse(value: &str) -> Result<Target, String> {
        let mut url = reqwest::Url::parse(value.trim()).map_err(|e| {
            format!(
                "--forward-events-to {}: not a URL: {e}",
                redact_text(value.trim())
            )
        })?;
        let id_of = |u: &reqwest::Url| {
            let mut u = u.clone();
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        };
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(format!(
                "--forward-events-to {}: use an http:// or https:// URL with a host",
                id_of(&url)
            ));
        }
        let auth = (!url.username().is_empty() || url.password().is_some()).then(|| {
            let decode = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            (
                decode(&url.username().replace('+', "%2B")),
                url.password().map(|p| decode(&p.replace('+', "%2B"))),
            )
        });
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Ok(Target {
            id: url.to_string(),
            url,
            auth,
        })
    }
}

/// Removes what may be userinfo from text that is not a valid URL: everything before the last
/// `@` but a scheme.
fn redact_text(s: &str) -> String {
    let Some(at) = s.rfind('@') else {
        return s.to_string();
    };
    match s[..at].find("://") {
        Some(scheme) => format!("{}://…@{}", &s[..scheme], &s[at + 1..]),
        None => format!("…@{}", &s[at + 1..]),
    }
}

/// Parses the targets, refusing two that differ only in their userinfo (their forwards would
/// share one key in the store).
pub fn parse_targets(values: &[String]) -> Result<Vec<Target>, String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for v in values {
        let t = Target::parse(v)?;
        if !seen.insert(t.id.clone()) {
            return Err(format!("--forward-events-to {} is given twice", t.id));
        }
        out.push(t);
    }
    Ok(out)
}

/// A forward not finished: one event to one receiver.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Forward {
    /// The event's id (its body's key).
    pub event: u64,
    /// The receiver ([`Target::id`]).
    pub target: String,
    /// `Kind/namespace/name` of the involved object: forwards of one object keep their order.
    pub object: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The request's `Content-Type`, byte for byte (each byte one char, as Latin-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub bytes: u64,
    pub accepted_ms: i64,
    pub not_before_ms: i64,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempt_log: Vec<Attempt>,
}

impl Forward {
    fn queue(&self) -> (String, String) {
        (self.target.clone(), self.object.clone())
    }
}

/// How a forward ended.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ForwardVerdict {
    /// The receiver answered 2xx.
    Forwarded,
    /// The receiver answered 429: it already has the event.
    AlreadyReceived,
    /// The receiver refused it (another 4xx, or a redirect).
    Failed,
    /// Not delivered within `--delivery-max-age`.
    Expired,
    /// The receiver is no longer configured.
    Skipped,
}

impl ForwardVerdict {
    pub fn name(self) -> &'static str {
        match self {
            ForwardVerdict::Forwarded => "forwarded",
            ForwardVerdict::AlreadyReceived => "already_received",
            ForwardVerdict::Failed => "failed",
            ForwardVerdict::Expired => "expired",
            ForwardVerdict::Skipped => "skipped",
        }
    }
}

/// One entry of the forwarding history. `type` is always `forward`, which tells it apart from
/// a delivery's outcome where both are listed together.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ForwardOutcome {
    #[serde(rename = "type")]
    pub type_: String,
    pub id: u64,
    pub time: String,
    pub outcome: ForwardVerdict,
    pub target: String,
    pub object: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub attempts: u32,
    /// The receiver's last answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub accepted: String,
    pub event: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<Attempt>,
}

/// A pending forward as listed beside pending deliveries.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PendingForward {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(flatten)]
    pub forward: Forward,
}

/// Why an event cannot be taken for forwarding now.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("too many events waiting to be forwarded (--max-pending-forwards)")]
    Full,
    #[error(
        "the events waiting to be forwarded use their byte budget (--max-pending-forward-bytes)"
    )]
    FullBytes,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Tunables; the retry rules are the deliveries'.
#[derive(Clone)]
pub struct Settings {
    pub targets: Vec<Target>,
    pub min_retry_delay: Duration,
    pub max_retry_delay: Duration,
    pub max_age: Duration,
    pub max_in_flight_per_target: usize,
    /// Events stored for forwarding at most (each counted once, whatever the receivers).
    pub max_events: usize,
    /// Body bytes stored for forwarding at most.
    pub max_bytes: u64,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Answers once an accepted event is durable.
type Reply = oneshot::Sender<Result<(), StoreError>>;

enum Op {
    Accept {
        event: u64,
        body: Bytes,
        forwards: Vec<Forward>,
        reply: Reply,
    },
    Done {
        event: u64,
        target: String,
        outcome: Box<ForwardOutcome>,
    },
    Retry(Box<Forward>),
    Flush(oneshot::Sender<()>),
}

enum Msg {
    Accepted(Vec<Forward>),
    Ended {
        forward: Box<Forward>,
        at: Option<i64>,
    },
}

struct Inner {
    db: Arc<Database>,
    writer: mpsc::UnboundedSender<Op>,
    targets: Vec<Target>,
    next_event: AtomicU64,
    events: AtomicUsize,
    bytes: AtomicU64,
    max_events: usize,
    max_bytes: u64,
}

/// Handle to forwarding; cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

impl Forwarder {
    /// Opens the forwarding tables in `db`, and starts the writer and the sender. The returned
    /// future ends after `shutdown`, once attempts finished or `grace` passed.
    pub fn start(
        db: Arc<Database>,
        settings: Settings,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> Result<(Forwarder, impl Future<Output = ()>), StoreError> {
        if settings.targets.is_empty() {
            return Err(StoreError::Storage("no receiver to forward to".into()));
        }
        let init = init(&db)?;
        let (sched_tx, sched_rx) = mpsc::unbounded_channel();
        let (writer_tx, writer_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            db: db.clone(),
            writer: writer_tx,
            targets: settings.targets.clone(),
            next_event: AtomicU64::new(init.next_event),
            events: AtomicUsize::new(init.sizes.len()),
            bytes: AtomicU64::new(init.sizes.values().sum()),
            max_events: settings.max_events,
            max_bytes: settings.max_bytes,
        });
        let writer = Writer {
            db,
            inner: Arc::downgrade(&inner),
            sizes: init.sizes,
            next_id: init.next_id,
            scheduler: sched_tx.clone(),
        };
        std::thread::Builder::new()
            .name("forward-writer".into())
            .spawn(move || writer.run(writer_rx))
            .map_err(|e| StoreError::Storage(e.to_string()))?;
        let forwarder = Forwarder { inner };
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(ATTEMPT_TIMEOUT)
            // A redirected POST would lose its body or its method; a receiver's address is
            // configured, so a redirect is a mistake to show, not to follow.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| StoreError::Storage(format!("cannot build the HTTP client: {e}")))?;
        // Forwards whose receiver is no longer configured end as skipped; the rest resume,
        // soon, as deliveries do after a restart.
        let soon = now_ms() + settings.min_retry_delay.as_millis() as i64;
        let mut resume = Vec::new();
        for mut f in init.pending {
            if settings.targets.iter().any(|t| t.id == f.target) {
                f.not_before_ms = f.not_before_ms.min(soon);
                resume.push(f);
            } else {
                forwarder.done(
                    &settings.metrics,
                    &f,
                    ForwardVerdict::Skipped,
                    None,
                    Some("the receiver is no longer in --forward-events-to".into()),
                );
            }
        }
        if !resume.is_empty() {
            tracing::info!(
                pending = resume.len(),
                "resuming forwards accepted before the restart"
            );
        }
        let _ = sched_tx.send(Msg::Accepted(resume));
        let shared = Arc::new(Shared {
            forwarder: forwarder.clone(),
            client,
            limits: settings
                .targets
                .iter()
                .map(|t| {
                    (
                        t.id.clone(),
                        Arc::new(Semaphore::new(settings.max_in_flight_per_target.max(1))),
                    )
                })
                .collect(),
            settings,
        });
        let run = run(shared, sched_tx, sched_rx, shutdown, grace);
        Ok((forwarder, run))
    }

    /// Stores an accepted event for every receiver. The receiver answers once it is durable;
    /// sending starts after that (the body is read back from the store).
    pub fn accept(
        &self,
        object: String,
        reason: String,
        body: Bytes,
        content_type: Option<&[u8]>,
    ) -> Result<Committed, Refused> {
        let inner = &self.inner;
        let len = body.len() as u64;
        if inner.events.fetch_add(1, Ordering::AcqRel) >= inner.max_events {
            inner.events.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Full);
        }
        if inner.bytes.fetch_add(len, Ordering::AcqRel) + len > inner.max_bytes {
            inner.bytes.fetch_sub(len, Ordering::AcqRel);
            inner.events.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::FullBytes);
        }
        let event = inner.next_event.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let content_type = content_type.map(|b| b.iter().map(|&c| c as char).collect::<String>());
        let forwards = inner
            .targets
            .iter()
            .map(|t| Forward {
                event,
                target: t.id.clone(),
                object: object.clone(),
                reason: reason.clone(),
                content_type: content_type.clone(),
                bytes: len,
                accepted_ms: now,
                not_before_ms: now,
                attempts: 0,
                last_error: None,
                attempt_log: Vec::new(),
            })
            .collect();
        let (reply, rx) = oneshot::channel();
        if inner
            .writer
            .send(Op::Accept {
                event,
                body,
                forwards,
                reply,
            })
            .is_err()
        {
            inner.bytes.fetch_sub(len, Ordering::AcqRel);
            inner.events.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Store(StoreError::Closed));
        }
        Ok(rx)
    }

    /// Events stored and not yet forwarded to every receiver.
    pub fn pending_events(&self) -> usize {
        self.inner.events.load(Ordering::Relaxed)
    }

    /// Their body bytes.
    pub fn pending_bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.inner.targets.iter().map(|t| t.id.as_str())
    }

    /// Waits until everything sent to the writer so far is committed.
    pub async fn flush(&self) {
        let (reply, rx) = oneshot::channel();
        if self.inner.writer.send(Op::Flush(reply)).is_ok() {
            let _ = rx.await;
        }
    }

    fn done(
        &self,
        metrics: &crate::metrics::Metrics,
        f: &Forward,
        verdict: ForwardVerdict,
        http_status: Option<u16>,
        message: Option<String>,
    ) {
        metrics
            .forwards
            .get_or_create(&crate::metrics::ForwardLabels {
                target: f.target.clone(),
                outcome: verdict.name().into(),
            })
            .inc();
        let _ = self.inner.writer.send(Op::Done {
            event: f.event,
            target: f.target.clone(),
            outcome: Box::new(ForwardOutcome {
                type_: "forward".into(),
                id: 0,
                time: rfc3339(now_ms()),
                outcome: verdict,
                target: f.target.clone(),
                object: f.object.clone(),
                reason: f.reason.clone(),
                attempts: f.attempts,
                http_status,
                message,
                accepted: rfc3339(f.accepted_ms),
                event: f.event,
                content_type: f.content_type.clone(),
                bytes: f.bytes,
                timeline: f.attempt_log.clone(),
            }),
        });
    }

    fn body(&self, event: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.inner.db.begin_read().map_err(storage)?;
        let table = txn.open_table(BODIES).map_err(storage)?;
        Ok(table
            .get(event)
            .map_err(storage)?
            .map(|v| v.value().to_vec()))
    }
}

fn storage<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// Which forwards to list.
#[derive(Clone, Debug, Default)]
pub struct ForwardFilter {
    /// Only receivers whose address contains this.
    pub target: Option<String>,
    /// Only this involved object (`Kind/namespace/name`).
    pub object: Option<String>,
    /// Only outcomes of this name ([`ForwardVerdict::name`]).
    pub outcome: Option<String>,
    pub limit: usize,
}

impl ForwardFilter {
    fn matches(&self, target: &str, object: &str) -> bool {
        self.target.as_deref().is_none_or(|t| target.contains(t))
            && self.object.as_deref().is_none_or(|o| o == object)
    }
}

/// The newest finished forwards first. A store without forwarding tables has none.
pub fn history(
    db: &(impl ReadableDatabase + ?Sized),
    filter: &ForwardFilter,
) -> Result<Vec<ForwardOutcome>, StoreError> {
    scan(db, HISTORY, true, filter.limit, |o: &ForwardOutcome| {
        filter.matches(&o.target, &o.object)
            && filter
                .outcome
                .as_deref()
                .is_none_or(|n| n == o.outcome.name())
    })
}

/// Forwards not finished, oldest first.
pub fn pending(
    db: &(impl ReadableDatabase + ?Sized),
    filter: &ForwardFilter,
) -> Result<Vec<PendingForward>, StoreError> {
    let found = scan(db, PENDING, false, filter.limit, |f: &Forward| {
        filter.matches(&f.target, &f.object)
    })?;
    Ok(found
        .into_iter()
        .map(|forward| PendingForward {
            type_: "forward".into(),
            forward,
        })
        .collect())
}

/// Up to `limit` readable values of `table` that `keep` accepts, in key order or reversed.
fn scan<K: redb::Key + 'static, T: serde::de::DeserializeOwned>(
    db: &(impl ReadableDatabase + ?Sized),
    table: TableDefinition<K, &[u8]>,
    newest_first: bool,
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> Result<Vec<T>, StoreError> {
    let txn = db.begin_read().map_err(storage)?;
    let table = match txn.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(storage(e)),
    };
    let entries = table.iter().map_err(storage)?;
    let entries: Box<dyn Iterator<Item = _>> = if newest_first {
        Box::new(entries.rev())
    } else {
        Box::new(entries)
    };
    let mut out = Vec::new();
    for entry in entries {
        if out.len() >= limit {
            break;
        }
        let (_, v) = entry.map_err(storage)?;
        if let Ok(value) = serde_json::from_slice::<T>(v.value())
            && keep(&value)
        {
            out.push(value);
        }
    }
    Ok(out)
}

/// What a listing of deliveries (`/api/v1/deliveries`, the `deliveries` subcommand) includes
/// besides deliveries: forwards, unless a delivery-only filter (provider, repository, commit)
/// is given; only forwards with `target` or `type=forward`.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only forwards to receivers whose address contains this.
    pub target: Option<String>,
    /// `delivery` or `forward`: only that kind.
    pub type_: Option<String>,
}

impl ListQuery {
    pub fn deliveries(&self) -> bool {
        self.target.is_none() && self.type_.as_deref() != Some("forward")
    }

    pub fn forwards(&self, filter: &crate::delivery::store::HistoryFilter) -> bool {
        filter.provider.is_none()
            && filter.repository.is_none()
            && filter.commit.is_none()
            && self.type_.as_deref() != Some("delivery")
    }

    /// Adds the forwards from `db` to `deliveries` (JSON, as listed): outcomes newest first,
    /// pending ones oldest first, at most `filter.limit` in all.
    pub fn merge(
        &self,
        db: &(impl ReadableDatabase + ?Sized),
        filter: &crate::delivery::store::HistoryFilter,
        pending_only: bool,
        deliveries: Vec<serde_json::Value>,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        let mut all = if self.deliveries() {
            deliveries
        } else {
            Vec::new()
        };
        if self.forwards(filter) {
            let f = ForwardFilter {
                target: self.target.clone(),
                limit: filter.limit,
                ..ForwardFilter::default()
            };
            let to_value = |v: Result<serde_json::Value, _>| v.unwrap_or_default();
            if pending_only {
                all.extend(
                    pending(db, &f)?
                        .iter()
                        .map(|p| to_value(serde_json::to_value(p))),
                );
                all.sort_by_key(|v| v["accepted_ms"].as_i64().unwrap_or(0));
            } else {
                all.extend(
                    history(db, &f)?
                        .iter()
                        .map(|o| to_value(serde_json::to_value(o))),
                );
                all.sort_by(|a, b| {
                    b["time"]
                        .as_str()
                        .unwrap_or("")
                        .cmp(a["time"].as_str().unwrap_or(""))
                });
            }
        }
        all.truncate(filter.limit);
        Ok(all)
    }
}

/// Whether a listed entry (JSON) is a forward rather than a delivery.
pub fn is_forward(v: &serde_json::Value) -> bool {
    v["type"] == "forward"
}

struct Init {
    pending: Vec<Forward>,
    /// Body size per stored event.
    sizes: HashMap<u64, u64>,
    next_event: u64,
    next_id: u64,
}

fn init(db: &Database) -> Result<Init, StoreError> {
    let txn = db.begin_write().map_err(storage)?;
    let mut pending = Vec::new();
    let mut sizes = HashMap::new();
    let (next_event, next_id);
    {
        let bodies = txn.open_table(BODIES).map_err(storage)?;
        for entry in bodies.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            sizes.insert(k.value(), v.value().len() as u64);
        }
        let table = txn.open_table(PENDING).map_err(storage)?;
        for entry in table.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            match serde_json::from_slice::<Forward>(v.value()) {
                Ok(f) => pending.push(f),
                Err(e) => tracing::error!(error = %e, "unreadable pending forward skipped"),
            }
        }
        txn.open_table(HISTORY).map_err(storage)?;
        let meta = txn.open_table(META).map_err(storage)?;
        let get = |k: &str| {
            meta.get(k)
                .map(|v| v.map(|v| v.value()).unwrap_or(0))
                .map_err(storage)
        };
        next_event = get("event")? + 1;
        next_id = get("history")? + 1;
    }
    txn.commit().map_err(storage)?;
    // A body no forward refers to any more (its last Done was committed, the removal not).
    let referenced: HashSet<u64> = pending.iter().map(|f| f.event).collect();
    let orphans: Vec<u64> = sizes
        .keys()
        .filter(|e| !referenced.contains(e))
        .copied()
        .collect();
    if !orphans.is_empty() {
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut bodies = txn.open_table(BODIES).map_err(storage)?;
            for e in &orphans {
                bodies.remove(*e).map_err(storage)?;
                sizes.remove(e);
            }
        }
        txn.commit().map_err(storage)?;
    }
    pending.sort_by_key(|f| f.event);
    Ok(Init {
        pending,
        sizes,
        next_event,
        next_id,
    })
}

/// Bodies stored and removed by one transaction, applied to the counts once it commits.
#[derive(Default)]
struct SizeChanges {
    added: HashMap<u64, u64>,
    removed: Vec<u64>,
}

/// The one thread writing the forwarding tables; it group-commits what queued up meanwhile.
struct Writer {
    db: Arc<Database>,
    inner: std::sync::Weak<Inner>,
    sizes: HashMap<u64, u64>,
    next_id: u64,
    scheduler: mpsc::UnboundedSender<Msg>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let mut accepted = Vec::new();
            let mut flushes = Vec::new();
            let mut sizes = SizeChanges::default();
            let next_id_before = self.next_id;
            let result = self.apply(batch, &mut accepted, &mut flushes, &mut sizes);
            let inner = self.inner.upgrade();
            match result {
                Ok(()) => {
                    self.sizes.extend(sizes.added);
                    let (mut events, mut bytes) = (0, 0);
                    for e in sizes.removed {
                        if let Some(size) = self.sizes.remove(&e) {
                            events += 1;
                            bytes += size;
                        }
                    }
                    if let Some(inner) = &inner {
                        inner.events.fetch_sub(events, Ordering::AcqRel);
                        inner.bytes.fetch_sub(bytes, Ordering::AcqRel);
                    }
                    for (reply, forwards) in accepted {
                        let _ = reply.send(Ok(()));
                        let _ = self.scheduler.send(Msg::Accepted(forwards));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "forward store write failed");
                    self.next_id = next_id_before;
                    for (reply, forwards) in accepted {
                        if let (Some(inner), Some(f)) = (&inner, forwards.first()) {
                            inner.events.fetch_sub(1, Ordering::AcqRel);
                            inner.bytes.fetch_sub(f.bytes, Ordering::AcqRel);
                        }
                        let _ = reply.send(Err(StoreError::Storage(e.to_string())));
                    }
                }
            }
            for f in flushes {
                let _ = f.send(());
            }
        }
    }

    fn apply(
        &mut self,
        batch: Vec<Op>,
        accepted: &mut Vec<(Reply, Vec<Forward>)>,
        flushes: &mut Vec<oneshot::Sender<()>>,
        sizes: &mut SizeChanges,
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(storage)?;
        // Accepted events must be on disk before the 202; an outcome lost in a crash only
        // means the event is forwarded again, which the receiver answers 429.
        if !batch
            .iter()
            .any(|op| matches!(op, Op::Accept { .. } | Op::Flush(_)))
        {
            txn.set_durability(redb::Durability::None)
                .map_err(storage)?;
        }
        let mut max_event = 0;
        {
            let mut bodies = txn.open_table(BODIES).map_err(storage)?;
            let mut pending = txn.open_table(PENDING).map_err(storage)?;
            let mut history = txn.open_table(HISTORY).map_err(storage)?;
            for op in batch {
                match op {
                    Op::Accept {
                        event,
                        body,
                        forwards,
                        reply,
                    } => {
                        max_event = max_event.max(event);
                        bodies.insert(event, body.as_ref()).map_err(storage)?;
                        sizes.added.insert(event, body.len() as u64);
                        for f in &forwards {
                            let bytes = serde_json::to_vec(f).map_err(storage)?;
                            pending
                                .insert((event, f.target.as_str()), bytes.as_slice())
                                .map_err(storage)?;
                        }
                        accepted.push((reply, forwards));
                    }
                    Op::Done {
                        event,
                        target,
                        mut outcome,
                    } => {
                        pending.remove((event, target.as_str())).map_err(storage)?;
                        let others = pending
                            .range((event, "")..=(event, "\u{10ffff}"))
                            .map_err(storage)?
                            .next()
                            .is_some();
                        if !others && bodies.remove(event).map_err(storage)?.is_some() {
                            sizes.removed.push(event);
                        }
                        outcome.id = self.next_id;
                        self.next_id += 1;
                        let bytes = serde_json::to_vec(&outcome).map_err(storage)?;
                        history
                            .insert(outcome.id, bytes.as_slice())
                            .map_err(storage)?;
                    }
                    Op::Retry(f) => {
                        let key = (f.event, f.target.as_str());
                        if pending.get(key).map_err(storage)?.is_some() {
                            let bytes = serde_json::to_vec(&f).map_err(storage)?;
                            pending.insert(key, bytes.as_slice()).map_err(storage)?;
                        }
                    }
                    Op::Flush(reply) => flushes.push(reply),
                }
            }
            let len = history.len().map_err(storage)?;
            if len > HISTORY_CAP {
                let drop: Vec<u64> = history
                    .iter()
                    .map_err(storage)?
                    .take((len - HISTORY_CAP) as usize)
                    .filter_map(|e| e.ok().map(|(k, _)| k.value()))
                    .collect();
                for id in drop {
                    history.remove(id).map_err(storage)?;
                }
            }
            let mut meta = txn.open_table(META).map_err(storage)?;
            if max_event > 0 {
                let stored = meta.get("event").map_err(storage)?.map(|v| v.value());
                if stored.is_none_or(|s| s < max_event) {
                    meta.insert("event", max_event).map_err(storage)?;
                }
            }
            meta.insert("history", self.next_id.saturating_sub(1))
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }
}

struct Shared {
    forwarder: Forwarder,
    client: reqwest::Client,
    limits: HashMap<String, Arc<Semaphore>>,
    settings: Settings,
}

type QueueKey = (String, String);

async fn run(
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Msg>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    // Per (receiver, object): the forwards in order; only the head is scheduled or running.
    let mut queues: HashMap<QueueKey, VecDeque<Forward>> = HashMap::new();
    let mut due: BTreeSet<(i64, QueueKey)> = BTreeSet::new();
    let mut running: HashSet<QueueKey> = HashSet::new();
    let mut tasks = JoinSet::new();
    let depth = |queues: &HashMap<QueueKey, VecDeque<Forward>>| {
        let m = &shared.settings.metrics;
        m.forward_queue_depth
            .set(queues.values().map(|q| q.len() as i64).sum());
        m.forward_pending_bytes
            .set(shared.forwarder.pending_bytes() as i64);
    };
    loop {
        let next = due.first().map(|(at, _)| *at);
        let sleep = next.map_or(Duration::from_secs(3600), |at| {
            Duration::from_millis((at - now_ms()).max(0) as u64)
        });
        tokio::select! {
            () = shutdown.cancelled() => break,
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                match msg {
                    Msg::Accepted(forwards) => {
                        for f in forwards {
                            let key = f.queue();
                            let at = f.not_before_ms;
                            let queue = queues.entry(key.clone()).or_default();
                            queue.push_back(f);
                            if queue.len() == 1 && !running.contains(&key) {
                                due.insert((at, key));
                            }
                        }
                    }
                    Msg::Ended { forward, at } => {
                        let key = forward.queue();
                        running.remove(&key);
                        let Some(queue) = queues.get_mut(&key) else { continue };
                        match at {
                            Some(at) => {
                                if let Some(head) = queue.front_mut() {
                                    *head = *forward;
                                }
                                due.insert((at, key));
                            }
                            None => {
                                queue.pop_front();
                                match queue.front() {
                                    Some(next) => {
                                        due.insert((next.not_before_ms, key));
                                    }
                                    None => {
                                        queues.remove(&key);
                                    }
                                }
                            }
                        }
                    }
                }
                depth(&queues);
            }
            () = tokio::time::sleep(sleep), if next.is_some() => {
                let now = now_ms();
                while let Some((at, key)) = due.first().cloned() {
                    if at > now {
                        break;
                    }
                    due.remove(&(at, key.clone()));
                    let Some(head) = queues.get(&key).and_then(|q| q.front()).cloned() else {
                        continue;
                    };
                    running.insert(key);
                    let (shared, tx) = (shared.clone(), tx.clone());
                    tasks.spawn(async move {
                        let mut forward = head;
                        let at = attempt(&shared, &mut forward).await;
                        let _ = tx.send(Msg::Ended { forward: Box::new(forward), at });
                    });
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!(
            abandoned = tasks.len(),
            "forwards still running after the grace period were abandoned; they stay queued"
        );
        tasks.abort_all();
    }
    shared.forwarder.flush().await;
}

/// One attempt; returns when to try again, or `None` once the forward is finished.
async fn attempt(shared: &Shared, f: &mut Forward) -> Option<i64> {
    let settings = &shared.settings;
    let max_age = settings.max_age.as_millis() as i64;
    let metrics = &settings.metrics;
    if now_ms() - f.accepted_ms > max_age {
        let message = format!(
            "not forwarded within {:?} (last error: {})",
            settings.max_age,
            f.last_error.as_deref().unwrap_or("none")
        );
        tracing::error!(receiver = %f.target, object = %f.object, event = f.event, attempts = f.attempts, error = %message, "event not forwarded: expired");
        shared
            .forwarder
            .done(metrics, f, ForwardVerdict::Expired, None, Some(message));
        return None;
    }
    let Some(target) = settings.targets.iter().find(|t| t.id == f.target) else {
        shared.forwarder.done(
            metrics,
            f,
            ForwardVerdict::Skipped,
            None,
            Some("the receiver is no longer in --forward-events-to".into()),
        );
        return None;
    };
    let _permit = shared.limits.get(&f.target)?.acquire().await.ok()?;
    let forwarder = shared.forwarder.clone();
    let event = f.event;
    let body = match tokio::task::spawn_blocking(move || forwarder.body(event)).await {
        Ok(Ok(Some(body))) => body,
        Ok(Ok(None)) => {
            shared.forwarder.done(
                metrics,
                f,
                ForwardVerdict::Failed,
                None,
                Some("the event's body is missing from the store".into()),
            );
            return None;
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read a forwarded event from the store");
            return Some(now_ms() + backoff(settings, f.attempts).as_millis() as i64);
        }
        Err(_) => return Some(now_ms() + settings.min_retry_delay.as_millis() as i64),
    };

    f.attempts += 1;
    let mut req = shared.client.post(target.url.clone()).body(body);
    if let Some(ct) = &f.content_type {
        let raw: Vec<u8> = ct.chars().map(|c| c as u8).collect();
        if let Ok(v) = reqwest::header::HeaderValue::from_bytes(&raw) {
            req = req.header(reqwest::header::CONTENT_TYPE, v);
        }
    }
    if let Some((user, password)) = &target.auth {
        req = req.basic_auth(user, password.as_deref());
    }
    let result = req.send().await;
    let (status, answer) = match result {
        Ok(r) => {
            let status = r.status().as_u16();
            let text = if (200..300).contains(&status) {
                String::new()
            } else {
                answer_text(r).await
            };
            (Some(status), text)
        }
        Err(e) => (None, notify::error_chain(&e.without_url())),
    };
    metrics
        .forward_attempts
        .get_or_create(&crate::metrics::ForwardAttemptLabels {
            target: f.target.clone(),
            status_class: crate::metrics::status_class(status),
        })
        .inc();
    let time = rfc3339(now_ms());
    let describe = |status: Option<u16>, answer: &str| match (status, answer.is_empty()) {
        (Some(s), true) => format!("HTTP {s}"),
        (Some(s), false) => format!("HTTP {s}: {answer}"),
        (None, _) => answer.to_string(),
    };
    let finish = |f: &mut Forward, result: &str, verdict, message: Option<String>| {
        f.attempt_log.push(Attempt {
            time: time.clone(),
            result: result.into(),
            http_status: status,
            message: message.clone(),
        });
        trim(&mut f.attempt_log);
        shared.forwarder.done(metrics, f, verdict, status, message);
        None
    };
    match status {
        Some(200..=299) => {
            tracing::debug!(receiver = %f.target, object = %f.object, event = f.event, attempts = f.attempts, http_status = status, "event forwarded");
            finish(f, "forwarded", ForwardVerdict::Forwarded, None)
        }
        Some(429) => {
            tracing::debug!(receiver = %f.target, object = %f.object, event = f.event, attempts = f.attempts, "receiver already has the event (429)");
            finish(
                f,
                "already received",
                ForwardVerdict::AlreadyReceived,
                Some(describe(status, &answer)),
            )
        }
        Some(s) if s < 500 => {
            let message = describe(status, &answer);
            tracing::error!(receiver = %f.target, object = %f.object, event = f.event, attempts = f.attempts, http_status = s, error = %message, "event not forwarded: the receiver refused it");
            finish(f, "failed", ForwardVerdict::Failed, Some(message))
        }
        _ => {
            let message = describe(status, &answer);
            let wait = backoff(settings, f.attempts);
            let at = now_ms() + wait.as_millis() as i64;
            if at - f.accepted_ms > max_age {
                tracing::error!(receiver = %f.target, object = %f.object, event = f.event, attempts = f.attempts, error = %message, "event not forwarded: expired");
                return finish(f, "failed", ForwardVerdict::Expired, Some(message));
            }
            tracing::warn!(receiver = %f.target, object = %f.object, event = f.event, attempts = f.attempts, http_status = status, retry_in = ?wait, error = %message, "event not forwarded yet, will retry");
            f.attempt_log.push(Attempt {
                time: time.clone(),
                result: "retrying".into(),
                http_status: status,
                message: Some(message.clone()),
            });
            trim(&mut f.attempt_log);
            f.last_error = Some(message);
            f.not_before_ms = at;
            let _ = shared
                .forwarder
                .inner
                .writer
                .send(Op::Retry(Box::new(f.clone())));
            Some(at)
        }
    }
}

fn trim(log: &mut Vec<Attempt>) {
    if log.len() > ATTEMPT_LOG_CAP {
        log.drain(..log.len() - ATTEMPT_LOG_CAP);
    }
}

fn backoff(settings: &Settings, attempts: u32) -> Duration {
    crate::delivery::backoff_delay(settings.min_retry_delay, settings.max_retry_delay, attempts)
}

/// The start of a refusing receiver's answer, as one line of text.
async fn answer_text(mut r: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < ANSWER_CAP {
        match r.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            _ => break,
        }
    }
    buf.truncate(ANSWER_CAP);
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_hide_their_userinfo() {
        let t = Target::parse("https://user:s3cr%2Bt@nc.example:9090/hook").unwrap();
        assert_eq!(t.id, "https://nc.example:9090/hook");
        assert_eq!(format!("{t:?}"), "https://nc.example:9090/hook");
        assert_eq!(
            t.auth,
            Some(("user".to_string(), Some("s3cr+t".to_string())))
        );
        let e = Target::parse("ftp://user:s3cret@x/").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        let e = Target::parse("http//user:s3cret@x/").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        let e = parse_targets(&["http://a:1@x/".into(), "http://b:2@x/".into()]).unwrap_err();
        assert!(e.contains("given twice") && !e.contains(":1@"), "{e}");
    }
}
