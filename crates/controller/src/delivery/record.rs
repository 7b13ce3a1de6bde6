//! The values the delivery store keeps: the delivery routing computed ([`Delivery`]), a pending
//! one ([`Pending`]: the delivery, the event it came from and its scheduling, stored whole), what
//! the scheduler keeps of it in memory ([`Entry`]: key and scheduling data only), one attempt of
//! its time line, and the outcome that ends it (embedding the delivery). Records are bounded in
//! size before they are stored.

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

/// One commit status to deliver, as routing computed it (see [`super::plan`]): complete and
/// free of credentials, which are looked up in the current configuration when it is sent, so a
/// rotated token is picked up by the next attempt.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Delivery {
    /// `namespace/name` of the Provider and its UID.
    pub provider: String,
    /// Empty in outcomes read back: the history does not keep it.
    #[serde(default)]
    pub provider_uid: String,
    /// `namespace/name` of the Alert.
    pub alert: String,
    /// `Kind/namespace/name` of the involved object.
    pub object: String,
    /// Never with the user info or query of the Provider's address.
    pub repository: String,
    /// The Provider `spec.type`.
    pub forge: String,
    pub sha: String,
    pub status_id: String,
    /// In the forge's words.
    pub state: String,
    pub description: String,
    /// From the Provider's target-URL template, or our delivery page (`--public-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
    /// The event message (the forge's description cannot hold it), up to
    /// [`MAX_MESSAGE_BYTES`].
    #[serde(default)]
    pub message: String,
    /// The message was longer than [`MAX_MESSAGE_BYTES`] and ends with [`CUT_MARK`].
    #[serde(default, skip_serializing_if = "is_false")]
    pub message_cut: bool,
    /// What the forge's requests are built from. `None` in records stored by earlier builds
    /// (they are planned when sent) and in outcomes (the history does not keep it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned: Option<notify::Status>,
}

impl Delivery {
    pub fn key(&self) -> String {
        status_key(&self.provider_uid, &self.sha, &self.status_id)
    }
}

