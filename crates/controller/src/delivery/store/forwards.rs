//! The forwarded events' part of the delivery store (`--forward-events-to`): their bodies, the
//! forwards not finished and their history, in tables of the same redb database as the
//! deliveries, written by the store's one writer. So a forward is committed with whatever else
//! its batch holds, its counters change only once that commit succeeded, and the store's
//! re-open after an I/O error covers forwards too.
//!
//! The table layout is the one forwarding always had, so stores written before keep working.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{Op, Outbox, StoreError, encode, storage};
use crate::delivery::record::Attempt;
use crate::delivery::scheduler::Scheduled;

/// Bodies waiting to be forwarded: event id → the bytes as received.
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("forward_bodies");
/// Forwards not finished: (event id, receiver) → [`Forward`] (JSON).
const PENDING: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("forward_pending");
/// Finished forwards in the order they ended: id → [`ForwardOutcome`] (JSON).
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("forward_history");
/// `event`: the last event id given; `history`: the last history id given.
const META: TableDefinition<&str, u64> = TableDefinition::new("forward_meta");

/// Finished forwards kept; older ones are dropped.
const HISTORY_CAP: u64 = 20_000;
/// Attempts kept per forward for its time line.
const ATTEMPT_LOG_CAP: usize = 20;
/// Separates the receiver from the object in a lane key; neither contains it.
const LANE_SEPARATOR: char = '\u{1f}';

/// A forward not finished: one event to one receiver.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Forward {
    /// The event's id (its body's key).
    pub event: u64,
    /// The receiver (its URL without userinfo).
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
    /// Adds an attempt to the time line, dropping the oldest past [`ATTEMPT_LOG_CAP`].
    pub fn log(&mut self, attempt: Attempt) {
        self.attempt_log.push(attempt);
        if self.attempt_log.len() > ATTEMPT_LOG_CAP {
            let excess = self.attempt_log.len() - ATTEMPT_LOG_CAP;
            self.attempt_log.drain(..excess);
        }
    }

    /// What the scheduler keeps of it.
    pub fn entry(&self) -> ForwardEntry {
        ForwardEntry {
            lane: lane(&self.target, &self.object),
            event: self.event,
            target: self.target.as_str().into(),
            accepted_ms: self.accepted_ms,
            not_before_ms: self.not_before_ms,
        }
    }
}

fn lane(target: &str, object: &str) -> Arc<str> {
    format!("{target}{LANE_SEPARATOR}{object}").into()
}

/// What the scheduler keeps of a pending forward in memory: its lane (receiver and object,
/// whose forwards go one at a time in event order), its key in the store and when it may go.
/// The record and the body are read from the store when it is attempted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardEntry {
    pub lane: Arc<str>,
    pub event: u64,
    pub target: Arc<str>,
    pub accepted_ms: i64,
    pub not_before_ms: i64,
}

impl Scheduled for ForwardEntry {
    // Every event is sent on, in the order it was accepted: none replaces another.
    const COALESCE: bool = false;

    fn key(&self) -> &Arc<str> {
        &self.lane
    }
    fn seq(&self) -> u64 {
        self.event
    }
    fn accepted_ms(&self) -> i64 {
        self.accepted_ms
    }
    fn not_before_ms(&self) -> i64 {
        self.not_before_ms
    }
    fn set_not_before_ms(&mut self, at: i64) {
        self.not_before_ms = at;
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

impl ForwardOutcome {
    /// How `forward` ended at `time` (the store gives it its id).
    pub fn of(
        forward: Forward,
        outcome: ForwardVerdict,
        time: String,
        http_status: Option<u16>,
        message: Option<String>,
    ) -> ForwardOutcome {
        ForwardOutcome {
            type_: "forward".into(),
            id: 0,
            time,
            outcome,
            target: forward.target,
            object: forward.object,
            reason: forward.reason,
            attempts: forward.attempts,
            http_status,
            message,
            accepted: super::rfc3339(forward.accepted_ms),
            event: forward.event,
            content_type: forward.content_type,
            bytes: forward.bytes,
            timeline: forward.attempt_log,
        }
    }
}

/// A pending forward as listed beside pending deliveries.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PendingForward {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(flatten)]
    pub forward: Forward,
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

/// What is stored for forwarding, as of the last successful commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardCounts {
    /// Events whose body is stored (each counted once, however many receivers).
    pub events: usize,
    /// Their body bytes.
    pub bytes: u64,
    /// Forwards not finished (one per event and receiver).
    pub forwards: usize,
}

/// [`ForwardCounts`] and the body size per stored event, which a finished forward frees.
#[derive(Debug, Default)]
pub(super) struct Counts {
    sizes: HashMap<u64, u64>,
    bytes: u64,
    forwards: usize,
}

impl Counts {
    fn snapshot(&self) -> ForwardCounts {
        ForwardCounts {
            events: self.sizes.len(),
            bytes: self.bytes,
            forwards: self.forwards,
        }
    }

