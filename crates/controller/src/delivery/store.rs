//! The durable outbox: every accepted delivery is committed to redb before the event API
//! answers 202, together with the "last posted" memory and a bounded history of outcomes.
//!
//! One writer thread owns all writes and group-commits whatever has queued up since its last
//! commit, so durability costs one fsync per batch, not per event. Pending deliveries are keyed
//! by (provider UID, commit, status name): a record only replaces a stored one of the same key
//! with a lower sequence number, and a finished attempt only removes the record it was started
//! from, so an older state can never be posted after a newer one, across restarts included.
//!
//! Honest under faults: counters and callers see a batch only once its commit succeeded (a
//! failed commit changes nothing, and its callers get the error). After an I/O error redb must
//! be closed and re-opened: the writer does so itself, with backoff, answering "unavailable"
//! meanwhile, and probes until a write succeeds again ([`Outbox::writable`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Deserialize;
use tokio::sync::oneshot;

mod forwards;

pub use crate::delivery::record::{
    Attempt, Entry, Outcome, Pending, Verdict, now_ms, rfc3339, status_key,
};
pub use forwards::{
    Forward, ForwardCounts, ForwardEntry, ForwardFilter, ForwardLog, ForwardOutcome,
    ForwardVerdict, PendingForward,
};

/// Where [`Outbox::final_posted`] is remembered: a key of the posted table no status key can
/// be (their fields never contain the separator).
fn final_marker(key: &str) -> String {
    format!("{key}\u{1f}final")
}

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
/// First wait after a failed write before the next try; doubled up to [`MAX_HEAL_WAIT`].
const MIN_HEAL_WAIT: Duration = Duration::from_millis(100);
/// Longest wait between two tries of a store that cannot write: how soon it is back after the
/// disk has room again.
const MAX_HEAL_WAIT: Duration = Duration::from_secs(5);
/// How long a re-open waits for readers to let go of the broken database.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Everything that can go wrong in the store. Cheap to clone: one failed commit answers every
/// caller of its batch.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the delivery store {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Arc<redb::DatabaseError>,
    },
    #[error("delivery store: {0}")]
    Redb(#[source] Arc<redb::Error>),
    /// Anything else, in words (the forwarded events' tables, issue 13).
    #[error("delivery store: {0}")]
    Storage(String),
    #[error("delivery store: cannot encode a record: {0}")]
    Encode(#[source] Arc<serde_json::Error>),
    #[error("the delivery store is recovering from an earlier error and cannot write yet")]
    Unavailable,
    #[error("the delivery store is shut down")]
    Closed,
}

impl StoreError {
    /// A short, fixed name for metric labels and logs.
    pub fn name(&self) -> &'static str {
        match self {
            StoreError::Open { .. } => "open",
            StoreError::Storage(_) => "storage",
            StoreError::Redb(e) => match **e {
                redb::Error::Io(_) | redb::Error::PreviousIo => "io",
                redb::Error::Corrupted(_) => "corrupted",
                redb::Error::ValueTooLarge(_) => "value_too_large",
                _ => "storage",
            },
            StoreError::Encode(_) => "encode",
            StoreError::Unavailable => "unavailable",
            StoreError::Closed => "closed",
        }
    }

    /// Whether the same write may succeed later (the store heals, the disk gets room).
    pub fn retry(&self) -> bool {
        !matches!(self, StoreError::Encode(_) | StoreError::Closed)
            && !matches!(self, StoreError::Redb(e) if matches!(**e, redb::Error::ValueTooLarge(_)))
    }

    /// redb asks to be closed and re-opened after an I/O error.
    fn needs_reopen(&self) -> bool {
        matches!(self, StoreError::Redb(e) if matches!(**e, redb::Error::Io(_) | redb::Error::PreviousIo))
    }
}

fn storage<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Redb(Arc::new(e.into()))
}

fn encode(e: serde_json::Error) -> StoreError {
    StoreError::Encode(Arc::new(e))
}

/// How a finished attempt changes the store.
#[derive(Clone, Debug)]
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

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Op {
    Accept(Vec<Pending>, Reply<Vec<Entry>>),
    Finish(Finish, Reply<()>),
    Flush(oneshot::Sender<()>),
    /// Keep a read's validator (issue 12): provider UID and the validator.
    Validate(String, notify::Validator),
    /// A write to the forwarded events' tables (`--forward-events-to`).
    Forward(forwards::ForwardOp, Reply<Vec<ForwardEntry>>),
}

/// Called with every store error, for the error counter.
pub type OnError = Arc<dyn Fn(&StoreError) + Send + Sync>;

/// How the writer gets its database: at start, and again after an I/O error.
type Opener = Box<dyn Fn() -> Result<Database, StoreError> + Send>;

/// Pending deliveries, in all and per Provider, as of the last successful commit.
#[derive(Debug, Default)]
struct PendingCounts {
    total: usize,
    by_provider: HashMap<String, usize>,
}

impl PendingCounts {
    fn add(&mut self, provider: &str, delta: isize) {
        self.total = self.total.saturating_add_signed(delta);
        let n = self.by_provider.entry(provider.to_string()).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.by_provider.remove(provider);
        }
    }
}

/// What the handles and the writer share.
struct State {
    /// `None` while the writer re-opens the database after an I/O error.
    db: RwLock<Option<Arc<Database>>>,
    /// Next sequence number, shared by deliveries and outcomes; persisted by the writer.
    seq: AtomicU64,
    pending: Mutex<PendingCounts>,
    /// Whether the last write succeeded.
    writable: AtomicBool,
    /// Transactions committed so far.
    commits: AtomicU64,
    /// Next forwarded event id; persisted by the writer.
    forward_event: AtomicU64,
    /// What is stored for forwarding, as of the last successful commit.
    forwards: Mutex<forwards::Counts>,
    /// Re-opens so far: a commit that failed at the disk may still be found on it then.
    reopened: tokio::sync::watch::Sender<u64>,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    state: Arc<State>,
    tx: mpsc::Sender<Op>,
}

impl Outbox {
    /// Opens (or creates) the store in `dir`, or an in-memory one without a directory. Returns
    /// what the scheduler needs of every delivery still pending, oldest first.
    pub fn open(dir: Option<&Path>, on_error: OnError) -> Result<(Outbox, Vec<Entry>), StoreError> {
        match dir.map(|d| d.join("deliveries.redb")) {
            Some(path) => Self::open_with(Box::new(move || create(Some(&path))), true, on_error),
            // Memory cannot be re-opened (and does not fail like a disk).
            None => Self::open_with(Box::new(|| create(None)), false, on_error),
        }
    }