/// A delivery to make: the delivery, the event it was planned from, and its scheduling.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Pending {
    pub seq: u64,
    pub accepted_ms: i64,
    pub not_before_ms: i64,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(flatten)]
    pub delivery: Delivery,
    /// The event as the forge planned it.
    pub kind: String,
    pub name: String,
    pub reason: String,
    pub severity: String,
    pub metadata: BTreeMap<String, String>,
    /// From the Provider's description template, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description_override: Option<String>,
    /// The status name came from the Provider's `spec.commitStatusExpr`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub status_id_from_expr: bool,
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
    pub fn key(&self) -> String {
        self.delivery.key()
    }

    /// What the scheduler keeps of this delivery.
    pub fn entry(&self) -> Entry {
        Entry {
            key: self.key().into(),
            seq: self.seq,
            provider: self.delivery.provider.as_str().into(),
            accepted_ms: self.accepted_ms,
            not_before_ms: self.not_before_ms,
        }
    }

    /// Cuts the message and the metadata to their bounds, so that what one event stores (and
    /// what an attempt reads back) is bounded whatever the sender put in it.
    pub fn bound(&mut self) {
        if cut(&mut self.delivery.message, MAX_MESSAGE_BYTES) {
            self.delivery.message_cut = true;
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

    /// The history's entry for how this delivery ended.
    pub fn into_outcome(
        self,
        time: String,
        outcome: Verdict,
        http_status: Option<u16>,
        message: Option<String>,
    ) -> Outcome {
        Outcome {
            id: 0,
            time,
            outcome,
            attempts: self.attempts,
            http_status,
            message,
            accepted: rfc3339(self.accepted_ms),
            seq: self.seq,
            timeline: self.attempt_log,
            delivery: Delivery {
                planned: None,
                ..self.delivery
            },
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

/// One entry of the delivery history: how a delivery ended, and the delivery.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(from = "OutcomeRecord", into = "OutcomeRecord")]
pub struct Outcome {
    pub id: u64,
    pub time: String,
    pub outcome: Verdict,
    pub delivery: Delivery,
    pub attempts: u32,
    pub http_status: Option<u16>,
    /// What the forge answered, or why nothing was sent.
    pub message: Option<String>,
    pub accepted: String,
    /// The sequence number of the delivery when accepted.
    pub seq: u64,
    /// Every attempt at the forge, oldest first.
    pub timeline: Vec<Attempt>,
}

/// An [`Outcome`] as the history stores and lists it (the fields of the history's JSON, older
/// than the delivery value it embeds now).
#[derive(Clone, Serialize, Deserialize)]
struct OutcomeRecord {
    id: u64,
    time: String,
    outcome: Verdict,
    provider: String,
    alert: String,
    object: String,
    repository: String,
    forge: String,
    commit: String,
    status: String,
    state: String,
    description: String,
    attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(default)]
    event_message: String,
    #[serde(default, skip_serializing_if = "is_false")]
    event_message_cut: bool,
    accepted: String,
    /// The delivery this outcome ends (its sequence number when accepted; 0 before deliveries
    /// had ids).
    #[serde(default)]
    delivery: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    timeline: Vec<Attempt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_url: Option<String>,
}

impl From<Outcome> for OutcomeRecord {
    fn from(o: Outcome) -> Self {
        let d = o.delivery;
        OutcomeRecord {
            id: o.id,
            time: o.time,
            outcome: o.outcome,
            provider: d.provider,
            alert: d.alert,
            object: d.object,
            repository: d.repository,
            forge: d.forge,
            commit: d.sha,
            status: d.status_id,
            state: d.state,
            description: d.description,
            attempts: o.attempts,
            http_status: o.http_status,
            message: o.message,
            event_message: d.message,
            event_message_cut: d.message_cut,
            accepted: o.accepted,
            delivery: o.seq,
            timeline: o.timeline,
            target_url: d.target_url,
        }
    }
}

impl From<OutcomeRecord> for Outcome {
    fn from(r: OutcomeRecord) -> Self {
        Outcome {
            id: r.id,
            time: r.time,
            outcome: r.outcome,
            delivery: Delivery {
                provider: r.provider,
                provider_uid: String::new(),
                alert: r.alert,
                object: r.object,
                repository: r.repository,
                forge: r.forge,
                sha: r.commit,
                status_id: r.status,
                state: r.state,
                description: r.description,
                target_url: r.target_url,
                message: r.event_message,
                message_cut: r.event_message_cut,
                planned: None,
            },
            attempts: r.attempts,
            http_status: r.http_status,
            message: r.message,
            accepted: r.accepted,
            seq: r.delivery,
            timeline: r.timeline,
        }
    }
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
            delivery: Delivery {
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
                target_url: None,
                message: "m".into(),
                message_cut: false,
                planned: None,
            },
            kind: "Kustomization".into(),
            name: "app".into(),
            reason: "ReconciliationSucceeded".into(),
            severity: "info".into(),
            metadata: BTreeMap::new(),
            description_override: None,
            status_id_from_expr: false,
            attempt_log: Vec::new(),
        }
    }

    /// This record with another Provider.
    pub fn of(mut self, provider: &str) -> Pending {
        self.delivery.provider = provider.into();
        self.delivery.provider_uid = format!("uid-{provider}");
        self
    }

    /// This record in another state.
    pub fn in_state(mut self, state: &str) -> Pending {
        self.delivery.state = state.into();
        self
    }
}

#[cfg(test)]
impl Outcome {
    /// How `p` ended: `verdict` after one attempt, with no answer of the forge kept.
    pub fn test(p: &Pending, verdict: Verdict) -> Outcome {
        let p = Pending {
            attempts: 1,
            attempt_log: Vec::new(),
            ..p.clone()
        };
        p.into_outcome(rfc3339(0), verdict, None, None)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn record(message: &str, metadata: &[(&str, &str)]) -> Pending {
        let mut r = Pending {
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Pending::test("abc", "kustomization/app/uid")
        };
        r.delivery.message = message.into();
        r
    }

    #[test]
    fn a_long_message_is_cut_and_marked() {
        let mut r = record(&"é".repeat(100 * 1024), &[]);
        r.bound();
        assert!(r.delivery.message_cut);
        assert!(r.delivery.message.len() <= MAX_MESSAGE_BYTES);
        assert!(r.delivery.message.ends_with(CUT_MARK));
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"message_cut\":true"));

        let mut short = record("fine", &[]);
        short.bound();
        assert!(!short.delivery.message_cut);
        assert_eq!(short.delivery.message, "fine");
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

    /// A pending record as the build before the delivery value wrote it.
    pub(crate) const OLD_PENDING: &str = r#"{"seq":7,"accepted_ms":1764590000000,"not_before_ms":1764590005000,"attempts":1,"last_error":"failed to send notification for Kustomization/ns/app: boom","provider":"ns/p","provider_uid":"uid","alert":"ns/a","object":"Kustomization/ns/app","repository":"https://github.com/o/r","forge":"github","sha":"5394cb7f48332b2de7c17dd8b8384bbc84b7e738","status_id":"kustomization/app/uid","state":"success","description":"ReconciliationSucceeded","kind":"Kustomization","name":"app","reason":"ReconciliationSucceeded","severity":"info","metadata":{"revision":"main@sha1:5394cb7f48332b2de7c17dd8b8384bbc84b7e738"},"message":"Applied revision","message_cut":true,"target_url":"https://ci.example.com/1","attempt_log":[{"time":"2025-12-01T12:00:05.000Z","result":"retrying","http_status":503,"message":"boom"}]}"#;

    #[test]
    fn a_record_of_the_previous_build_loads_and_keeps_its_shape() {
        let old: Pending = serde_json::from_str(OLD_PENDING).unwrap();
        assert_eq!(old.seq, 7);
        assert_eq!(old.delivery.provider, "ns/p");
        assert_eq!(old.delivery.sha, "5394cb7f48332b2de7c17dd8b8384bbc84b7e738");
        assert_eq!(old.delivery.message, "Applied revision");
        assert!(old.delivery.message_cut);
        assert_eq!(old.delivery.planned, None, "planned when sent");
        assert_eq!(old.attempt_log.len(), 1);
        let again: serde_json::Value = serde_json::to_value(&old).unwrap();
        let before: serde_json::Value = serde_json::from_str(OLD_PENDING).unwrap();
        assert_eq!(again, before, "the pending listing keeps its fields");
    }

    #[test]
    fn outcomes_embed_the_delivery_and_keep_the_history_shape() {
        // As the previous build wrote them: with delivery ids, and from before they existed.
        let old = [
            r#"{"id":9,"time":"2025-12-01T12:00:06.000Z","outcome":"posted","provider":"ns/p","alert":"ns/a","object":"Kustomization/ns/app","repository":"https://github.com/o/r","forge":"github","commit":"5394cb7f48332b2de7c17dd8b8384bbc84b7e738","status":"kustomization/app/uid","state":"success","description":"d","attempts":2,"http_status":201,"message":"note","event_message":"Applied revision","accepted":"2025-12-01T12:00:00.000Z","delivery":7,"timeline":[{"time":"2025-12-01T12:00:06.000Z","result":"posted"}],"target_url":"https://ci.example.com/1"}"#,
            r#"{"id":3,"time":"2025-12-01T12:00:06.000Z","outcome":"failed","provider":"ns/p","alert":"ns/a","object":"Kustomization/ns/app","repository":"https://github.com/o/r","forge":"github","commit":"5394cb7f48332b2de7c17dd8b8384bbc84b7e738","status":"kustomization/app/uid","state":"success","description":"d","attempts":1,"accepted":"2025-12-01T12:00:00.000Z"}"#,
        ];
        for json in old {
            let o: Outcome = serde_json::from_str(json).unwrap();
            let before: serde_json::Value = serde_json::from_str(json).unwrap();
            let mut again = serde_json::to_value(&o).unwrap();
            if before.get("delivery").is_none() {
                assert_eq!(o.seq, 0);
                let again = again.as_object_mut().unwrap();
                assert_eq!(again.remove("delivery"), Some(0.into()));
                assert_eq!(again.remove("event_message"), Some("".into()));
            }
            assert_eq!(again, before);
            assert_eq!(o.delivery.sha, "5394cb7f48332b2de7c17dd8b8384bbc84b7e738");
        }

        let mut pending = record("Applied revision", &[]);
        pending.seq = 11;
        pending.attempts = 1;
        let o = pending
            .clone()
            .into_outcome("t".into(), Verdict::Posted, Some(201), None);
        assert_eq!(o.seq, 11);
        assert_eq!(o.delivery.planned, None);
        assert_eq!(
            Outcome {
                id: 0,
                ..serde_json::from_value(serde_json::to_value(&o).unwrap()).unwrap()
            },
            Outcome {
                delivery: Delivery {
                    provider_uid: String::new(),
                    ..o.delivery.clone()
                },
                ..o.clone()
            },
            "the history keeps the delivery but its Provider's UID"
        );
        let json = serde_json::to_value(&o).unwrap();
        assert_eq!(json["commit"], pending.delivery.sha.as_str());
        assert_eq!(json["status"], pending.delivery.status_id.as_str());
        assert_eq!(json["event_message"], "Applied revision");
        assert_eq!(json["delivery"], 11);
        assert!(json.get("event_message_cut").is_none());
    }

    #[test]
    fn an_entry_knows_its_provider() {
        let e = record("m", &[]).entry();
        assert_eq!(e.provider_uid(), "uid");
        assert_eq!(&*e.provider, "ns/p");
        assert_eq!(&*e.key, "uid\u{1f}abc\u{1f}kustomization/app/uid");
    }
}
