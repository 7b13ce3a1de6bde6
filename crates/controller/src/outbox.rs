//! The durable outbox: every accepted delivery is committed to redb before the event API
//! answers 202, together with the "last posted" memory and a bounded history of outcomes.
//!
//! One writer thread owns all writes and group-commits whatever has queued up since its last
//! commit, so durability costs one fsync per batch, not per event. Pending deliveries are keyed
//! by (provider UID, commit, status name): a newer desired state replaces a queued older one,
//! and a finished attempt only removes the record it was started from, so an older state can
//! never be posted after a newer one, across restarts included.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// Pending deliveries: status key → [`Pending`] (JSON).
const PENDING: TableDefinition<&str, &[u8]> = TableDefinition::new("pending");
/// What was last posted per status key: the plan's fingerprint.
const POSTED: TableDefinition<&str, &str> = TableDefinition::new("posted");
/// Outcomes in the order they happened: id → [`Outcome`] (JSON).
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
/// Per-provider index of the history, to bound it per provider.
const HISTORY_BY_PROVIDER: TableDefinition<(&str, u64), ()> =
    TableDefinition::new("history_by_provider");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Index: delivery (its sequence number) → the id of the outcome that ended it, so a delivery
/// page reads one entry instead of the whole history.
const HISTORY_BY_DELIVERY: TableDefinition<u64, u64> = TableDefinition::new("history_by_delivery");
/// Index: sequence number of a pending delivery → its status key.
const PENDING_BY_SEQ: TableDefinition<u64, &str> = TableDefinition::new("pending_by_seq");

/// Outcomes kept per provider; older ones are dropped.
pub const HISTORY_PER_PROVIDER: usize = 500;
/// Outcomes kept in all; bounds the store when there are many providers.
const HISTORY_TOTAL: u64 = 100_000;
/// "Last posted" fingerprints kept; each costs ~250 bytes on disk.
const POSTED_CAP: u64 = 200_000;
/// Writes applied in one transaction at most; bounds a commit's latency under load.
const MAX_BATCH: usize = 4096;
/// redb's page cache; the store is small and mostly written, so a few MiB suffice.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `provider UID`, commit and status name, joined by a separator no field can contain.
pub fn status_key(provider_uid: &str, sha: &str, status_id: &str) -> String {
    format!("{provider_uid}\u{1f}{sha}\u{1f}{status_id}")
}

/// Where [`Outbox::final_posted`] is remembered: a key of the posted table no status key can
/// be (their fields never contain the separator).
fn final_marker(key: &str) -> String {
    format!("{key}\u{1f}final")
}

/// A delivery to make: what is needed to plan it again at send time. It holds no secret:
/// credentials are looked up in the current configuration when the attempt starts, so a
/// rotated token is picked up by the next retry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Pending {
    pub seq: u64,
    pub accepted_ms: i64,
    pub not_before_ms: i64,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// `namespace/name` of the Provider and its UID.
    pub provider: String,
    pub provider_uid: String,
    pub alert: String,
    pub object: String,
    pub repository: String,
    pub forge: String,
    pub sha: String,
    pub status_id: String,
    pub state: String,
    pub description: String,
    /// The event as the forge planned it.
    pub kind: String,
    pub name: String,
    pub reason: String,
    pub severity: String,
    pub metadata: BTreeMap<String, String>,
    /// The full event message, which the forge's description cannot hold.
    #[serde(default)]
    pub message: String,
    /// From the Provider's target-URL template, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
    /// From the Provider's description template, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description_override: Option<String>,
    /// Attempts that did not settle the delivery, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempt_log: Vec<Attempt>,
}

/// Attempts kept per delivery for its time line; older ones are dropped.
const ATTEMPT_LOG_CAP: usize = 50;

/// One attempt at the forge, for the delivery's time line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    pub time: String,
    /// `posted`, `already set`, `retrying` or `failed`.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Pending {
    /// What the forge plans the status from.
    pub fn status_event(&self) -> notify::StatusEvent<'_> {
        notify::StatusEvent {
            target_url: self.target_url.as_deref(),
            description: self.description_override.as_deref(),
            status_id: &self.status_id,
            kind: &self.kind,
            name: &self.name,
            reason: &self.reason,
            severity: &self.severity,
            metadata: &self.metadata,
            status_id_from_expr: false,
        }
    }

    pub fn key(&self) -> String {
        status_key(&self.provider_uid, &self.sha, &self.status_id)
    }
}