    /// Applies what a committed batch changed.
    pub(super) fn apply(&mut self, changes: &Changes) {
        for (event, size) in &changes.added {
            if self.sizes.insert(*event, *size).is_none() {
                self.bytes += size;
            }
        }
        for event in &changes.removed {
            if let Some(size) = self.sizes.remove(event) {
                self.bytes -= size;
            }
        }
        self.forwards = self.forwards.saturating_add_signed(changes.forwards);
    }
}

/// A write to the forwarding tables.
pub(super) enum ForwardOp {
    /// Store an accepted event's body and its forwards.
    Accept {
        event: u64,
        body: Bytes,
        forwards: Vec<Forward>,
    },
    /// A forward ended: drop it (and the body once no forward needs it), record the outcome.
    Done {
        event: u64,
        target: String,
        outcome: Box<ForwardOutcome>,
    },
    /// A forward will be tried again: its record, updated (if it is still pending).
    Retry(Box<Forward>),
}

impl ForwardOp {
    /// Whether it must be on disk before anyone hears of it: an accepted event must; an outcome
    /// lost in a crash only means the event is forwarded again, which the receiver answers 429.
    pub(super) fn durable(&self) -> bool {
        matches!(self, ForwardOp::Accept { .. })
    }
}

/// What a batch changes outside the database, applied once it committed.
#[derive(Debug, Default)]
pub(super) struct Changes {
    added: HashMap<u64, u64>,
    removed: Vec<u64>,
    forwards: isize,
    /// The last history id given, if the batch gave one.
    last_history: Option<u64>,
    /// The largest event id stored.
    max_event: u64,
}

impl Changes {
    pub(super) fn last_history(&self) -> Option<u64> {
        self.last_history
    }
}

/// What the store holds for forwarding, read at open and at every re-open.
pub(super) struct Loaded {
    pub(super) counts: Counts,
    /// The next event id to give.
    pub(super) next_event: u64,
    /// The last history id given.
    pub(super) last_history: u64,
}

/// Reads the forwarding tables (creating them), and drops bodies no forward refers to any more
/// (their last forward's end was committed before the body's removal, by an older version).
/// Body sizes come from the small forward records, so start-up does not read every stored
/// body; only when the two tables disagree are the bodies themselves looked at.
pub(super) fn init(txn: &redb::WriteTransaction) -> Result<Loaded, StoreError> {
    #[derive(Deserialize)]
    struct Size {
        bytes: u64,
    }
    let mut bodies = txn.open_table(BODIES).map_err(storage)?;
    let pending = txn.open_table(PENDING).map_err(storage)?;
    let mut sizes = HashMap::new();
    let (mut forwards, mut unread) = (0, false);
    for entry in pending.iter().map_err(storage)? {
        let (k, v) = entry.map_err(storage)?;
        match serde_json::from_slice::<Size>(v.value()) {
            Ok(s) => sizes.insert(k.value().0, s.bytes),
            Err(_) => {
                unread = true;
                sizes.insert(k.value().0, 0)
            }
        };
        forwards += 1;
    }
    if unread || bodies.len().map_err(storage)? != sizes.len() as u64 {
        let referenced: HashSet<u64> = sizes.keys().copied().collect();
        sizes.clear();
        for entry in bodies.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            sizes.insert(k.value(), v.value().len() as u64);
        }
        let orphans: Vec<u64> = sizes
            .keys()
            .filter(|e| !referenced.contains(e))
            .copied()
            .collect();
        for e in orphans {
            bodies.remove(e).map_err(storage)?;
            sizes.remove(&e);
        }
    }
    txn.open_table(HISTORY).map_err(storage)?;
    let meta = txn.open_table(META).map_err(storage)?;
    let get = |k: &str| {
        meta.get(k)
            .map(|v| v.map(|v| v.value()).unwrap_or(0))
            .map_err(storage)
    };
    Ok(Loaded {
        counts: Counts {
            bytes: sizes.values().sum(),
            sizes,
            forwards,
        },
        next_event: get("event")? + 1,
        last_history: get("history")?,
    })
}