    /// Opens the store with `opener`, which the writer calls again after an I/O error if
    /// `reopenable`.
    fn open_with(
        opener: Opener,
        reopenable: bool,
        on_error: OnError,
    ) -> Result<(Outbox, Vec<Entry>), StoreError> {
        let db = Arc::new(opener()?);
        let loaded = init(&db)?;
        let (tx, rx) = mpsc::channel();
        let state = Arc::new(State {
            db: RwLock::new(Some(db.clone())),
            seq: AtomicU64::new(loaded.next_id),
            pending: Mutex::new(loaded.pending),
            writable: AtomicBool::new(true),
            commits: AtomicU64::new(0),
            forward_event: AtomicU64::new(loaded.forwards.next_event),
            forwards: Mutex::new(loaded.forwards.counts),
            reopened: tokio::sync::watch::Sender::new(0),
        });
        let writer = Writer {
            state: state.clone(),
            opener,
            reopenable,
            db: Some(db),
            history: loaded.history,
            forward_history: loaded.forwards.last_history,
            on_error,
        };
        std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| storage(redb::Error::Io(e)))?;
        Ok((Outbox { state, tx }, loaded.entries))
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.state
            .db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StoreError::Unavailable)
    }

    /// A sequence number for a delivery about to be routed: its status may link to its page
    /// (`--public-url`), so it is numbered before it is planned. Numbers never stored leave
    /// gaps, as outcomes' ids do.
    pub fn reserve_seq(&self) -> u64 {
        self.state.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Numbers the deliveries not numbered yet ([`Outbox::reserve_seq`]), bounds their records
    /// and stores them. Answers, once they are durable, with what the scheduler needs of those
    /// stored: a record superseded by a newer one of the same key (already stored) is left out.
    pub async fn accept(&self, records: Vec<Pending>) -> Result<Vec<Entry>, StoreError> {
        let records = records
            .into_iter()
            .map(|mut r| {
                if r.seq == 0 {
                    r.seq = self.reserve_seq();
                }
                r.bound();
                r
            })
            .collect();
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Accept(records, reply))
            .map_err(|_| StoreError::Closed)?;
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Records how an attempt ended; answers once that is committed.
    pub async fn finish(&self, finish: Finish) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Finish(finish, reply))
            .map_err(|_| StoreError::Closed)?;
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Waits until everything sent so far is committed (or failed).
    pub async fn flush(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Op::Flush(reply)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Changes at every re-open after an I/O error. A commit whose error came from the disk
    /// may have reached it all the same (its callers were told it failed); what the store
    /// holds is then worth reading again.
    pub fn reopened(&self) -> tokio::sync::watch::Receiver<u64> {
        self.state.reopened.subscribe()
    }

    /// Whether the store can write: false from a failed write until one succeeds again.
    pub fn writable(&self) -> bool {
        self.state.writable.load(Ordering::Acquire)
    }

    /// The full record of a pending delivery and what was last posted for its key.
    pub fn load(&self, key: &str) -> Result<(Option<Pending>, Option<String>), StoreError> {
        let txn = self.db()?.begin_read().map_err(storage)?;
        let pending = txn.open_table(PENDING).map_err(storage)?;
        let record = match pending.get(key).map_err(storage)? {
            Some(v) => Some(serde_json::from_slice::<Pending>(v.value()).map_err(encode)?),
            None => None,
        };
        let posted = txn.open_table(POSTED).map_err(storage)?;
        let fingerprint = posted
            .get(key)
            .map_err(storage)?
            .map(|v| v.value().to_string());
        Ok((record, fingerprint))
    }

    /// When the oldest unfinished delivery was accepted (ms since the epoch).
    pub fn oldest_pending_ms(&self) -> Result<Option<i64>, StoreError> {
        let txn = self.db()?.begin_read().map_err(storage)?;
        let table = txn.open_table(PENDING).map_err(storage)?;
        let mut oldest: Option<i64> = None;
        for entry in table.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            if let Ok(a) = serde_json::from_slice::<Scheduling>(v.value()) {
                oldest = Some(oldest.map_or(a.accepted_ms, |o| o.min(a.accepted_ms)));
            }
        }
        Ok(oldest)
    }

    /// Deliveries accepted and not yet finished.
    pub fn pending_len(&self) -> usize {
        self.state
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .total
    }

    /// Deliveries of one Provider (`namespace/name`) accepted and not yet finished.
    pub fn pending_for(&self, provider: &str) -> usize {
        self.state
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_provider
            .get(provider)
            .copied()
            .unwrap_or(0)
    }

    /// The validator kept for a read of `url` on behalf of `provider_uid` (issue 12).
    pub fn validator(
        &self,
        provider_uid: &str,
        url: &str,
    ) -> Result<Option<notify::Validator>, StoreError> {
        let txn = self.db()?.begin_read().map_err(storage)?;
        let table = txn
            .open_table(crate::delivery::validators::VALIDATORS)
            .map_err(storage)?;
        let key = crate::delivery::validators::key(provider_uid, url);
        Ok(table
            .get(key.as_str())
            .map_err(storage)?
            .and_then(|v| crate::delivery::validators::decode(v.value())))
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
        let txn = self.db()?.begin_read().map_err(storage)?;
        let table = txn.open_table(POSTED).map_err(storage)?;
        Ok(table
            .get(key)
            .map_err(storage)?
            .map(|v| v.value().to_string()))
    }

    /// What became of one delivery: its outcome, or the pending record while it is queued.
    /// Two index look-ups, whatever the size of the history.
    pub fn delivery(&self, id: u64) -> Result<(Option<Outcome>, Option<Pending>), StoreError> {
        let txn = self.db()?.begin_read().map_err(storage)?;
        let by_delivery = txn.open_table(HISTORY_BY_DELIVERY).map_err(storage)?;
        if let Some(outcome_id) = by_delivery.get(id).map_err(storage)? {
            let history = txn.open_table(HISTORY).map_err(storage)?;
            if let Some(v) = history.get(outcome_id.value()).map_err(storage)?
                && let Ok(o) = serde_json::from_slice::<Outcome>(v.value())
                && o.seq == id
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
            (Some(o), _) => (
                &o.delivery.provider,
                &o.delivery.object,
                &o.delivery.status_id,
            ),
            (None, Some(p)) => (
                &p.delivery.provider,
                &p.delivery.object,
                &p.delivery.status_id,
            ),
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
        let txn = self.db()?.begin_read().map_err(storage)?;
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
        let txn = self.db()?.begin_read().map_err(storage)?;
        let table = txn.open_table(HISTORY).map_err(storage)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(storage)?.rev() {
            let (_, v) = entry.map_err(storage)?;
            if let Ok(o) = serde_json::from_slice::<Outcome>(v.value())
                && filter.matches(
                    &o.delivery.provider,
                    &o.delivery.repository,
                    &o.delivery.sha,
                )
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
        read_db(&*self.db()?, filter).map(|(history, _)| history)
    }

    /// Pending deliveries, oldest first, filtered like the history.
    pub fn pending(&self, filter: &HistoryFilter) -> Result<Vec<Pending>, StoreError> {
        read_db(&*self.db()?, filter).map(|(_, mut pending)| {
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
        source: Arc::new(source),
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
                && filter.matches(
                    &p.delivery.provider,
                    &p.delivery.repository,
                    &p.delivery.sha,
                )
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
        && filter.matches(
            &o.delivery.provider,
            &o.delivery.repository,
            &o.delivery.sha,
        )
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

/// Opens the database file (or an in-memory one).
fn create(path: Option<&Path>) -> Result<Database, StoreError> {
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    let (result, shown) = match path {
        Some(path) => (builder.create(path), path.display().to_string()),
        None => (
            builder.create_with_backend(redb::backends::InMemoryBackend::new()),
            "(memory)".to_string(),
        ),
    };
    result.map_err(|source| StoreError::Open {
        path: shown,
        source: Arc::new(source),
    })
}

/// The fields of a stored [`Pending`] the scheduler needs; the rest (the message above all) is
/// skipped without being kept.
#[derive(Deserialize)]
struct Scheduling {
    seq: u64,
    accepted_ms: i64,
    not_before_ms: i64,
    provider: String,
}

/// What a store holds, as the handles and the writer need it.
struct Loaded {
    entries: Vec<Entry>,
    pending: PendingCounts,
    /// Outcomes per provider in the history.
    history: HashMap<String, u64>,
    next_id: u64,
    forwards: forwards::Loaded,
}

fn init(db: &Database) -> Result<Loaded, StoreError> {
    let txn = db.begin_write().map_err(storage)?;
    let mut entries = Vec::new();
    let mut pending = PendingCounts::default();
    let mut history: HashMap<String, u64> = HashMap::new();
    let (next_id, forwards_loaded);
    {
        let table = txn.open_table(PENDING).map_err(storage)?;
        for entry in table.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            match serde_json::from_slice::<Scheduling>(v.value()) {
                Ok(s) => {
                    pending.add(&s.provider, 1);
                    entries.push(Entry {
                        key: k.value().into(),
                        seq: s.seq,
                        provider: s.provider.into(),
                        accepted_ms: s.accepted_ms,
                        not_before_ms: s.not_before_ms,
                    });
                }
                Err(e) => tracing::error!(error = %e, "unreadable pending delivery skipped"),
            }
        }
        txn.open_table(POSTED).map_err(storage)?;
        txn.open_table(crate::delivery::validators::VALIDATORS)
            .map_err(storage)?;
        txn.open_table(HISTORY).map_err(storage)?;
        let index = txn.open_table(HISTORY_BY_PROVIDER).map_err(storage)?;
        for entry in index.iter().map_err(storage)? {
            let (k, _) = entry.map_err(storage)?;
            *history.entry(k.value().0.to_string()).or_default() += 1;
        }
        // Stores written before the indexes existed get them once.
        let mut by_seq = txn.open_table(PENDING_BY_SEQ).map_err(storage)?;
        if by_seq.is_empty().map_err(storage)? {
            for e in &entries {
                by_seq.insert(e.seq, &*e.key).map_err(storage)?;
            }
        }
        let mut by_delivery = txn.open_table(HISTORY_BY_DELIVERY).map_err(storage)?;
        if by_delivery.is_empty().map_err(storage)? {
            let table = txn.open_table(HISTORY).map_err(storage)?;
            for entry in table.iter().map_err(storage)? {
                let (k, v) = entry.map_err(storage)?;
                let delivery = delivery_of(v.value());
                if delivery != 0 {
                    by_delivery.insert(delivery, k.value()).map_err(storage)?;
                }
            }
        }
        let meta = txn.open_table(META).map_err(storage)?;
        forwards_loaded = forwards::init(&txn)?;
        next_id = meta
            .get("seq")
            .map_err(storage)?
            .map(|v| v.value())
            .unwrap_or(0)
            + 1;
    }
    txn.commit().map_err(storage)?;
    entries.sort_by_key(|e| e.seq);
    Ok(Loaded {
        entries,
        pending,
        history,
        next_id,
        forwards: forwards_loaded,
    })
}

struct Writer {
    state: Arc<State>,
    opener: Opener,
    /// False for an in-memory store, which a re-open would empty.
    reopenable: bool,
    /// `None` while broken: closed after an I/O error and not re-opened yet.
    db: Option<Arc<Database>>,
    /// Outcomes per provider in the history, as of the last commit.
    history: HashMap<String, u64>,
    /// The last forward outcome's id, as of the last commit.
    forward_history: u64,
    on_error: OnError,
}

/// What a batch changes outside the database, applied only once its commit succeeded.
#[derive(Default)]
struct Applied {
    accepted: Vec<(Reply<Vec<Entry>>, Vec<Entry>)>,
    finished: Vec<Reply<()>>,
    flushes: Vec<oneshot::Sender<()>>,
    pending: HashMap<String, isize>,
    history: HashMap<String, i64>,
    forwarded: Vec<(Reply<Vec<ForwardEntry>>, Vec<ForwardEntry>)>,
    forwards: forwards::Changes,
}

impl Applied {
    fn history_count(&self, writer: &HashMap<String, u64>, provider: &str) -> u64 {
        let base = writer.get(provider).copied().unwrap_or(0) as i64;
        (base + self.history.get(provider).copied().unwrap_or(0)).max(0) as u64
    }
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Op>) {
        let mut wait = MIN_HEAL_WAIT;
        loop {
            if self.db.is_none() {
                if let Err(e) = self.reopen() {
                    self.failed(&e);
                    if !refuse_for(&rx, wait) {
                        return;
                    }
                    wait = (wait * 2).min(MAX_HEAL_WAIT);
                    continue;
                }
                tracing::info!("delivery store re-opened");
            }
            let first = if self.state.writable.load(Ordering::Acquire) {
                match rx.recv() {
                    Ok(op) => Some(op),
                    Err(_) => return,
                }
            } else {
                // Not writable: a write is tried at least every `wait`, with or without work,
                // so that the store (and `/readyz`) recover once the disk has room again.
                match rx.recv_timeout(wait) {
                    Ok(op) => Some(op),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            };
            let mut batch: Vec<Op> = first.into_iter().collect();
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            match self.commit(batch) {
                Ok(()) => wait = MIN_HEAL_WAIT,
                Err(e) => {
                    if e.needs_reopen() {
                        self.close();
                    }
                    if !refuse_for(&rx, wait) {
                        return;
                    }
                    wait = (wait * 2).min(MAX_HEAL_WAIT);
                }
            }
        }
    }

    fn failed(&self, e: &StoreError) {
        tracing::error!(error = %e, kind = e.name(), "delivery store write failed");
        (self.on_error)(e);
    }

    /// Applies a batch in one transaction; its callers hear of it only now, and only if the
    /// commit succeeded do the counters change. An empty batch is a probe: it writes too.
    /// Writability and the error counter are updated before anyone is answered.
    fn commit(&mut self, batch: Vec<Op>) -> Result<(), StoreError> {
        let mut applied = Applied::default();
        let Some(db) = self.db.clone() else {
            self.state.writable.store(false, Ordering::Release);
            self.failed(&StoreError::Unavailable);
            answer(batch, &StoreError::Unavailable);
            return Err(StoreError::Unavailable);
        };
        let durable = batch.is_empty()
            || batch.iter().any(|op| match op {
                Op::Accept(..) | Op::Flush(_) => true,
                Op::Forward(op, _) => op.durable(),
                Op::Finish(..) | Op::Validate(..) => false,
            });
        let result = self
            .write(&db, batch, durable, &mut applied)
            .and_then(|txn| txn.commit().map_err(storage));
        match result {
            Ok(()) => {
                // Before anyone hears of the commit, so that what they see next agrees.
                if !self.state.writable.swap(true, Ordering::AcqRel) {
                    tracing::info!("delivery store writes again");
                }
                self.state.commits.fetch_add(1, Ordering::Relaxed);
                let mut counts = self.state.pending.lock().unwrap_or_else(|p| p.into_inner());
                for (provider, delta) in &applied.pending {
                    counts.add(provider, *delta);
                }
                drop(counts);
                for (provider, delta) in applied.history {
                    let n = self.history.entry(provider).or_default();
                    *n = (*n as i64 + delta).max(0) as u64;
                }
                self.state
                    .forwards
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .apply(&applied.forwards);
                if let Some(id) = applied.forwards.last_history() {
                    self.forward_history = id;
                }
                for (reply, entries) in applied.forwarded {
                    let _ = reply.send(Ok(entries));
                }
                for (reply, entries) in applied.accepted {
                    let _ = reply.send(Ok(entries));
                }
                for reply in applied.finished {
                    let _ = reply.send(Ok(()));
                }
                for f in applied.flushes {
                    let _ = f.send(());
                }
                Ok(())
            }
            Err(e) => {
                self.state.writable.store(false, Ordering::Release);
                self.failed(&e);
                for (reply, _) in applied.accepted {
                    let _ = reply.send(Err(e.clone()));
                }
                for reply in applied.finished {
                    let _ = reply.send(Err(e.clone()));
                }
                for (reply, _) in applied.forwarded {
                    let _ = reply.send(Err(e.clone()));
                }
                for f in applied.flushes {
                    let _ = f.send(());
                }
                Err(e)
            }
        }
    }

    /// Writes the batch into a transaction, collecting its replies and counter changes in
    /// `applied`; the caller commits. On an error the replies collected so far are in
    /// `applied`, and the rest of the batch is answered here.
    fn write(
        &mut self,
        db: &Database,
        batch: Vec<Op>,
        durable: bool,
        applied: &mut Applied,
    ) -> Result<redb::WriteTransaction, StoreError> {
        let mut ops = batch.into_iter();
        let result = self.write_ops(db, &mut ops, durable, applied);
        if let Err(e) = &result {
            answer(ops.collect(), e);
        }
        result
    }

    fn write_ops(
        &mut self,
        db: &Database,
        ops: &mut std::vec::IntoIter<Op>,
        durable: bool,
        applied: &mut Applied,
    ) -> Result<redb::WriteTransaction, StoreError> {
        let mut txn = db.begin_write().map_err(storage)?;
        // Only accepted deliveries must be on disk before anyone is told so. Outcomes alone
        // may be lost in a crash: the delivery is then attempted again and the forge's own
        // state makes that a no-op, so those batches skip the fsync.
        if !durable {
            txn.set_durability(redb::Durability::None)
                .map_err(storage)?;
        }
        {
            let mut tables = Tables {
                pending: txn.open_table(PENDING).map_err(storage)?,
                posted: txn.open_table(POSTED).map_err(storage)?,
                history: txn.open_table(HISTORY).map_err(storage)?,
                index: txn.open_table(HISTORY_BY_PROVIDER).map_err(storage)?,
                by_delivery: txn.open_table(HISTORY_BY_DELIVERY).map_err(storage)?,
                by_seq: txn.open_table(PENDING_BY_SEQ).map_err(storage)?,
            };
            // Opened at the first forward of the batch: without forwarding they stay unread.
            let mut forward_tables: Option<forwards::Tables<'_>> = None;
            for op in ops.by_ref() {
                match op {
                    Op::Accept(records, reply) => {
                        // The reply goes in first, so that an error below answers it.
                        applied.accepted.push((reply, Vec::new()));
                        let stored = tables.accept(records, applied)?;
                        if let Some((_, entries)) = applied.accepted.last_mut() {
                            *entries = stored;
                        }
                    }
                    Op::Finish(finish, reply) => {
                        applied.finished.push(reply);
                        match finish {
                            Finish::Done {
                                key,
                                seq,
                                fingerprint,
                                final_state,
                                outcome,
                            } => {
                                let id = self.state.seq.fetch_add(1, Ordering::Relaxed);
                                let provider = outcome.delivery.provider.clone();
                                if final_state && fingerprint.is_some() {
                                    tables
                                        .posted
                                        .insert(final_marker(&key).as_str(), "")
                                        .map_err(storage)?;
                                }
                                tables.done(&key, seq, fingerprint, *outcome, id, applied)?;
                                self.trim_provider(&mut tables, provider, applied)?;
                            }
                            Finish::Retry {
                                key,
                                seq,
                                attempts,
                                not_before_ms,
                                error,
                                attempt,
                            } => {
                                tables.retry(&key, seq, attempts, not_before_ms, error, attempt)?;
                            }
                        }
                    }
                    Op::Flush(reply) => applied.flushes.push(reply),
                    Op::Forward(op, reply) => {
                        applied.forwarded.push((reply, Vec::new()));
                        if forward_tables.is_none() {
                            forward_tables =
                                Some(forwards::Tables::open(&txn, self.forward_history)?);
                        }
                        if let Some(t) = forward_tables.as_mut() {
                            let stored = t.apply(op, &mut applied.forwards)?;
                            if let Some((_, entries)) = applied.forwarded.last_mut() {
                                *entries = stored;
                            }
                        }
                    }
                    Op::Validate(provider_uid, v) => {
                        crate::delivery::validators::keep(&txn, &provider_uid, &v)
                            .map_err(storage)?;
                    }
                }
            }
            if let Some(t) = forward_tables {
                t.close(&applied.forwards)?;
            }
            self.trim(&mut tables, applied)?;
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(
                "seq",
                self.state.seq.load(Ordering::Relaxed).saturating_sub(1),
            )
            .map_err(storage)?;
        }
        Ok(txn)
    }

    /// Keeps at most [`HISTORY_PER_PROVIDER`] outcomes of the provider last written.
    fn trim_provider(
        &self,
        t: &mut Tables<'_>,
        provider: String,
        applied: &mut Applied,
    ) -> Result<(), StoreError> {
        if applied.history_count(&self.history, &provider) <= HISTORY_PER_PROVIDER as u64 {
            return Ok(());
        }
        let oldest = t
            .index
            .range((provider.as_str(), 0)..(provider.as_str(), u64::MAX))
            .map_err(storage)?
            .next()
            .transpose()
            .map_err(storage)?
            .map(|(k, _)| k.value().1);
        if let Some(id) = oldest {
            t.index.remove((provider.as_str(), id)).map_err(storage)?;
            if let Some(old) = t.history.remove(id).map_err(storage)? {
                unindex(&mut t.by_delivery, old.value(), id)?;
            }
            *applied.history.entry(provider).or_default() -= 1;
        }
        Ok(())
    }

    /// Bounds the whole history and the "last posted" memory.
    fn trim(&self, t: &mut Tables<'_>, applied: &mut Applied) -> Result<(), StoreError> {
        if t.history.len().map_err(storage)? > HISTORY_TOTAL {
            let drop: Vec<(u64, String)> = t
                .history
                .iter()
                .map_err(storage)?
                .take(1024)
                .filter_map(|e| e.ok())
                .map(|(k, v)| {
                    let provider = serde_json::from_slice::<Outcome>(v.value())
                        .map(|o| o.delivery.provider)
                        .unwrap_or_default();
                    (k.value(), provider)
                })
                .collect();
            for (id, provider) in drop {
                if let Some(old) = t.history.remove(id).map_err(storage)? {
                    unindex(&mut t.by_delivery, old.value(), id)?;
                }
                t.index.remove((provider.as_str(), id)).map_err(storage)?;
                *applied.history.entry(provider).or_default() -= 1;
            }
        }
        if t.posted.len().map_err(storage)? > POSTED_CAP {
            // Forgetting costs one read on the forge later, never a wrong status.
            let keys: Vec<String> = t
                .posted
                .iter()
                .map_err(storage)?
                .take(1024)
                .filter_map(|e| e.ok())
                .map(|(k, _)| k.value().to_string())
                .collect();
            for k in keys {
                t.posted.remove(k.as_str()).map_err(storage)?;
            }
        }
        Ok(())
    }

    /// Closes the database after an I/O error, as redb requires; the next loop re-opens it.
    fn close(&mut self) {
        if !self.reopenable {
            return;
        }
        let Some(db) = self.db.take() else { return };
        *self.state.db.write().unwrap_or_else(|p| p.into_inner()) = None;
        // Readers hold the database only for one read; wait for them to let go, so that the
        // file lock is free for the re-open.
        let deadline = Instant::now() + CLOSE_WAIT;
        while Arc::strong_count(&db) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(db);
        tracing::warn!("delivery store closed after an I/O error; re-opening");
    }

    /// Re-opens the database file and re-reads the counters from it.
    fn reopen(&mut self) -> Result<(), StoreError> {
        let db = Arc::new((self.opener)()?);
        let loaded = init(&db)?;
        self.state.seq.fetch_max(loaded.next_id, Ordering::Relaxed);
        *self.state.pending.lock().unwrap_or_else(|p| p.into_inner()) = loaded.pending;
        self.history = loaded.history;
        self.forward_history = loaded.forwards.last_history;
        self.state
            .forward_event
            .fetch_max(loaded.forwards.next_event, Ordering::Relaxed);
        *self
            .state
            .forwards
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = loaded.forwards.counts;
        *self.state.db.write().unwrap_or_else(|p| p.into_inner()) = Some(db.clone());
        self.db = Some(db);
        self.state.reopened.send_modify(|n| *n += 1);
        Ok(())
    }
}

/// Answers every operation with `error` (flushes are simply released).
fn answer(ops: Vec<Op>, error: &StoreError) {
    for op in ops {
        match op {
            Op::Accept(_, reply) => {
                let _ = reply.send(Err(error.clone()));
            }
            Op::Finish(_, reply) => {
                let _ = reply.send(Err(error.clone()));
            }
            Op::Flush(reply) => {
                let _ = reply.send(());
            }
            Op::Forward(_, reply) => {
                let _ = reply.send(Err(error.clone()));
            }
            // Losing a validator costs an unconditional read later.
            Op::Validate(..) => {}
        }
    }
}

/// Answers everything that arrives within `wait` with [`StoreError::Unavailable`]: while the
/// store heals, callers get a quick "no" (the event API a 503) instead of waiting. False once
/// every handle is gone.
fn refuse_for(rx: &mpsc::Receiver<Op>, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        match rx.recv_timeout(left) {
            Ok(op) => answer(vec![op], &StoreError::Unavailable),
            Err(mpsc::RecvTimeoutError::Timeout) => return true,
            Err(mpsc::RecvTimeoutError::Disconnected) => return false,
        }
    }
}

/// The tables one write transaction changes.
struct Tables<'txn> {
    pending: redb::Table<'txn, &'static str, &'static [u8]>,
    posted: redb::Table<'txn, &'static str, &'static str>,
    history: redb::Table<'txn, u64, &'static [u8]>,
    index: redb::Table<'txn, (&'static str, u64), ()>,
    by_delivery: redb::Table<'txn, u64, u64>,
    by_seq: redb::Table<'txn, u64, &'static str>,
}

impl Tables<'_> {
    /// Stores the records that are newer than what is stored under their key; returns what the
    /// scheduler needs of those.
    fn accept(
        &mut self,
        records: Vec<Pending>,
        applied: &mut Applied,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut stored = Vec::with_capacity(records.len());
        for r in records {
            let key = r.key();
            let current = self
                .pending
                .get(key.as_str())
                .map_err(storage)?
                .map(|v| seq_of(v.value()));
            match current {
                // A newer state of the same status is stored already (its event was numbered
                // later but committed first): this one is superseded, never stored.
                Some(seq) if seq > r.seq => continue,
                Some(old) => {
                    self.by_seq.remove(old).map_err(storage)?;
                }
                None => {
                    *applied
                        .pending
                        .entry(r.delivery.provider.clone())
                        .or_default() += 1
                }
            }
            let bytes = serde_json::to_vec(&r).map_err(encode)?;
            self.pending
                .insert(key.as_str(), bytes.as_slice())
                .map_err(storage)?;
            self.by_seq.insert(r.seq, key.as_str()).map_err(storage)?;
            stored.push(r.entry());
        }
        Ok(stored)
    }

    fn done(
        &mut self,
        key: &str,
        seq: u64,
        fingerprint: Option<String>,
        mut outcome: Outcome,
        id: u64,
        applied: &mut Applied,
    ) -> Result<(), StoreError> {
        let current = self
            .pending
            .get(key)
            .map_err(storage)?
            .map(|v| seq_of(v.value()));
        if current == Some(seq) {
            self.pending.remove(key).map_err(storage)?;
            self.by_seq.remove(seq).map_err(storage)?;
            *applied
                .pending
                .entry(outcome.delivery.provider.clone())
                .or_default() -= 1;
        }
        if let Some(f) = fingerprint {
            self.posted.insert(key, f.as_str()).map_err(storage)?;
        }
        outcome.id = id;
        let bytes = serde_json::to_vec(&outcome).map_err(encode)?;
        self.history
            .insert(outcome.id, bytes.as_slice())
            .map_err(storage)?;
        self.index
            .insert((outcome.delivery.provider.as_str(), outcome.id), ())
            .map_err(storage)?;
        if outcome.seq != 0 {
            self.by_delivery
                .insert(outcome.seq, outcome.id)
                .map_err(storage)?;
        }
        *applied
            .history
            .entry(outcome.delivery.provider.clone())
            .or_default() += 1;
        Ok(())
    }

    fn retry(
        &mut self,
        key: &str,
        seq: u64,
        attempts: u32,
        not_before_ms: i64,
        error: String,
        attempt: Attempt,
    ) -> Result<(), StoreError> {
        let current = match self.pending.get(key).map_err(storage)? {
            Some(v) => serde_json::from_slice::<Pending>(v.value()).ok(),
            None => None,
        };
        if let Some(mut p) = current.filter(|p| p.seq == seq) {
            p.attempts = attempts;
            p.not_before_ms = not_before_ms;
            p.last_error = Some(error);
            p.log(attempt);
            let bytes = serde_json::to_vec(&p).map_err(encode)?;
            self.pending
                .insert(key, bytes.as_slice())
                .map_err(storage)?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    pub(super) fn quiet() -> OnError {
        Arc::new(|_| {})
    }

    #[test]
    fn errors_answer_retry_and_have_fixed_names() {
        let redb = |e: redb::Error| StoreError::Redb(Arc::new(e));
        let io = || std::io::Error::other("disk full");
        let cases: Vec<(StoreError, bool, &str)> = vec![
            (redb(redb::Error::Io(io())), true, "io"),
            (redb(redb::Error::PreviousIo), true, "io"),
            (redb(redb::Error::Corrupted("x".into())), true, "corrupted"),
            (
                redb(redb::Error::ValueTooLarge(1)),
                false,
                "value_too_large",
            ),
            (redb(redb::Error::DatabaseAlreadyOpen), true, "storage"),
            (StoreError::Storage("x".into()), true, "storage"),
            (
                encode(serde_json::from_str::<u8>("x").unwrap_err()),
                false,
                "encode",
            ),
            (StoreError::Unavailable, true, "unavailable"),
            (StoreError::Closed, false, "closed"),
        ];
        for (error, retry, name) in cases {
            assert_eq!(error.retry(), retry, "{error}");
            assert_eq!(error.name(), name, "{error}");
            assert_eq!(error.needs_reopen(), name == "io", "{error}");
        }
    }

    /// A store in `dir` that is opened again until the previous writer let go of the file.
    pub(super) fn open_dir(dir: &Path) -> (Outbox, Vec<Entry>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Outbox::open(Some(dir), quiet()) {
                Ok(opened) => return opened,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn outcome(p: &Pending) -> Box<Outcome> {
        Box::new(Outcome::test(p, Verdict::Posted))
    }

    /// An attempt of `p` that got a 503: try again at `not_before_ms`.
    fn retry_503(p: &Pending, attempts: u32, not_before_ms: i64) -> Finish {
        Finish::Retry {
            key: p.key(),
            seq: p.seq,
            attempts,
            not_before_ms,
            error: "503".into(),
            attempt: Attempt {
                time: rfc3339(0),
                result: "retrying".into(),
                http_status: Some(503),
                message: None,
            },
        }
    }

    /// Sends an already numbered batch, as `accept` does after numbering.
    fn send_numbered(
        outbox: &Outbox,
        records: Vec<Pending>,
    ) -> oneshot::Receiver<Result<Vec<Entry>, StoreError>> {
        let (reply, rx) = oneshot::channel();
        outbox.tx.send(Op::Accept(records, reply)).unwrap();
        rx
    }

    #[tokio::test]
    async fn accepted_deliveries_survive_a_reopen_with_only_their_scheduling_data() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, initial) = open_dir(dir.path());
        assert!(initial.is_empty());
        let mut big = Pending::test("a", "s");
        big.delivery.message = "x".repeat(100 * 1024);
        let stored = outbox
            .accept(vec![big, Pending::test("b", "s").of("ns/q")])
            .await
            .unwrap();
        assert_eq!(stored.len(), 2);
        assert_eq!(outbox.pending_len(), 2);
        assert_eq!(outbox.pending_for("ns/p"), 1);
        assert_eq!(outbox.pending_for("ns/q"), 1);
        let (record, posted) = outbox.load(&stored[0].key).unwrap();
        let record = record.unwrap();
        assert!(
            record.delivery.message_cut
                && record.delivery.message.len() <= crate::delivery::record::MAX_MESSAGE_BYTES
        );
        assert_eq!(posted, None);
        drop(outbox);

        let (outbox, initial) = open_dir(dir.path());
        assert_eq!(initial, stored, "the same entries, oldest first");
        assert_eq!(outbox.pending_len(), 2);
        assert_eq!(outbox.pending_for("ns/q"), 1);
        // Numbering goes on after the restart.
        let next = outbox.accept(vec![Pending::test("c", "s")]).await.unwrap();
        assert!(next[0].seq > stored[1].seq);
    }

    #[tokio::test]
    async fn a_record_only_replaces_a_stored_one_with_a_lower_sequence_number() {
        let (outbox, _) = Outbox::open(None, quiet()).unwrap();
        let newer = Pending {
            seq: 6,
            ..Pending::test("a", "s").in_state("failure")
        };
        let older = Pending {
            seq: 5,
            ..Pending::test("a", "s").in_state("pending")
        };
        // The newer one commits first (it was numbered later but won the race to the writer).
        let first = send_numbered(&outbox, vec![newer]).await.unwrap().unwrap();
        let second = send_numbered(&outbox, vec![older]).await.unwrap().unwrap();
        assert_eq!(first.len(), 1);
        assert!(
            second.is_empty(),
            "the older state is superseded, not stored"
        );
        let (stored, _) = outbox.load(&first[0].key).unwrap();
        assert_eq!(stored.unwrap().delivery.state, "failure");
        assert_eq!(outbox.pending_len(), 1);
        // A finished attempt of the older one would not remove the newer one either.
        let older = Pending {
            seq: 5,
            ..Pending::test("a", "s")
        };
        outbox
            .finish(Finish::Done {
                key: older.key(),
                seq: 5,
                fingerprint: None,
                final_state: true,
                outcome: outcome(&older),
            })
            .await
            .unwrap();
        assert_eq!(outbox.pending_len(), 1);
        assert!(outbox.load(&first[0].key).unwrap().0.is_some());
    }

    /// `n` concurrent writers of one status key (alternately success and failure); what each
    /// got stored.
    async fn same_key_writers(outbox: &Outbox, n: usize) -> Vec<Entry> {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let outbox = outbox.clone();
            tasks.spawn(async move {
                let state = if i % 2 == 0 { "success" } else { "failure" };
                outbox
                    .accept(vec![Pending::test("a", "s").in_state(state)])
                    .await
                    .unwrap()
            });
        }
        let mut stored = Vec::new();
        while let Some(entries) = tasks.join_next().await {
            stored.extend(entries.unwrap());
        }
        stored
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_events_for_one_status_leave_the_newest_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = open_dir(dir.path());
        let stored = same_key_writers(&outbox, 64).await;
        let newest = outbox.state.seq.load(Ordering::Relaxed) - 1;
        assert!(stored.iter().any(|e| e.seq == newest));
        let key = Pending::test("a", "s").key();
        assert_eq!(outbox.load(&key).unwrap().0.unwrap().seq, newest);
        assert_eq!(outbox.pending_len(), 1);
        drop(outbox);
        let (_, initial) = open_dir(dir.path());
        assert_eq!(initial.len(), 1);
        assert_eq!(initial[0].seq, newest);
    }

    #[tokio::test]
    async fn what_queues_up_during_a_commit_is_committed_together() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = open_dir(dir.path());
        let before = outbox.state.commits.load(Ordering::Relaxed);
        let replies: Vec<_> = (0..200)
            .map(|i| {
                let r = Pending {
                    seq: 10 + i,
                    ..Pending::test(&format!("{i:040x}"), "s")
                };
                send_numbered(&outbox, vec![r])
            })
            .collect();
        for reply in replies {
            assert_eq!(reply.await.unwrap().unwrap().len(), 1);
        }
        let commits = outbox.state.commits.load(Ordering::Relaxed) - before;
        assert!(commits < 20, "{commits} commits for 200 deliveries");
        assert_eq!(outbox.pending_len(), 200);
    }

    #[tokio::test]
    async fn history_and_last_posted_are_recorded_when_a_delivery_ends() {
        let (outbox, _) = Outbox::open(None, quiet()).unwrap();
        let entries = outbox.accept(vec![Pending::test("a", "s")]).await.unwrap();
        let (record, _) = outbox.load(&entries[0].key).unwrap();
        let record = record.unwrap();
        outbox.finish(retry_503(&record, 1, 42)).await.unwrap();
        let (retried, _) = outbox.load(&record.key()).unwrap();
        let retried = retried.unwrap();
        assert_eq!((retried.attempts, retried.not_before_ms), (1, 42));
        assert_eq!(retried.attempt_log.len(), 1);
        outbox
            .finish(Finish::Done {
                key: record.key(),
                seq: record.seq,
                fingerprint: Some("fp".into()),
                final_state: true,
                outcome: outcome(&record),
            })
            .await
            .unwrap();
        assert_eq!(outbox.pending_len(), 0);
        assert_eq!(outbox.pending_for("ns/p"), 0);
        let (gone, posted) = outbox.load(&record.key()).unwrap();
        assert!(gone.is_none());
        assert_eq!(posted.as_deref(), Some("fp"));
        assert!(outbox.final_posted(&record.key()).unwrap());
        let history = outbox.history(&HistoryFilter::default()).unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].seq, record.seq);
        assert_eq!(history[0].delivery.sha, record.delivery.sha);
    }

    /// Memory that fails every write while `full` is set, like a disk without room; shared, so
    /// that a re-open sees what was committed before. What was last synced is kept apart: it is
    /// what a power loss leaves ([`Disk::after_power_loss`]).
    #[derive(Debug, Clone, Default)]
    pub(super) struct Disk {
        bytes: Arc<Mutex<Vec<u8>>>,
        pub(super) full: Arc<AtomicBool>,
        synced: Arc<Mutex<Vec<u8>>>,
        /// Held by a test to stop the writer in its next fsync.
        hold: Arc<Mutex<()>>,
        /// fsyncs begun so far.
        syncs: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Disk {
        /// The disk as a power loss would leave it: what the last fsync made durable.
        fn after_power_loss(&self) -> Disk {
            let synced = self.synced.lock().unwrap().clone();
            Disk {
                bytes: Arc::new(Mutex::new(synced)),
                ..Disk::default()
            }
        }

        fn check(&self) -> std::io::Result<()> {
            if self.full.load(Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            Ok(())
        }
    }

    impl redb::StorageBackend for Disk {
        fn len(&self) -> std::io::Result<u64> {
            Ok(self.bytes.lock().unwrap().len() as u64)
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            let bytes = self.bytes.lock().unwrap();
            let start = offset as usize;
            let src = bytes
                .get(start..start + out.len())
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
            out.copy_from_slice(src);
            Ok(())
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            let mut bytes = self.bytes.lock().unwrap();
            if len as usize > bytes.len() {
                self.check()?;
            }
            bytes.resize(len as usize, 0);
            Ok(())
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.check()?;
            self.syncs.fetch_add(1, Ordering::SeqCst);
            let _held = self.hold.lock().unwrap_or_else(|p| p.into_inner());
            *self.synced.lock().unwrap() = self.bytes.lock().unwrap().clone();
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            let mut bytes = self.bytes.lock().unwrap();
            let end = offset as usize + data.len();
            if end > bytes.len() {
                bytes.resize(end, 0);
            }
            bytes[offset as usize..end].copy_from_slice(data);
            Ok(())
        }
    }

    pub(super) fn on_disk(
        disk: &Disk,
        errors: Arc<Mutex<Vec<&'static str>>>,
    ) -> (Outbox, Vec<Entry>) {
        let backend = disk.clone();
        let opener: Opener = Box::new(move || {
            let mut builder = Database::builder();
            builder.set_cache_size(CACHE_BYTES);
            builder
                .create_with_backend(backend.clone())
                .map_err(|source| StoreError::Open {
                    path: "(test disk)".into(),
                    source: Arc::new(source),
                })
        });
        let on_error: OnError = Arc::new(move |e| errors.lock().unwrap().push(e.name()));
        Outbox::open_with(opener, true, on_error).unwrap()
    }

    pub(super) async fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_failed_commit_changes_nothing_and_the_store_heals_once_writes_work() {
        let disk = Disk::default();
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (outbox, _) = on_disk(&disk, errors.clone());
        let kept = outbox.accept(vec![Pending::test("a", "s")]).await.unwrap();

        disk.full.store(true, Ordering::SeqCst);
        let many: Vec<Pending> = (0..50)
            .map(|i| {
                let mut p = Pending::test(&format!("{i:040x}"), "s");
                p.delivery.message = "x".repeat(8 * 1024);
                p
            })
            .collect();
        let refused = outbox.accept(many.clone()).await;
        assert!(refused.is_err(), "{refused:?}");
        assert!(!outbox.writable());
        assert_eq!(
            outbox.pending_len(),
            1,
            "a failed commit changes no counter"
        );
        assert_eq!(outbox.pending_for("ns/p"), 1);
        assert!(errors.lock().unwrap().contains(&"io"), "{errors:?}");
        // While it heals, callers get a quick answer.
        let started = Instant::now();
        assert!(outbox.accept(vec![Pending::test("b", "s")]).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(5));

        disk.full.store(false, Ordering::SeqCst);
        // Without any traffic, the writer re-opens the database and probes it.
        wait_until("the store writes again", || outbox.writable()).await;
        let stored = outbox.accept(many).await.unwrap();
        assert_eq!(stored.len(), 50);
        assert_eq!(outbox.pending_len(), 51);
        let (record, _) = outbox.load(&kept[0].key).unwrap();
        assert!(
            record.is_some(),
            "what was committed before the fault is still there"
        );
        // Reads work again too.
        assert_eq!(
            outbox
                .pending(&HistoryFilter {
                    limit: 100,
                    ..HistoryFilter::default()
                })
                .unwrap()
                .len(),
            51
        );
    }

    /// Sends one accept for each batch and polls them all once, so that every batch is queued
    /// at the writer before anything else runs; the answers come with the returned future.
    async fn queue_accepts(
        outbox: &Outbox,
        batches: Vec<Vec<Pending>>,
    ) -> impl std::future::Future<Output = Vec<Result<Vec<Entry>, StoreError>>> {
        let mut all = Box::pin(futures::future::join_all(
            batches
                .into_iter()
                .map(|b| outbox.accept(b))
                .collect::<Vec<_>>(),
        ));
        assert!(futures::poll!(&mut all).is_pending());
        all
    }

    // The lock is held across awaits on purpose: it stops the writer thread in an fsync.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn writers_queued_behind_a_commit_share_the_next_one_and_survive_a_power_loss() {
        let disk = Disk::default();
        let (outbox, _) = on_disk(&disk, Arc::default());
        let before = outbox.state.commits.load(Ordering::Relaxed);
        // The first commit is held at its fsync, so that the writers below queue up behind it.
        let hold = disk.hold.lock().unwrap();
        let syncs = disk.syncs.load(Ordering::SeqCst);
        let first = queue_accepts(&outbox, vec![vec![Pending::test("first", "s")]]).await;
        wait_until("the first commit reaches its fsync", || {
            disk.syncs.load(Ordering::SeqCst) > syncs
        })
        .await;
        let batches = (0..50)
            .map(|i| vec![Pending::test(&format!("{i:040x}"), "s").of(&format!("ns/p{}", i % 3))])
            .collect();
        let rest = queue_accepts(&outbox, batches).await;
        drop(hold);
        let mut answered: Vec<Entry> = first.await.into_iter().flat_map(|r| r.unwrap()).collect();
        for r in rest.await {
            assert_eq!(r.as_ref().map(Vec::len).ok(), Some(1), "{r:?}");
            answered.extend(r.unwrap());
        }
        assert_eq!(
            outbox.state.commits.load(Ordering::Relaxed) - before,
            2,
            "the held commit, then one for the 50 writers queued behind it"
        );
        assert_eq!(outbox.pending_len(), 51);
        assert_eq!(outbox.pending_for("ns/p0"), 17);

        // Every answered record was synced before its answer: a power loss keeps them all.
        let (after, loaded) = on_disk(&disk.after_power_loss(), Arc::default());
        answered.sort_by_key(|e| e.seq);
        assert_eq!(loaded, answered, "all of them, oldest first");
        assert_eq!(after.pending_len(), 51);
        assert_eq!(after.pending_for("ns/p2"), 16);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_same_key_writes_leave_the_newest_after_a_power_loss() {
        let disk = Disk::default();
        let (outbox, _) = on_disk(&disk, Arc::default());
        let stored = same_key_writers(&outbox, 64).await;
        let newest = stored.iter().map(|e| e.seq).max().unwrap();
        let (after, loaded) = on_disk(&disk.after_power_loss(), Arc::default());
        assert_eq!(loaded.len(), 1, "{loaded:?}");
        assert_eq!(loaded[0].seq, newest);
        assert_eq!(after.pending_len(), 1);
    }

    #[tokio::test]
    async fn an_older_record_arriving_after_a_restart_replaces_nothing() {
        let disk = Disk::default();
        let (outbox, _) = on_disk(&disk, Arc::default());
        outbox.accept(vec![Pending::test("b", "s")]).await.unwrap();
        let newer = outbox.accept(vec![Pending::test("a", "s")]).await.unwrap();
        let newer_seq = newer[0].seq;

        let (outbox, loaded) = on_disk(&disk.after_power_loss(), Arc::default());
        assert_eq!(loaded.len(), 2);
        // Numbered before the restart, stored after it: older than what is stored.
        let older = Pending {
            seq: newer_seq - 1,
            ..Pending::test("a", "s").in_state("pending")
        };
        let stored = send_numbered(&outbox, vec![older.clone()]).await.unwrap();
        assert!(stored.unwrap().is_empty(), "superseded, not stored");
        // Nor does an attempt of the older record change the newer one.
        outbox.finish(retry_503(&older, 3, 99)).await.unwrap();
        let (record, _) = outbox.load(&older.key()).unwrap();
        let record = record.unwrap();
        assert_eq!(
            (record.seq, record.attempts, record.not_before_ms),
            (newer_seq, 0, 0)
        );
        // A record numbered after the restart does replace it.
        let next = outbox.accept(vec![Pending::test("a", "s")]).await.unwrap();
        assert!(
            next[0].seq > newer_seq,
            "numbering goes on after the restart"
        );
        assert_eq!(
            outbox.load(&older.key()).unwrap().0.unwrap().seq,
            next[0].seq
        );
        assert_eq!(outbox.pending_len(), 2);
    }

    #[tokio::test]
    async fn recovery_after_a_power_loss_loads_what_is_pending_oldest_first() {
        let disk = Disk::default();
        let (outbox, _) = on_disk(&disk, Arc::default());
        let mut stored = Vec::new();
        for (i, provider) in ["ns/p", "ns/q", "ns/p", "ns/q", "ns/p"].iter().enumerate() {
            let record = Pending::test(&format!("{i:040x}"), "s").of(provider);
            stored.extend(outbox.accept(vec![record]).await.unwrap());
        }
        let record = |i: usize| outbox.load(&stored[i].key).unwrap().0.unwrap();
        let (retried, done) = (record(1), record(3));
        outbox.finish(retry_503(&retried, 2, 1234)).await.unwrap();
        outbox
            .finish(Finish::Done {
                key: done.key(),
                seq: done.seq,
                fingerprint: Some("fp".into()),
                final_state: true,
                outcome: outcome(&done),
            })
            .await
            .unwrap();
        // Outcomes alone skip the fsync; a flush makes them durable too.
        outbox.flush().await;

        let (after, loaded) = on_disk(&disk.after_power_loss(), Arc::default());
        let mut want = vec![
            stored[0].clone(),
            stored[1].clone(),
            stored[2].clone(),
            stored[4].clone(),
        ];
        want[1].not_before_ms = 1234;
        assert_eq!(loaded, want);
        assert_eq!(
            (after.pending_for("ns/p"), after.pending_for("ns/q")),
            (3, 1)
        );
        let (record, posted) = after.load(&stored[1].key).unwrap();
        assert_eq!(record.unwrap().attempts, 2);
        assert_eq!(posted, None);
        assert_eq!(after.posted(&stored[3].key).unwrap().as_deref(), Some("fp"));
        let history = after.history(&HistoryFilter::default()).unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].seq, stored[3].seq);
        // Numbering goes on above everything stored before the loss.
        let next = after
            .accept(vec![Pending::test("next", "s")])
            .await
            .unwrap();
        assert!(next[0].seq > history[0].id, "{next:?} {history:?}");
    }
}