/// How a delivery ended.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Posted,
    AlreadySet,
    Skipped,
    Failed,
    Expired,
}

/// One entry of the delivery history.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    pub id: u64,
    pub time: String,
    pub outcome: Verdict,
    pub provider: String,
    pub alert: String,
    pub object: String,
    pub repository: String,
    pub forge: String,
    pub commit: String,
    pub status: String,
    pub state: String,
    pub description: String,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub event_message: String,
    pub accepted: String,
    /// The delivery this outcome ends (its sequence number when accepted).
    #[serde(default)]
    pub delivery: u64,
    /// Every attempt at the forge, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<Attempt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the delivery store {path}: {source}")]
    Open {
        path: String,
        source: redb::DatabaseError,
    },
    #[error("delivery store: {0}")]
    Storage(String),
    #[error("the delivery store is shut down")]
    Closed,
}

fn storage<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// How a finished attempt changes the store.
#[derive(Debug)]
pub enum Finish {
    /// Done for good: drop the pending record (if it is still this one), remember what was
    /// posted (if anything), record the outcome.
    Done {
        key: String,
        seq: u64,
        fingerprint: Option<String>,
        /// The fingerprint is of a final (success/failure) state: later in-progress states of
        /// the same key are not posted (issue 11).
        final_state: bool,
        outcome: Box<Outcome>,
    },
    /// Try again later (if the record is still this one).
    Retry {
        key: String,
        seq: u64,
        attempts: u32,
        not_before_ms: i64,
        error: String,
        attempt: Attempt,
    },
}

enum Op {
    Accept(Vec<Pending>, oneshot::Sender<Result<(), StoreError>>),
    Finish(Finish),
    Flush(oneshot::Sender<()>),
    /// Keep a read's validator (issue 12): provider UID and the validator.
    Validate(String, notify::Validator),
}

/// Answers once accepted deliveries are durable.
pub type Committed = oneshot::Receiver<Result<(), StoreError>>;

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    db: Arc<Database>,
    tx: mpsc::UnboundedSender<Op>,
    pending: Arc<AtomicUsize>,
    /// Next sequence number, shared by deliveries and outcomes; persisted by the writer.
    seq: Arc<AtomicU64>,
    /// "Last posted" fingerprints handed to the writer and not committed yet, so that the next
    /// attempt for the same status (an event and a state change that agree) sees them.
    unwritten: Unwritten,
}

type Unwritten = Arc<std::sync::Mutex<HashMap<String, String>>>;

/// What a finish adds to the posted table: the fingerprint, and the final-state marker.
fn overlay(finish: &Finish) -> Vec<(String, String)> {
    match finish {
        Finish::Done {
            key,
            fingerprint: Some(f),
            final_state,
            ..
        } => {
            let mut entries = vec![(key.clone(), f.clone())];
            if *final_state {
                entries.push((final_marker(key), String::new()));
            }
            entries
        }
        _ => Vec::new(),
    }
}
/// Fingerprints the overlay holds at most (only while the store cannot commit).
const UNWRITTEN_CAP: usize = 10_000;

impl Outbox {
    /// Opens (or creates) the store in `dir`, or an in-memory one without a directory.
    pub fn open(dir: Option<&Path>) -> Result<(Outbox, Vec<Pending>), StoreError> {
        let mut builder = Database::builder();
        builder.set_cache_size(CACHE_BYTES);
        let db = match dir {
            Some(dir) => {
                let path = dir.join("deliveries.redb");
                builder.create(&path).map_err(|source| StoreError::Open {
                    path: path.display().to_string(),
                    source,
                })?
            }
            None => builder
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .map_err(|source| StoreError::Open {
                    path: "(memory)".into(),
                    source,
                })?,
        };
        let db = Arc::new(db);
        let (pending, counts, next_id) = init(&db)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let gauge = Arc::new(AtomicUsize::new(pending.len()));
        let seq = Arc::new(AtomicU64::new(next_id));
        let unwritten = Unwritten::default();
        let writer = Writer {
            db: db.clone(),
            seq: seq.clone(),
            counts,
            pending: gauge.clone(),
            unwritten: unwritten.clone(),
        };
        std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(storage)?;
        Ok((
            Outbox {
                db,
                tx,
                pending: gauge,
                seq,
                unwritten,
            },
            pending,
        ))
    }

