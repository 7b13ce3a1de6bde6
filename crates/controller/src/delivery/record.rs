//! The values the delivery store keeps: a pending delivery ([`Pending`], stored whole), what the
//! scheduler keeps of it in memory ([`Entry`]: key and scheduling data only), one attempt of its
//! time line, and the outcome that ends it. Records are bounded in size before they are stored.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 in UTC, for outcome times.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Separates the fields of a status key; no field can contain it.
const KEY_SEPARATOR: char = '\u{1f}';

/// `provider UID`, commit and status name, joined by a separator no field can contain.
pub fn status_key(provider_uid: &str, sha: &str, status_id: &str) -> String {
    format!("{provider_uid}{KEY_SEPARATOR}{sha}{KEY_SEPARATOR}{status_id}")
}

/// The event message kept in a record: enough for the history and the delivery page; the forge
/// never sees the message (its description has a few hundred characters at most).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Ends a text that was cut to its bound.
pub const CUT_MARK: &str = "… [cut]";
/// Metadata entries kept; Flux's controllers send fewer than ten.
const MAX_METADATA_ENTRIES: usize = 64;
/// Metadata bytes kept in all (keys and values); entries past it are dropped.
const MAX_METADATA_BYTES: usize = 16 * 1024;
/// A metadata key longer than this is dropped (it cannot be one the forge reads).
const MAX_METADATA_KEY_BYTES: usize = 256;
/// A metadata value longer than this is cut; revisions and summaries are far shorter.
const MAX_METADATA_VALUE_BYTES: usize = 4 * 1024;
/// Keys the forge's plan reads: kept first when there are too many entries.
const PLANNED_KEYS: [&str; 4] = ["commit", "originRevision", "revision", "summary"];
/// Attempts kept per delivery for its time line; older ones are dropped.
pub const ATTEMPT_LOG_CAP: usize = 50;

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
    /// The event message (the forge's description cannot hold it), up to
    /// [`MAX_MESSAGE_BYTES`].
    #[serde(default)]
    pub message: String,
    /// The message was longer than [`MAX_MESSAGE_BYTES`] and ends with [`CUT_MARK`].
    #[serde(default, skip_serializing_if = "is_false")]
    pub message_cut: bool,
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

fn is_false(b: &bool) -> bool {
    !*b
}

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

    /// What the scheduler keeps of this delivery.
    pub fn entry(&self) -> Entry {
        Entry {
            key: self.key().into(),
            seq: self.seq,
            provider: self.provider.as_str().into(),
            accepted_ms: self.accepted_ms,
            not_before_ms: self.not_before_ms,
        }
    }

    /// Cuts the message and the metadata to their bounds, so that what one event stores (and
    /// what an attempt reads back) is bounded whatever the sender put in it.
    pub fn bound(&mut self) {
        if cut(&mut self.message, MAX_MESSAGE_BYTES) {
            self.message_cut = true;
        }
        let metadata = std::mem::take(&mut self.metadata);
        let (planned, other): (Vec<_>, Vec<_>) = metadata
            .into_iter()
            .filter(|(k, _)| k.len() <= MAX_METADATA_KEY_BYTES)
            .partition(|(k, _)| PLANNED_KEYS.contains(&k.as_str()));
        let mut total = 0;
        for (k, mut v) in planned.into_iter().chain(other).take(MAX_METADATA_ENTRIES) {
            cut(&mut v, MAX_METADATA_VALUE_BYTES);
            total += k.len() + v.len();
            if total > MAX_METADATA_BYTES {
                break;
            }
            self.metadata.insert(k, v);
        }
    }

    /// Adds an attempt to the time line, dropping the oldest past [`ATTEMPT_LOG_CAP`].
    pub fn log(&mut self, attempt: Attempt) {
        self.attempt_log.push(attempt);
        if self.attempt_log.len() > ATTEMPT_LOG_CAP {
            let excess = self.attempt_log.len() - ATTEMPT_LOG_CAP;
            self.attempt_log.drain(..excess);
        }
    }
}

/// Cuts `s` to at most `max` bytes (on a character boundary), [`CUT_MARK`] included; whether it
/// was cut.
fn cut(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max - CUT_MARK.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(CUT_MARK);
    true
}

/// What the scheduler keeps of a pending delivery in memory: its key and scheduling data. The
/// full record is read from the store when the delivery is attempted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The status key ([`status_key`]).
    pub key: std::sync::Arc<str>,
    pub seq: u64,
    /// `namespace/name` of the Provider.
    pub provider: std::sync::Arc<str>,
    pub accepted_ms: i64,
    pub not_before_ms: i64,
}