/// The forwarding tables one write transaction changes.
pub(super) struct Tables<'txn> {
    bodies: redb::Table<'txn, u64, &'static [u8]>,
    pending: redb::Table<'txn, (u64, &'static str), &'static [u8]>,
    history: redb::Table<'txn, u64, &'static [u8]>,
    meta: redb::Table<'txn, &'static str, u64>,
    /// The last history id given, as of this transaction.
    last_history: u64,
}

impl<'txn> Tables<'txn> {
    pub(super) fn open(
        txn: &'txn redb::WriteTransaction,
        last_history: u64,
    ) -> Result<Tables<'txn>, StoreError> {
        Ok(Tables {
            bodies: txn.open_table(BODIES).map_err(storage)?,
            pending: txn.open_table(PENDING).map_err(storage)?,
            history: txn.open_table(HISTORY).map_err(storage)?,
            meta: txn.open_table(META).map_err(storage)?,
            last_history,
        })
    }

    /// Applies one write; returns what the scheduler needs of forwards it stored.
    pub(super) fn apply(
        &mut self,
        op: ForwardOp,
        changes: &mut Changes,
    ) -> Result<Vec<ForwardEntry>, StoreError> {
        match op {
            ForwardOp::Accept {
                event,
                body,
                forwards,
            } => {
                changes.max_event = changes.max_event.max(event);
                self.bodies.insert(event, body.as_ref()).map_err(storage)?;
                changes.added.insert(event, body.len() as u64);
                for f in &forwards {
                    let bytes = serde_json::to_vec(f).map_err(encode)?;
                    let old = self
                        .pending
                        .insert((event, f.target.as_str()), bytes.as_slice())
                        .map_err(storage)?;
                    if old.is_none() {
                        changes.forwards += 1;
                    }
                }
                Ok(forwards.iter().map(Forward::entry).collect())
            }
            ForwardOp::Done {
                event,
                target,
                mut outcome,
            } => {
                if self
                    .pending
                    .remove((event, target.as_str()))
                    .map_err(storage)?
                    .is_some()
                {
                    changes.forwards -= 1;
                }
                let others = self
                    .pending
                    .range((event, "")..=(event, "\u{10ffff}"))
                    .map_err(storage)?
                    .next()
                    .is_some();
                if !others && self.bodies.remove(event).map_err(storage)?.is_some() {
                    changes.removed.push(event);
                }
                self.last_history += 1;
                outcome.id = self.last_history;
                changes.last_history = Some(self.last_history);
                let bytes = serde_json::to_vec(&outcome).map_err(encode)?;
                self.history
                    .insert(outcome.id, bytes.as_slice())
                    .map_err(storage)?;
                Ok(Vec::new())
            }
            ForwardOp::Retry(f) => {
                let key = (f.event, f.target.as_str());
                if self.pending.get(key).map_err(storage)?.is_some() {
                    let bytes = serde_json::to_vec(&f).map_err(encode)?;
                    self.pending
                        .insert(key, bytes.as_slice())
                        .map_err(storage)?;
                }
                Ok(Vec::new())
            }
        }
    }

    /// Bounds the history and remembers the ids given, at the end of the transaction.
    pub(super) fn close(mut self, changes: &Changes) -> Result<(), StoreError> {
        let len = self.history.len().map_err(storage)?;
        if len > HISTORY_CAP {
            let drop: Vec<u64> = self
                .history
                .iter()
                .map_err(storage)?
                .take((len - HISTORY_CAP) as usize)
                .filter_map(|e| e.ok().map(|(k, _)| k.value()))
                .collect();
            for id in drop {
                self.history.remove(id).map_err(storage)?;
            }
        }
        if changes.max_event > 0 {
            let stored = self.meta.get("event").map_err(storage)?.map(|v| v.value());
            if stored.is_none_or(|s| s < changes.max_event) {
                self.meta
                    .insert("event", changes.max_event)
                    .map_err(storage)?;
            }
        }
        self.meta
            .insert("history", self.last_history)
            .map_err(storage)?;
        Ok(())
    }
}