    /// Numbers the deliveries and hands them to the writer. The returned receiver answers
    /// once they are durable; the records may be acted on before that (delivery does not
    /// need to wait for the fsync: only the 202 does).
    pub fn accept(
        &self,
        mut records: Vec<Pending>,
    ) -> Result<(Vec<Pending>, Committed), StoreError> {
        for r in &mut records {
            r.seq = self.seq.fetch_add(1, Ordering::Relaxed);
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Accept(records.clone(), reply))
            .map_err(|_| StoreError::Closed)?;
        Ok((records, rx))
    }

    pub fn finish(&self, finish: Finish) {
        let entries = overlay(&finish);
        if !entries.is_empty() {
            let mut unwritten = self.unwritten.lock().unwrap_or_else(|p| p.into_inner());
            if unwritten.len() >= UNWRITTEN_CAP {
                unwritten.clear();
            }
            unwritten.extend(entries);
        }
        let _ = self.tx.send(Op::Finish(finish));
    }

    /// Waits until everything sent so far is committed.
    pub async fn flush(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Op::Flush(reply)).is_ok() {
            let _ = rx.await;
        }
    }

    /// When the oldest unfinished delivery was accepted (ms since the epoch).
    pub fn oldest_pending_ms(&self) -> Result<Option<i64>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(PENDING).map_err(storage)?;
        let mut oldest: Option<i64> = None;
        for entry in table.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            #[derive(Deserialize)]
            struct Accepted {
                accepted_ms: i64,
            }
            if let Ok(a) = serde_json::from_slice::<Accepted>(v.value()) {
                oldest = Some(oldest.map_or(a.accepted_ms, |o| o.min(a.accepted_ms)));
            }
        }
        Ok(oldest)
    }

    /// The database, for other tables kept beside the deliveries (forwarded events).
    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    /// Deliveries accepted and not yet finished.
    pub fn pending_len(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// The validator kept for a read of `url` on behalf of `provider_uid` (issue 12).
    pub fn validator(
        &self,
        provider_uid: &str,
        url: &str,
    ) -> Result<Option<notify::Validator>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn
            .open_table(crate::validators::VALIDATORS)
            .map_err(storage)?;
        let key = crate::validators::key(provider_uid, url);
        Ok(table
            .get(key.as_str())
            .map_err(storage)?
            .and_then(|v| crate::validators::decode(v.value())))
    }

    /// Keeps a read's validator for the next conditional read (not durable on its own: losing
    /// one costs an unconditional read).
    pub fn keep_validator(&self, provider_uid: &str, validator: notify::Validator) {
        let _ = self
            .tx
            .send(Op::Validate(provider_uid.to_owned(), validator));
    }

    /// Whether a final (success/failure) state was ever posted under this status key. Kept
    /// next to the fingerprints, so it shares their bound.
    pub fn final_posted(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.posted(&final_marker(key))?.is_some())
    }

    pub fn posted(&self, key: &str) -> Result<Option<String>, StoreError> {
        if let Some(f) = self
            .unwritten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return Ok(Some(f.clone()));
        }
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(POSTED).map_err(storage)?;
        Ok(table
            .get(key)
            .map_err(storage)?
            .map(|v| v.value().to_string()))
    }

    /// What became of one delivery: its outcome, or the pending record while it is queued.
    /// Two index look-ups, whatever the size of the history.
    pub fn delivery(&self, id: u64) -> Result<(Option<Outcome>, Option<Pending>), StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let by_delivery = txn.open_table(HISTORY_BY_DELIVERY).map_err(storage)?;
        if let Some(outcome_id) = by_delivery.get(id).map_err(storage)? {
            let history = txn.open_table(HISTORY).map_err(storage)?;
            if let Some(v) = history.get(outcome_id.value()).map_err(storage)?
                && let Ok(o) = serde_json::from_slice::<Outcome>(v.value())
                && o.delivery == id
            {
                return Ok((Some(o), None));
            }
        }
        let by_seq = txn.open_table(PENDING_BY_SEQ).map_err(storage)?;
        if let Some(key) = by_seq.get(id).map_err(storage)? {
            let pending = txn.open_table(PENDING).map_err(storage)?;
            if let Some(v) = pending.get(key.value()).map_err(storage)?
                && let Ok(p) = serde_json::from_slice::<Pending>(v.value())
                && p.seq == id
            {
                return Ok((None, Some(p)));
            }
        }
        Ok((None, None))
    }

    /// The deliveries before and after `id` among the statuses of the same (provider, object,
    /// status name), in history order, with still-pending deliveries after every outcome (they
    /// have not ended yet). Outcomes recorded before deliveries had ids cannot be linked.
    pub fn neighbours(&self, id: u64) -> Result<(Option<u64>, Option<u64>), StoreError> {
        let (outcome, pending) = self.delivery(id)?;
        let (provider, object, status) = match (&outcome, &pending) {
            (Some(o), _) => (&o.provider, &o.object, &o.status),
            (None, Some(p)) => (&p.provider, &p.object, &p.status_id),
            (None, None) => return Ok((None, None)),
        };
        // Only what is compared is decoded: a provider has up to HISTORY_PER_PROVIDER outcomes.
        #[derive(Deserialize)]
        struct Same {
            object: String,
            status: String,
            #[serde(default)]
            delivery: u64,
        }
        let txn = self.db.begin_read().map_err(storage)?;
        let index = txn.open_table(HISTORY_BY_PROVIDER).map_err(storage)?;
        let history = txn.open_table(HISTORY).map_err(storage)?;
        let mut order = Vec::new();
        for entry in index
            .range((provider.as_str(), 0)..=(provider.as_str(), u64::MAX))
            .map_err(storage)?
        {
            let (k, _) = entry.map_err(storage)?;
            let Some(v) = history.get(k.value().1).map_err(storage)? else {
                continue;
            };
            if let Ok(s) = serde_json::from_slice::<Same>(v.value())
                && s.delivery != 0
                && &s.object == object
                && &s.status == status
            {
                order.push(s.delivery);
            }
        }
        #[derive(Deserialize)]
        struct Queued {
            seq: u64,
            provider: String,
            object: String,
            status_id: String,
        }
        let table = txn.open_table(PENDING).map_err(storage)?;
        let mut queued = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            if let Ok(p) = serde_json::from_slice::<Queued>(v.value())
                && &p.provider == provider
                && &p.object == object
                && &p.status_id == status
            {
                queued.push(p.seq);
            }
        }
        queued.sort_unstable();
        order.extend(queued);
        let Some(at) = order.iter().rposition(|d| *d == id) else {
            return Ok((None, None));
        };
        Ok((
            at.checked_sub(1).map(|i| order[i]),
            order.get(at + 1).copied(),
        ))
    }

    /// The newest outcomes first, filtered by `filter` and then by `keep`; `filter.limit`
    /// bounds what is returned, not what is read.
    pub fn history_where(
        &self,
        filter: &HistoryFilter,
        keep: impl Fn(&Outcome) -> bool,
    ) -> Result<Vec<Outcome>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(HISTORY).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(storage)?.rev() {
            let (_, v) = entry.map_err(storage)?;
            if let Ok(o) = serde_json::from_slice::<Outcome>(v.value())
                && filter.matches(&o.provider, &o.repository, &o.commit)
                && keep(&o)
            {
                out.push(o);
                if out.len() >= filter.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The newest outcomes first, filtered.
    pub fn history(&self, filter: &HistoryFilter) -> Result<Vec<Outcome>, StoreError> {
        read_db(&*self.db, filter).map(|(history, _)| history)
    }

    /// Pending deliveries, oldest first, filtered like the history.
    pub fn pending(&self, filter: &HistoryFilter) -> Result<Vec<Pending>, StoreError> {
        read_db(&*self.db, filter).map(|(_, mut pending)| {
            pending.truncate(filter.limit);
            pending
        })
    }
}

/// Reads the history from a store file, for the `deliveries` subcommand.
pub fn read_file(
    dir: &Path,
    filter: &HistoryFilter,
) -> Result<(Vec<Outcome>, Vec<Pending>), StoreError> {
    read_db(&*open_file(dir)?, filter)
}

/// Opens a store file for reading while the controller is stopped.
pub fn open_file(dir: &Path) -> Result<Box<dyn ReadableDatabase>, StoreError> {
    let path = dir.join("deliveries.redb");
    let open_error = |source| StoreError::Open {
        path: path.display().to_string(),
        source,
    };
    match redb::ReadOnlyDatabase::open(&path) {
        Ok(db) => Ok(Box::new(db)),
        // After an unclean stop the file needs a repair, which only a writer may do; the
        // controller is not running (it would hold the lock), so open it for writing.
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            Err(open_error(redb::DatabaseError::DatabaseAlreadyOpen))
        }
        Err(_) => Ok(Box::new(Database::open(&path).map_err(open_error)?)),
    }
}