impl Entry {
    /// The Provider's UID, the first field of the key.
    pub fn provider_uid(&self) -> &str {
        self.key.split(KEY_SEPARATOR).next().unwrap_or_default()
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

impl Verdict {
    /// The name used in the history, the pages and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Posted => "posted",
            Verdict::AlreadySet => "already_set",
            Verdict::Skipped => "skipped",
            Verdict::Failed => "failed",
            Verdict::Expired => "expired",
        }
    }
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

#[cfg(test)]
impl Pending {
    /// A GitHub success status of Provider `ns/p` (UID `uid`) for `sha`, named `status_id`.
    pub fn test(sha: &str, status_id: &str) -> Pending {
        Pending {
            seq: 0,
            accepted_ms: 0,
            not_before_ms: 0,
            attempts: 0,
            last_error: None,
            provider: "ns/p".into(),
            provider_uid: "uid".into(),
            alert: "ns/a".into(),
            object: "Kustomization/ns/app".into(),
            repository: "https://github.com/o/r".into(),
            forge: "github".into(),
            sha: sha.into(),
            status_id: status_id.into(),
            state: "success".into(),
            description: "d".into(),
            kind: "Kustomization".into(),
            name: "app".into(),
            reason: "ReconciliationSucceeded".into(),
            severity: "info".into(),
            metadata: BTreeMap::new(),
            message: "m".into(),
            message_cut: false,
            target_url: None,
            description_override: None,
            attempt_log: Vec::new(),
        }
    }

    /// This record with another Provider.
    pub fn of(self, provider: &str) -> Pending {
        Pending {
            provider: provider.into(),
            provider_uid: format!("uid-{provider}"),
            ..self
        }
    }

    /// This record in another state.
    pub fn in_state(self, state: &str) -> Pending {
        Pending {
            state: state.into(),
            ..self
        }
    }
}

/// What the forge plans from: the stored delivery, plus whether its status name came from the
/// Provider's `spec.commitStatusExpr` (Bitbucket then shows it as the name).
pub fn status_event<'a>(
    record: &'a Pending,
    provider: &crate::config::catalog::ProviderEntry,
) -> notify::StatusEvent<'a> {
    notify::StatusEvent {
        status_id_from_expr: provider.exprs.status.is_some(),
        ..record.status_event()
    }
}

#[cfg(test)]
impl Outcome {
    /// How `p` ended: `verdict` after one attempt, with no answer of the forge kept.
    pub fn test(p: &Pending, verdict: Verdict) -> Outcome {
        Outcome {
            id: 0,
            time: rfc3339(0),
            outcome: verdict,
            provider: p.provider.clone(),
            alert: p.alert.clone(),
            object: p.object.clone(),
            repository: p.repository.clone(),
            forge: p.forge.clone(),
            commit: p.sha.clone(),
            status: p.status_id.clone(),
            state: p.state.clone(),
            description: p.description.clone(),
            attempts: 1,
            http_status: None,
            message: None,
            event_message: p.message.clone(),
            accepted: rfc3339(p.accepted_ms),
            delivery: p.seq,
            timeline: Vec::new(),
            target_url: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(message: &str, metadata: &[(&str, &str)]) -> Pending {
        Pending {
            message: message.into(),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Pending::test("abc", "kustomization/app/uid")
        }
    }

    #[test]
    fn a_long_message_is_cut_and_marked() {
        let mut r = record(&"é".repeat(100 * 1024), &[]);
        r.bound();
        assert!(r.message_cut);
        assert!(r.message.len() <= MAX_MESSAGE_BYTES);
        assert!(r.message.ends_with(CUT_MARK));
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"message_cut\":true"));

        let mut short = record("fine", &[]);
        short.bound();
        assert!(!short.message_cut);
        assert_eq!(short.message, "fine");
        assert!(
            !serde_json::to_string(&short)
                .unwrap()
                .contains("message_cut")
        );
    }

    #[test]
    fn metadata_is_bounded_and_keeps_what_the_forge_plans_from() {
        let many: Vec<(String, String)> = (0..500)
            .map(|i| (format!("a{i:03}"), "x".repeat(10_000)))
            .collect();
        let mut pairs: Vec<(&str, &str)> =
            many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let long_key = "k".repeat(1000);
        pairs.push((&long_key, "v"));
        pairs.push((
            "revision",
            "main@sha1:5394cb7f48332b2de7c17dd8b8384bbc84b7e738",
        ));
        let mut r = record("m", &pairs);
        r.bound();
        assert!(r.metadata.len() > 1 && r.metadata.len() <= MAX_METADATA_ENTRIES);
        let total: usize = r.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(total <= MAX_METADATA_BYTES);
        assert_eq!(
            r.metadata["revision"],
            "main@sha1:5394cb7f48332b2de7c17dd8b8384bbc84b7e738"
        );
        assert!(!r.metadata.contains_key(&long_key));
        assert!(
            r.metadata
                .values()
                .all(|v| v.len() <= MAX_METADATA_VALUE_BYTES)
        );
        assert!(serde_json::to_vec(&r).unwrap().len() < 40 * 1024);
    }

    #[test]
    fn the_time_line_is_capped() {
        let mut r = record("m", &[]);
        for i in 0..(ATTEMPT_LOG_CAP + 7) {
            r.log(Attempt {
                time: i.to_string(),
                result: "retrying".into(),
                http_status: None,
                message: None,
            });
        }
        assert_eq!(r.attempt_log.len(), ATTEMPT_LOG_CAP);
        assert_eq!(r.attempt_log[0].time, "7");
    }

    #[test]
    fn an_entry_knows_its_provider() {
        let e = record("m", &[]).entry();
        assert_eq!(e.provider_uid(), "uid");
        assert_eq!(&*e.provider, "ns/p");
        assert_eq!(&*e.key, "uid\u{1f}abc\u{1f}kustomization/app/uid");
    }
}