impl Outbox {
    /// Numbers an accepted event and stores its body once and a forward per receiver. Answers,
    /// once they are durable, with what the scheduler needs of them.
    pub async fn accept_forwards(
        &self,
        body: Bytes,
        mut forwards: Vec<Forward>,
    ) -> Result<Vec<ForwardEntry>, StoreError> {
        let event = self
            .state
            .forward_event
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for f in &mut forwards {
            f.event = event;
        }
        self.forward_op(ForwardOp::Accept {
            event,
            body,
            forwards,
        })
        .await
    }

    /// Records how a forward ended; answers once that is committed.
    pub async fn finish_forward(&self, outcome: ForwardOutcome) -> Result<(), StoreError> {
        self.forward_op(ForwardOp::Done {
            event: outcome.event,
            target: outcome.target.clone(),
            outcome: Box::new(outcome),
        })
        .await
        .map(drop)
    }

    /// Keeps a forward's updated record for its next attempt (if it is still pending).
    pub async fn retry_forward(&self, forward: Forward) -> Result<(), StoreError> {
        self.forward_op(ForwardOp::Retry(Box::new(forward)))
            .await
            .map(drop)
    }

    async fn forward_op(&self, op: ForwardOp) -> Result<Vec<ForwardEntry>, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Op::Forward(op, reply))
            .map_err(|_| StoreError::Closed)?;
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// What is stored for forwarding, as of the last successful commit.
    pub fn forward_counts(&self) -> ForwardCounts {
        self.state
            .forwards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot()
    }

    /// A pending forward's record and its event's body (`None` if the body is missing).
    pub fn load_forward(
        &self,
        event: u64,
        target: &str,
    ) -> Result<Option<LoadedForward>, StoreError> {
        let txn = self.db()?.begin_read().map_err(storage)?;
        let pending = txn.open_table(PENDING).map_err(storage)?;
        let Some(v) = pending.get((event, target)).map_err(storage)? else {
            return Ok(None);
        };
        let forward: Forward = serde_json::from_slice(v.value()).map_err(encode)?;
        let bodies = txn.open_table(BODIES).map_err(storage)?;
        let body = bodies
            .get(event)
            .map_err(storage)?
            .map(|v| v.value().to_vec());
        Ok(Some((forward, body)))
    }

    /// What the scheduler needs of every pending forward, in event order; only the fields it
    /// keeps are decoded.
    pub fn forward_entries(&self) -> Result<Vec<ForwardEntry>, StoreError> {
        #[derive(Deserialize)]
        struct Scheduling {
            event: u64,
            target: String,
            object: String,
            accepted_ms: i64,
            not_before_ms: i64,
        }
        let txn = self.db()?.begin_read().map_err(storage)?;
        let table = txn.open_table(PENDING).map_err(storage)?;
        let mut entries = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            match serde_json::from_slice::<Scheduling>(v.value()) {
                Ok(s) => entries.push(ForwardEntry {
                    lane: lane(&s.target, &s.object),
                    event: s.event,
                    target: s.target.into(),
                    accepted_ms: s.accepted_ms,
                    not_before_ms: s.not_before_ms,
                }),
                Err(e) => tracing::error!(error = %e, "unreadable pending forward skipped"),
            }
        }
        Ok(entries)
    }
}

/// A pending forward's record and its event's body (`None` if the body is missing).
pub type LoadedForward = (Forward, Option<Vec<u8>>);

/// Where forwards are listed from: the running store, or a store file read while the
/// controller is stopped (the `deliveries` subcommand).
pub trait ForwardLog {
    /// The newest finished forwards first.
    fn forward_history(&self, filter: &ForwardFilter) -> Result<Vec<ForwardOutcome>, StoreError>;
    /// Forwards not finished, oldest first.
    fn forward_pending(&self, filter: &ForwardFilter) -> Result<Vec<PendingForward>, StoreError>;
}