fn read_db(
    db: &(impl ReadableDatabase + ?Sized),
    filter: &HistoryFilter,
) -> Result<(Vec<Outcome>, Vec<Pending>), StoreError> {
    let txn = db.begin_read().map_err(storage)?;
    let history = match txn.open_table(HISTORY) {
        Ok(t) => match (&filter.provider, txn.open_table(HISTORY_BY_PROVIDER)) {
            (Some(provider), Ok(index)) => read_provider_history(&t, &index, provider, filter)?,
            _ => read_history(&t, filter)?,
        },
        Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
        Err(e) => return Err(storage(e)),
    };
    let mut pending = Vec::new();
    if let Ok(t) = txn.open_table(PENDING) {
        for entry in t.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            if let Ok(p) = serde_json::from_slice::<Pending>(v.value())
                && filter.matches(&p.provider, &p.repository, &p.sha)
            {
                pending.push(p);
            }
        }
    }
    pending.sort_by_key(|p| p.seq);
    Ok((history, pending))
}

/// Adds `bytes` to `out` if it is an outcome `filter` lists; `true` once `out` is full.
fn keep_outcome(out: &mut Vec<Outcome>, bytes: &[u8], filter: &HistoryFilter) -> bool {
    if let Ok(o) = serde_json::from_slice::<Outcome>(bytes)
        && filter.matches(&o.provider, &o.repository, &o.commit)
    {
        out.push(o);
    }
    out.len() >= filter.limit
}