impl ForwardLog for Outbox {
    fn forward_history(&self, filter: &ForwardFilter) -> Result<Vec<ForwardOutcome>, StoreError> {
        history(&*self.db()?, filter)
    }
    fn forward_pending(&self, filter: &ForwardFilter) -> Result<Vec<PendingForward>, StoreError> {
        pending(&*self.db()?, filter)
    }
}

impl ForwardLog for dyn ReadableDatabase {
    fn forward_history(&self, filter: &ForwardFilter) -> Result<Vec<ForwardOutcome>, StoreError> {
        history(self, filter)
    }
    fn forward_pending(&self, filter: &ForwardFilter) -> Result<Vec<PendingForward>, StoreError> {
        pending(self, filter)
    }
}

fn history(
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

fn pending(
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

/// Up to `limit` readable values of `table` that `keep` accepts, in key order or reversed. A
/// store without forwarding tables has none.
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};

    use super::super::tests::{Disk, on_disk, open_dir, quiet, wait_until};
    use super::*;

    fn forward(target: &str, object: &str, bytes: u64) -> Forward {
        Forward {
            event: 0,
            target: target.into(),
            object: object.into(),
            reason: "ReconciliationSucceeded".into(),
            content_type: Some("application/json".into()),
            bytes,
            accepted_ms: 1_000,
            not_before_ms: 1_000,
            attempts: 0,
            last_error: None,
            attempt_log: Vec::new(),
        }
    }

    fn ended(f: Forward, verdict: ForwardVerdict) -> ForwardOutcome {
        ForwardOutcome::of(f, verdict, super::super::rfc3339(2_000), Some(202), None)
    }

    fn all() -> ForwardFilter {
        ForwardFilter {
            limit: 100,
            ..ForwardFilter::default()
        }
    }

    #[tokio::test]
    async fn a_body_is_stored_once_and_freed_when_its_last_forward_ends() {
        let (store, _) = Outbox::open(None, quiet()).unwrap();
        let body = Bytes::from_static(br#"{"event":1}"#);
        let n = body.len() as u64;
        let fs = vec![
            forward("http://a/", "K/ns/o", n),
            forward("http://b/", "K/ns/o", n),
        ];
        let entries = store.accept_forwards(body.clone(), fs).await.unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].event, entries[1].event);
        assert_ne!(entries[0].lane, entries[1].lane, "one lane per receiver");
        let counts = store.forward_counts();
        assert_eq!((counts.events, counts.bytes, counts.forwards), (1, n, 2));

        let event = entries[0].event;
        let (record, stored) = store.load_forward(event, "http://a/").unwrap().unwrap();
        assert_eq!(stored.as_deref(), Some(&body[..]));
        assert_eq!(record.event, event);
        store
            .finish_forward(ended(record, ForwardVerdict::Forwarded))
            .await
            .unwrap();
        assert!(store.load_forward(event, "http://a/").unwrap().is_none());
        let counts = store.forward_counts();
        assert_eq!((counts.events, counts.bytes, counts.forwards), (1, n, 1));

        let (record, _) = store.load_forward(event, "http://b/").unwrap().unwrap();
        store
            .finish_forward(ended(record, ForwardVerdict::AlreadyReceived))
            .await
            .unwrap();
        assert_eq!(store.forward_counts(), ForwardCounts::default());
        let history = store.forward_history(&all()).unwrap();
        let targets: Vec<&str> = history.iter().map(|o| o.target.as_str()).collect();
        assert_eq!(targets, ["http://b/", "http://a/"], "newest first");
        assert!(history[0].id > history[1].id);
        assert!(store.forward_pending(&all()).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_retry_keeps_the_updated_record_only_while_the_forward_is_pending() {
        let (store, _) = Outbox::open(None, quiet()).unwrap();
        let entries = store
            .accept_forwards(
                Bytes::from_static(b"{}"),
                vec![forward("http://a/", "o", 2)],
            )
            .await
            .unwrap();
        let event = entries[0].event;
        let (mut record, _) = store.load_forward(event, "http://a/").unwrap().unwrap();
        record.attempts = 1;
        record.not_before_ms = 5_000;
        record.last_error = Some("HTTP 503".into());
        store.retry_forward(record.clone()).await.unwrap();
        let (kept, _) = store.load_forward(event, "http://a/").unwrap().unwrap();
        assert_eq!(kept, record);
        assert_eq!(store.forward_entries().unwrap()[0].not_before_ms, 5_000);
        store
            .finish_forward(ended(kept, ForwardVerdict::Failed))
            .await
            .unwrap();
        // A late retry of a finished forward does not bring it back.
        store.retry_forward(record).await.unwrap();
        assert!(store.load_forward(event, "http://a/").unwrap().is_none());
        assert_eq!(store.forward_counts().forwards, 0);
    }

    #[tokio::test]
    async fn pending_forwards_and_their_numbering_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_dir(dir.path());
        let big = Bytes::from(vec![b'x'; 100 * 1024]);
        let first = store
            .accept_forwards(big, vec![forward("http://a/", "o", 100 * 1024)])
            .await
            .unwrap();
        drop(store);

        let (store, _) = open_dir(dir.path());
        let entries = store.forward_entries().unwrap();
        assert_eq!(entries, first, "only the scheduling data, as accepted");
        let counts = store.forward_counts();
        assert_eq!(
            (counts.events, counts.bytes, counts.forwards),
            (1, 100 * 1024, 1)
        );
        let next = store
            .accept_forwards(
                Bytes::from_static(b"{}"),
                vec![forward("http://a/", "o", 2)],
            )
            .await
            .unwrap();
        assert!(next[0].event > first[0].event);
    }

    #[tokio::test]
    async fn a_restart_takes_body_sizes_from_the_forwards_and_drops_orphaned_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_dir(dir.path());
        store
            .accept_forwards(
                Bytes::from(vec![b'x'; 1024]),
                vec![
                    forward("http://a/", "o", 1024),
                    forward("http://b/", "o", 1024),
                ],
            )
            .await
            .unwrap();
        drop(store);
        let counts = |store: &Outbox| {
            let c = store.forward_counts();
            (c.events, c.bytes, c.forwards)
        };

        // As is: the sizes come from the forward records.
        let (store, _) = open_dir(dir.path());
        assert_eq!(counts(&store), (1, 1024, 2));
        drop(store);

        // A body no forward refers to (left by an older version) is dropped at start-up.
        // The store's writer lets go of the file shortly after the handle is dropped.
        let path = dir.path().join("deliveries.redb");
        let open_db = || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                match redb::Database::create(&path) {
                    Ok(db) => break db,
                    Err(_) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(20))
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        };
        let db = open_db();
        let txn = db.begin_write().unwrap();
        txn.open_table(BODIES)
            .unwrap()
            .insert(u64::MAX, b"orphan".as_slice())
            .unwrap();
        txn.commit().unwrap();
        drop(db);
        let (store, _) = open_dir(dir.path());
        assert_eq!(counts(&store), (1, 1024, 2));
        drop(store);
        let db = open_db();
        let txn = db.begin_read().unwrap();
        assert_eq!(txn.open_table(BODIES).unwrap().len().unwrap(), 1);
    }

    #[tokio::test]
    async fn a_failed_commit_changes_no_count_and_forwards_are_kept_through_the_reopen() {
        let disk = Disk::default();
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (store, _) = on_disk(&disk, errors.clone());
        let reopened = store.reopened();
        let kept = store
            .accept_forwards(
                Bytes::from_static(b"{}"),
                vec![forward("http://a/", "o", 2)],
            )
            .await
            .unwrap();

        disk.full.store(true, Ordering::SeqCst);
        let body = Bytes::from(vec![b'y'; 64 * 1024]);
        let refused = store
            .accept_forwards(body.clone(), vec![forward("http://a/", "o", 64 * 1024)])
            .await;
        assert!(refused.is_err(), "{refused:?}");
        let counts = store.forward_counts();
        assert_eq!((counts.events, counts.bytes, counts.forwards), (1, 2, 1));
        assert!(errors.lock().unwrap().contains(&"io"), "{errors:?}");

        disk.full.store(false, Ordering::SeqCst);
        wait_until("the store writes again", || store.writable()).await;
        assert!(reopened.has_changed().unwrap(), "the re-open is announced");
        assert_eq!(store.forward_entries().unwrap(), kept);
        let stored = store
            .accept_forwards(body, vec![forward("http://a/", "o", 64 * 1024)])
            .await
            .unwrap();
        assert!(stored[0].event > kept[0].event);
        assert_eq!(store.forward_counts().forwards, 2);
    }
}