fn read_history(
    table: &impl ReadableTable<u64, &'static [u8]>,
    filter: &HistoryFilter,
) -> Result<Vec<Outcome>, StoreError> {
    let mut out = Vec::new();
    for entry in table.iter().map_err(storage)?.rev() {
        let (_, v) = entry.map_err(storage)?;
        if keep_outcome(&mut out, v.value(), filter) {
            break;
        }
    }
    Ok(out)
}

/// [`read_history`] for one provider, through its index: at most [`HISTORY_PER_PROVIDER`]
/// entries are read.
fn read_provider_history(
    table: &impl ReadableTable<u64, &'static [u8]>,
    index: &impl ReadableTable<(&'static str, u64), ()>,
    provider: &str,
    filter: &HistoryFilter,
) -> Result<Vec<Outcome>, StoreError> {
    let mut out = Vec::new();
    for entry in index
        .range((provider, 0)..=(provider, u64::MAX))
        .map_err(storage)?
        .rev()
    {
        let (k, _) = entry.map_err(storage)?;
        if let Some(v) = table.get(k.value().1).map_err(storage)?
            && keep_outcome(&mut out, v.value(), filter)
        {
            break;
        }
    }
    Ok(out)
}

/// Which outcomes to list.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct HistoryFilter {
    /// `namespace/name` of a Provider.
    pub provider: Option<String>,
    /// Repository address, or a part of it.
    pub repository: Option<String>,
    /// Commit SHA, or a prefix of it.
    pub commit: Option<String>,
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_limit() -> usize {
    100
}

impl HistoryFilter {
    fn matches(&self, provider: &str, repository: &str, commit: &str) -> bool {
        self.provider.as_deref().is_none_or(|p| p == provider)
            && self
                .repository
                .as_deref()
                .is_none_or(|r| repository.contains(r))
            && self.commit.as_deref().is_none_or(|c| commit.starts_with(c))
    }
}

type Init = (Vec<Pending>, HashMap<String, u64>, u64);

fn init(db: &Database) -> Result<Init, StoreError> {
    let txn = db.begin_write().map_err(storage)?;
    let mut pending = Vec::new();
    let mut counts: HashMap<String, u64> = HashMap::new();
    let next_id;
    {
        let table = txn.open_table(PENDING).map_err(storage)?;
        for entry in table.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            match serde_json::from_slice::<Pending>(v.value()) {
                Ok(p) => pending.push(p),
                Err(e) => tracing::error!(error = %e, "unreadable pending delivery skipped"),
            }
        }
        txn.open_table(POSTED).map_err(storage)?;
        txn.open_table(crate::validators::VALIDATORS)
            .map_err(storage)?;
        txn.open_table(HISTORY).map_err(storage)?;
        let index = txn.open_table(HISTORY_BY_PROVIDER).map_err(storage)?;
        for entry in index.iter().map_err(storage)? {
            let (k, _) = entry.map_err(storage)?;
            *counts.entry(k.value().0.to_string()).or_default() += 1;
        }
        // Stores written before the indexes existed get them once.
        let mut by_seq = txn.open_table(PENDING_BY_SEQ).map_err(storage)?;
        if by_seq.is_empty().map_err(storage)? {
            for p in &pending {
                by_seq.insert(p.seq, p.key().as_str()).map_err(storage)?;
            }
        }
        let mut by_delivery = txn.open_table(HISTORY_BY_DELIVERY).map_err(storage)?;
        if by_delivery.is_empty().map_err(storage)? {
            let history = txn.open_table(HISTORY).map_err(storage)?;
            for entry in history.iter().map_err(storage)? {
                let (k, v) = entry.map_err(storage)?;
                let delivery = delivery_of(v.value());
                if delivery != 0 {
                    by_delivery.insert(delivery, k.value()).map_err(storage)?;
                }
            }
        }
        let meta = txn.open_table(META).map_err(storage)?;
        next_id = meta
            .get("seq")
            .map_err(storage)?
            .map(|v| v.value())
            .unwrap_or(0)
            + 1;
    }
    txn.commit().map_err(storage)?;
    pending.sort_by_key(|p| p.seq);
    Ok((pending, counts, next_id))
}

struct Writer {
    db: Arc<Database>,
    seq: Arc<AtomicU64>,
    counts: HashMap<String, u64>,
    pending: Arc<AtomicUsize>,
    unwritten: Unwritten,
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
            let written: Vec<(String, String)> = batch
                .iter()
                .flat_map(|op| match op {
                    Op::Finish(f) => overlay(f),
                    _ => Vec::new(),
                })
                .collect();
            let result = self.apply(batch, &mut accepted, &mut flushes);
            match result {
                Ok(()) => {
                    let mut unwritten = self.unwritten.lock().unwrap_or_else(|p| p.into_inner());
                    for (key, f) in written {
                        // A newer fingerprint for the key stays until its own batch commits.
                        if unwritten.get(&key) == Some(&f) {
                            unwritten.remove(&key);
                        }
                    }
                    drop(unwritten);
                    for reply in accepted {
                        let _ = reply.send(Ok(()));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "delivery store write failed");
                    for reply in accepted {
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
        accepted: &mut Vec<oneshot::Sender<Result<(), StoreError>>>,
        flushes: &mut Vec<oneshot::Sender<()>>,
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(storage)?;
        // Only accepted deliveries must be on disk before anyone is told so. Outcomes alone
        // may be lost in a crash: the delivery is then attempted again and the forge's own
        // state makes that a no-op, so those batches skip the fsync.
        let durable = batch
            .iter()
            .any(|op| matches!(op, Op::Accept(..) | Op::Flush(_)));
        if !durable {
            txn.set_durability(redb::Durability::None)
                .map_err(storage)?;
        }
        {
            let mut pending = txn.open_table(PENDING).map_err(storage)?;
            let mut posted = txn.open_table(POSTED).map_err(storage)?;
            let mut history = txn.open_table(HISTORY).map_err(storage)?;
            let mut index = txn.open_table(HISTORY_BY_PROVIDER).map_err(storage)?;
            let mut by_delivery = txn.open_table(HISTORY_BY_DELIVERY).map_err(storage)?;
            let mut by_seq = txn.open_table(PENDING_BY_SEQ).map_err(storage)?;
            for op in batch {
                match op {
                    Op::Accept(records, reply) => {
                        for r in &records {
                            let bytes = serde_json::to_vec(r).map_err(storage)?;
                            let key = r.key();
                            let replaced = pending
                                .insert(key.as_str(), bytes.as_slice())
                                .map_err(storage)?
                                .map(|old| seq_of(old.value()));
                            match replaced {
                                None => {
                                    self.pending.fetch_add(1, Ordering::Relaxed);
                                }
                                Some(old) => {
                                    by_seq.remove(old).map_err(storage)?;
                                }
                            }
                            by_seq.insert(r.seq, key.as_str()).map_err(storage)?;
                        }
                        accepted.push(reply);
                    }
                    Op::Finish(Finish::Done {
                        key,
                        seq,
                        fingerprint,
                        final_state,
                        mut outcome,
                    }) => {
                        let current = pending
                            .get(key.as_str())
                            .map_err(storage)?
                            .map(|v| seq_of(v.value()));
                        if current == Some(seq) {
                            pending.remove(key.as_str()).map_err(storage)?;
                            by_seq.remove(seq).map_err(storage)?;
                            self.pending.fetch_sub(1, Ordering::Relaxed);
                        }
                        if let Some(f) = fingerprint {
                            posted.insert(key.as_str(), f.as_str()).map_err(storage)?;
                            if final_state {
                                posted
                                    .insert(final_marker(&key).as_str(), "")
                                    .map_err(storage)?;
                            }
                        }
                        outcome.id = self.seq.fetch_add(1, Ordering::Relaxed);
                        let bytes = serde_json::to_vec(&outcome).map_err(storage)?;
                        history
                            .insert(outcome.id, bytes.as_slice())
                            .map_err(storage)?;
                        index
                            .insert((outcome.provider.as_str(), outcome.id), ())
                            .map_err(storage)?;
                        if outcome.delivery != 0 {
                            by_delivery
                                .insert(outcome.delivery, outcome.id)
                                .map_err(storage)?;
                        }
                        let count = self.counts.entry(outcome.provider.clone()).or_default();
                        *count += 1;
                        if *count > HISTORY_PER_PROVIDER as u64 {
                            let oldest = index
                                .range(
                                    (outcome.provider.as_str(), 0)
                                        ..(outcome.provider.as_str(), u64::MAX),
                                )
                                .map_err(storage)?
                                .next()
                                .transpose()
                                .map_err(storage)?
                                .map(|(k, _)| k.value().1);
                            if let Some(id) = oldest {
                                index
                                    .remove((outcome.provider.as_str(), id))
                                    .map_err(storage)?;
                                if let Some(old) = history.remove(id).map_err(storage)? {
                                    unindex(&mut by_delivery, old.value(), id)?;
                                }
                                *count -= 1;
                            }
                        }
                    }
                    Op::Finish(Finish::Retry {
                        key,
                        seq,
                        attempts,
                        not_before_ms,
                        error,
                        attempt,
                    }) => {
                        let current = pending
                            .get(key.as_str())
                            .map_err(storage)?
                            .and_then(|v| serde_json::from_slice::<Pending>(v.value()).ok());
                        if let Some(mut p) = current.filter(|p| p.seq == seq) {
                            p.attempts = attempts;
                            p.not_before_ms = not_before_ms;
                            p.last_error = Some(error);
                            p.attempt_log.push(attempt);
                            if p.attempt_log.len() > ATTEMPT_LOG_CAP {
                                p.attempt_log.remove(0);
                            }
                            let bytes = serde_json::to_vec(&p).map_err(storage)?;
                            pending
                                .insert(key.as_str(), bytes.as_slice())
                                .map_err(storage)?;
                        }
                    }
                    Op::Flush(reply) => flushes.push(reply),
                    Op::Validate(provider_uid, v) => {
                        crate::validators::keep(&txn, &provider_uid, &v).map_err(storage)?;
                    }
                }
            }
            if history.len().map_err(storage)? > HISTORY_TOTAL {
                let drop: Vec<(u64, String)> = history
                    .iter()
                    .map_err(storage)?
                    .take(1024)
                    .filter_map(|e| e.ok())
                    .map(|(k, v)| {
                        let provider = serde_json::from_slice::<Outcome>(v.value())
                            .map(|o| o.provider)
                            .unwrap_or_default();
                        (k.value(), provider)
                    })
                    .collect();
                for (id, provider) in drop {
                    if let Some(old) = history.remove(id).map_err(storage)? {
                        unindex(&mut by_delivery, old.value(), id)?;
                    }
                    index.remove((provider.as_str(), id)).map_err(storage)?;
                    if let Some(c) = self.counts.get_mut(&provider) {
                        *c = c.saturating_sub(1);
                    }
                }
            }
            if posted.len().map_err(storage)? > POSTED_CAP {
                // Forgetting costs one read on the forge later, never a wrong status.
                let keys: Vec<String> = posted
                    .iter()
                    .map_err(storage)?
                    .take(1024)
                    .filter_map(|e| e.ok())
                    .map(|(k, _)| k.value().to_string())
                    .collect();
                for k in keys {
                    posted.remove(k.as_str()).map_err(storage)?;
                }
            }
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert("seq", self.seq.load(Ordering::Relaxed).saturating_sub(1))
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }
}

/// The delivery an outcome ends (0 for outcomes recorded before deliveries had ids).
fn delivery_of(bytes: &[u8]) -> u64 {
    #[derive(Deserialize)]
    struct Delivery {
        #[serde(default)]
        delivery: u64,
    }
    serde_json::from_slice::<Delivery>(bytes)
        .map(|d| d.delivery)
        .unwrap_or(0)
}

/// Drops the index entry of a removed outcome, unless it already points at a newer one.
fn unindex(
    by_delivery: &mut redb::Table<u64, u64>,
    outcome: &[u8],
    id: u64,
) -> Result<(), StoreError> {
    let delivery = delivery_of(outcome);
    let current = by_delivery
        .get(delivery)
        .map_err(storage)?
        .map(|v| v.value());
    if current == Some(id) {
        by_delivery.remove(delivery).map_err(storage)?;
    }
    Ok(())
}

fn seq_of(bytes: &[u8]) -> u64 {
    #[derive(Deserialize)]
    struct Seq {
        seq: u64,
    }
    serde_json::from_slice::<Seq>(bytes)
        .map(|s| s.seq)
        .unwrap_or(0)
}

/// RFC 3339 in UTC, for outcome times.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(key: &str, fingerprint: &str) -> Finish {
        let outcome: Outcome = serde_json::from_value(serde_json::json!({
            "id": 0, "time": "", "outcome": "posted", "provider": "ns/p", "alert": "ns/a",
            "object": "Kustomization/ns/x", "repository": "", "forge": "github", "commit": "",
            "status": "", "state": "success", "description": "", "attempts": 1, "accepted": "",
        }))
        .unwrap();
        Finish::Done {
            key: key.into(),
            seq: 1,
            fingerprint: Some(fingerprint.into()),
            final_state: true,
            outcome: Box::new(outcome),
        }
    }

    /// The next attempt for a status may start before the writer committed the last one's
    /// outcome: it must still see what was posted, or post it a second time.
    #[test]
    fn a_posted_fingerprint_is_seen_before_it_is_committed() {
        let (outbox, _) = Outbox::open(None).unwrap();
        for (i, f) in ["f1", "f2"].iter().enumerate() {
            outbox.finish(done("k", f));
            assert_eq!(
                outbox.posted("k").unwrap().as_deref(),
                Some(*f),
                "round {i}"
            );
            assert!(outbox.final_posted("k").unwrap());
        }
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(outbox.flush());
        assert_eq!(outbox.posted("k").unwrap().as_deref(), Some("f2"));
        assert!(outbox.final_posted("k").unwrap());
        assert!(
            outbox
                .unwritten
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty(),
            "committed fingerprints leave the overlay"
        );
    }
}
