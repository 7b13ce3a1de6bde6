//! Forwarding (`--forward-events-to`): every event the event API accepts is sent on, unchanged
//! (the same body bytes and `Content-Type`), to each configured receiver — typically Flux's
//! own notification-controller, which then serves the chat Providers we do not.
//!
//! Forwards live in the delivery store like commit statuses (its forwarding tables, through
//! its one writer, so a re-open after an I/O error covers them): the body is committed before
//! the 202, so a restart, a `kill -9` or an outage of the receiver loses nothing. Each body is
//! stored once, however many receivers there are. They are sent by the deliveries' scheduler,
//! which keeps only each forward's key and scheduling data in memory, and retried by the
//! deliveries' policy (`--min-retry-delay`, `--max-retry-delay`, `--delivery-max-age`). Per
//! receiver and involved object, forwards are sent one at a time in the order they were
//! accepted; different objects go in parallel (up to `--max-in-flight-per-host` per receiver).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use rand::Rng;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

use notify::Class;

use crate::delivery::policy::{Answer, Decision, Policy};
use crate::delivery::record::{Attempt, Verdict, rfc3339};
use crate::delivery::scheduler::{self, Attempter, Budget, Budgets, Clock, Next, Scheduler};
use crate::delivery::store::{
    Forward, ForwardEntry, ForwardFilter, ForwardLog, ForwardOutcome, ForwardVerdict, Outbox,
    StoreError,
};
use crate::metrics::Metrics;

/// One attempt at a receiver, connection and answer included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// How much of a refusing receiver's answer is kept.
const ANSWER_CAP: usize = 512;
/// First wait before recording a forward's end again after the store refused it.
const RECORD_RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two tries; the store itself retries its writes at most this far apart.
const RECORD_RETRY_MAX: Duration = Duration::from_secs(5);
const USER_AGENT: &str = concat!("commit-status-controller/", env!("CARGO_PKG_VERSION"));
const NOT_CONFIGURED: &str = "the receiver is no longer in --forward-events-to";

/// A bad `--forward-events-to`; the text never repeats a credential.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("--forward-events-to {shown}: not a URL: {source}")]
    NotAUrl {
        shown: String,
        #[source]
        source: url::ParseError,
    },
    #[error("--forward-events-to {id}: use an http:// or https:// URL with a host")]
    Scheme { id: String },
    #[error("--forward-events-to {id} is given twice")]
    Twice { id: String },
}

impl TargetError {
    /// A short, fixed name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            TargetError::NotAUrl { .. } => "not_a_url",
            TargetError::Scheme { .. } => "scheme",
            TargetError::Twice { .. } => "twice",
        }
    }
}

/// Why forwarding cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no receiver to forward to")]
    NoTarget,
    #[error("cannot build the HTTP client for forwarding: {0}")]
    Client(#[source] reqwest::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl StartError {
    /// A short, fixed name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            StartError::NoTarget => "no_target",
            StartError::Client(_) => "client",
            StartError::Store(e) => e.name(),
        }
    }
}

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
    /// Parses one `--forward-events-to` value.
    pub fn parse(value: &str) -> Result<Target, TargetError> {
        let mut url = reqwest::Url::parse(value.trim()).map_err(|source| TargetError::NotAUrl {
            shown: redact_text(value.trim()),
            source,
        })?;
        let id_of = |u: &reqwest::Url| {
            let mut u = u.clone();
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        };
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(TargetError::Scheme { id: id_of(&url) });
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
pub fn parse_targets(values: &[String]) -> Result<Vec<Target>, TargetError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for v in values {
        let t = Target::parse(v)?;
        if !seen.insert(t.id.clone()) {
            return Err(TargetError::Twice { id: t.id });
        }
        out.push(t);
    }
    Ok(out)
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
    #[error("the forwarding store is unavailable")]
    Store(#[from] StoreError),
}

impl Refused {
    /// A short, fixed name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Refused::Full => "full",
            Refused::FullBytes => "full_bytes",
            Refused::Store(_) => "store",
        }
    }
}

/// Tunables; the retry rules are the deliveries'.
#[derive(Clone)]
pub struct Settings {
    pub targets: Vec<Target>,
    pub policy: Policy,
    pub clock: Clock,
    pub max_in_flight_per_target: usize,
    /// Events stored for forwarding at most (each counted once, whatever the receivers).
    pub max_events: usize,
    /// Body bytes stored for forwarding at most.
    pub max_bytes: u64,
    pub metrics: Arc<Metrics>,
}

/// Events (and their bytes) taken but not committed yet: counted against the bounds with what
/// is stored, so that concurrent events cannot overshoot them.
#[derive(Default)]
struct Reserved {
    events: usize,
    bytes: u64,
}

struct Inner {
    store: Outbox,
    scheduler: Scheduler<ForwardEntry>,
    targets: Vec<String>,
    clock: Clock,
    max_events: usize,
    max_bytes: u64,
    reserved: Mutex<Reserved>,
    metrics: Arc<Metrics>,
}

/// Handle to forwarding; cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

impl Forwarder {
    /// Starts sending what the store holds for forwarding. The returned future ends after
    /// `shutdown`, once attempts finished or `grace` passed.
    pub fn start(
        store: Outbox,
        settings: Settings,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> Result<(Forwarder, impl Future<Output = ()>), StartError> {
        if settings.targets.is_empty() {
            return Err(StartError::NoTarget);
        }
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(ATTEMPT_TIMEOUT)
            // A redirected POST would lose its body or its method; a receiver's address is
            // configured, so a redirect is a mistake to show, not to follow.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(StartError::Client)?;
        // Forwards whose receiver is no longer configured end as skipped at their attempt; the
        // rest resume soon, as deliveries do after a restart.
        let initial = store.forward_entries()?;
        if !initial.is_empty() {
            tracing::info!(
                pending = initial.len(),
                "resuming forwards accepted before the restart"
            );
        }
        let sender = Arc::new(Sender {
            store: store.clone(),
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
            targets: settings.targets.clone(),
            policy: settings.policy,
            clock: settings.clock,
            metrics: settings.metrics.clone(),
        });
        let (scheduler, run) = scheduler::start(
            sender,
            settings.clock,
            settings.policy,
            initial,
            shutdown.clone(),
            grace,
        );
        let resync = resync(store.clone(), scheduler.clone(), shutdown);
        let forwarder = Forwarder {
            inner: Arc::new(Inner {
                store: store.clone(),
                scheduler,
                targets: settings.targets.iter().map(|t| t.id.clone()).collect(),
                clock: settings.clock,
                max_events: settings.max_events,
                max_bytes: settings.max_bytes,
                reserved: Mutex::default(),
                metrics: settings.metrics,
            }),
        };
        gauges(&forwarder.inner.metrics, &store);
        Ok((forwarder, async move {
            tokio::join!(run, resync);
            store.flush().await;
        }))
    }

    /// Takes an accepted event for every receiver, within the bounds. The returned future
    /// answers once it is durable; sending starts then (the body is read back from the store).
    /// The event is stored and scheduled even if that future is dropped.
    pub fn accept(
        &self,
        object: String,
        reason: String,
        body: Bytes,
        content_type: Option<&[u8]>,
    ) -> Result<impl Future<Output = Result<(), StoreError>> + use<>, Refused> {
        let inner = self.inner.clone();
        let len = body.len() as u64;
        {
            let stored = inner.store.forward_counts();
            let mut reserved = inner.reserved.lock().unwrap_or_else(|p| p.into_inner());
            if stored.events + reserved.events >= inner.max_events {
                return Err(Refused::Full);
            }
            if stored.bytes + reserved.bytes + len > inner.max_bytes {
                return Err(Refused::FullBytes);
            }
            reserved.events += 1;
            reserved.bytes += len;
        }
        let now = inner.clock.now_ms();
        let content_type = content_type.map(|ct| ct.iter().map(|b| *b as char).collect());
        let forwards = inner
            .targets
            .iter()
            .map(|target| Forward {
                event: 0,
                target: target.clone(),
                object: object.clone(),
                reason: reason.clone(),
                content_type: Clone::clone(&content_type),
                bytes: len,
                accepted_ms: now,
                not_before_ms: now,
                attempts: 0,
                last_error: None,
                attempt_log: Vec::new(),
            })
            .collect();
        let (tx, rx) = oneshot::channel();
        // Once handed to the store the event may be committed: whoever waits or not, what is
        // committed is scheduled.
        tokio::spawn(async move {
            let result = inner.store.accept_forwards(body, forwards).await;
            {
                let mut reserved = inner.reserved.lock().unwrap_or_else(|p| p.into_inner());
                reserved.events -= 1;
                reserved.bytes -= len;
            }
            let result = result.map(|entries| inner.scheduler.accepted(entries));
            gauges(&inner.metrics, &inner.store);
            let _ = tx.send(result);
        });
        Ok(async move { rx.await.unwrap_or(Err(StoreError::Closed)) })
    }

    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.inner.targets.iter().map(String::as_str)
    }
}

/// After each re-open of the store, hands the scheduler every pending forward again: one
/// whose commit was reported failed may be on disk all the same (its event was answered 503;
/// forwarding it means the sender's retry is answered 429 by the receiver). The queue ignores
/// what it holds already.
async fn resync(store: Outbox, scheduler: Scheduler<ForwardEntry>, shutdown: CancellationToken) {
    let mut reopened = store.reopened();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = reopened.changed() => if changed.is_err() { return },
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.forward_entries()).await {
            Ok(Ok(entries)) => scheduler.accepted(entries),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, kind = e.name(), "cannot re-read the pending forwards after the store re-opened");
            }
            Err(_) => {}
        }
    }
}

/// The forwarding gauges, from the store's counts.
fn gauges(metrics: &Metrics, store: &Outbox) {
    let counts = store.forward_counts();
    metrics.forward_queue_depth.set(counts.forwards as i64);
    metrics.forward_pending_bytes.set(counts.bytes as i64);
}

/// Sends forwards for the scheduler.
struct Sender {
    store: Outbox,
    client: reqwest::Client,
    targets: Vec<Target>,
    limits: HashMap<String, Arc<Semaphore>>,
    policy: Policy,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl Attempter for Sender {
    type Entry = ForwardEntry;

    fn budget(&self, _: &ForwardEntry) -> Option<Budget> {
        None
    }

    fn attempt(self: Arc<Self>, entry: ForwardEntry, _: Arc<Budgets>) -> BoxFuture<'static, Next> {
        Box::pin(async move {
            let next = self.attempt_one(entry).await;
            gauges(&self.metrics, &self.store);
            next
        })
    }
}

/// How an attempt ended: finished with a verdict, or to be tried again.
enum End {
    Done {
        verdict: ForwardVerdict,
        http_status: Option<u16>,
        message: Option<String>,
    },
    Retry(Next),
}

impl Sender {
    async fn attempt_one(&self, entry: ForwardEntry) -> Next {
        let store = self.store.clone();
        let (event, target) = (entry.event, entry.target.clone());
        let loaded = tokio::task::spawn_blocking(move || store.load_forward(event, &target)).await;
        let (mut f, body) = match loaded {
            Ok(Ok(Some(loaded))) => loaded,
            // Finished meanwhile (its end committed, say, before a restart).
            Ok(Ok(None)) => return Next::Done,
            Ok(Err(e)) => {
                tracing::error!(error = %e, kind = e.name(), "cannot read a forwarded event from the store");
                return self.later();
            }
            Err(_) => return self.later(),
        };
        let end = self.send(&mut f, body).await;
        match end {
            End::Retry(next) => next,
            End::Done {
                verdict,
                http_status,
                message,
            } => {
                self.metrics
                    .forwards
                    .get_or_create(&crate::metrics::ForwardLabels {
                        target: f.target.clone(),
                        outcome: verdict.name().into(),
                    })
                    .inc();
                let outcome = ForwardOutcome::of(
                    f,
                    verdict,
                    rfc3339(self.clock.now_ms()),
                    http_status,
                    message,
                );
                self.record_end(outcome).await
            }
        }
    }

    /// A retry after the store could not be read.
    fn later(&self) -> Next {
        Next::RetryAt(self.clock.now_ms() + self.policy.min_retry_delay.as_millis() as i64)
    }

    /// Commits how a forward ended. While the store cannot write, the end is tried again (the
    /// forward stays first of its lane, so later ones of the object wait); the forward is not
    /// sent again for it.
    async fn record_end(&self, outcome: ForwardOutcome) -> Next {
        let mut wait = RECORD_RETRY_MIN;
        loop {
            match self.store.finish_forward(outcome.clone()).await {
                Ok(()) => return Next::Done,
                Err(e) if e.retry() => {
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot record how a forward ended yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RECORD_RETRY_MAX);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot record how a forward ended");
                    return Next::Done;
                }
            }
        }
    }

    /// Expiry, the receiver's configuration, then one request; what its answer means.
    async fn send(&self, f: &mut Forward, body: Option<Vec<u8>>) -> End {
        let now = self.clock.now_ms();
        if self.policy.expired(f.accepted_ms, now) {
            let message = format!(
                "not forwarded within {:?} (last error: {})",
                self.policy.max_age,
                f.last_error.as_deref().unwrap_or("none")
            );
            tracing::error!(receiver = %f.target, object = %f.object, event = f.event, attempts = f.attempts, error = %message, "event not forwarded: expired");
            return done(ForwardVerdict::Expired, None, Some(message));
        }
        let Some(target) = self.targets.iter().find(|t| t.id == f.target) else {
            return done(ForwardVerdict::Skipped, None, Some(NOT_CONFIGURED.into()));
        };
        let Some(body) = body else {
            return done(
                ForwardVerdict::Failed,
                None,
                Some("the event's body is missing from the store".into()),
            );
        };
        let Some(limit) = self.limits.get(&f.target) else {
            return done(ForwardVerdict::Skipped, None, Some(NOT_CONFIGURED.into()));
        };
        let Ok(_permit) = limit.acquire().await else {
            return End::Retry(self.later());
        };

        f.attempts += 1;
        let mut req = self.client.post(target.url.clone()).body(body);
        if let Some(ct) = &f.content_type {
            let raw: Vec<u8> = ct.chars().map(|c| c as u8).collect();
            if let Ok(v) = reqwest::header::HeaderValue::from_bytes(&raw) {
                req = req.header(reqwest::header::CONTENT_TYPE, v);
            }
        }
        if let Some((user, password)) = &target.auth {
            req = req.basic_auth(user, password.as_deref());
        }
        let (status, answer) = match req.send().await {
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
        drop(_permit);
        self.metrics
            .forward_attempts
            .get_or_create(&crate::metrics::ForwardAttemptLabels {
                target: f.target.clone(),
                status_class: crate::metrics::status_class(status),
            })
            .inc();
        let now = self.clock.now_ms();
        let message = match (status, answer.is_empty()) {
            (Some(s), true) => format!("HTTP {s}"),
            (Some(s), false) => format!("HTTP {s}: {answer}"),
            (None, _) => answer,
        };
        let (result, verdict, message) = match status {
            Some(200..=299) => {
                tracing::debug!(receiver = %f.target, object = %f.object, event = f.event, attempts = f.attempts, http_status = status, "event forwarded");
                ("forwarded", ForwardVerdict::Forwarded, None)
            }
            Some(429) => {
                tracing::debug!(receiver = %f.target, object = %f.object, event = f.event, attempts = f.attempts, "receiver already has the event (429)");
                (
                    "already received",
                    ForwardVerdict::AlreadyReceived,
                    Some(message),
                )
            }
            Some(s) if s < 500 => {
                tracing::error!(receiver = %f.target, object = %f.object, event = f.event, attempts = f.attempts, http_status = s, error = %message, "event not forwarded: the receiver refused it");
                ("failed", ForwardVerdict::Failed, Some(message))
            }
            _ => {
                let answer = Answer::Failed(Class::Transient { after: None });
                let jitter = rand::rng().random::<f64>();
                match self
                    .policy
                    .decide(answer, f.attempts, f.accepted_ms, now, jitter)
                {
                    Decision::RetryAt(at) | Decision::WaitBudget(at) => {
                        tracing::warn!(receiver = %f.target, object = %f.object, event = f.event, attempts = f.attempts, http_status = status, retry_in = ?Duration::from_millis((at - now).max(0) as u64), error = %message, "event not forwarded yet, will retry");
                        f.log(attempt(now, "retrying", status, Some(message.clone())));
                        f.last_error = Some(message);
                        f.not_before_ms = at;
                        // If the store cannot keep the record, the retry still happens: the
                        // record keeps its older count and time line.
                        if let Err(e) = self.store.retry_forward(f.clone()).await {
                            tracing::warn!(error = %e, "cannot record a failed forward");
                        }
                        return End::Retry(Next::RetryAt(at));
                    }
                    Decision::Done(verdict) => {
                        debug_assert_eq!(verdict, Verdict::Expired);
                        tracing::error!(receiver = %f.target, object = %f.object, event = f.event, attempts = f.attempts, error = %message, "event not forwarded: expired");
                        ("failed", ForwardVerdict::Expired, Some(message))
                    }
                }
            }
        };
        f.log(attempt(now, result, status, message.clone()));
        done(verdict, status, message)
    }
}

fn done(verdict: ForwardVerdict, http_status: Option<u16>, message: Option<String>) -> End {
    End::Done {
        verdict,
        http_status,
        message,
    }
}

fn attempt(now: i64, result: &str, http_status: Option<u16>, message: Option<String>) -> Attempt {
    Attempt {
        time: rfc3339(now),
        result: result.into(),
        http_status,
        message,
    }
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

    /// Adds the forwards from `log` to `deliveries` (JSON, as listed): outcomes newest first,
    /// pending ones oldest first, at most `filter.limit` in all.
    pub fn merge(
        &self,
        log: &(impl ForwardLog + ?Sized),
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
                    log.forward_pending(&f)?
                        .iter()
                        .map(|p| to_value(serde_json::to_value(p))),
                );
                all.sort_by_key(|v| v["accepted_ms"].as_i64().unwrap_or(0));
            } else {
                all.extend(
                    log.forward_history(&f)?
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
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = Target::parse("http//user:s3cret@x/").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = parse_targets(&["http://a:1@x/".into(), "http://b:2@x/".into()]).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("given twice") && !e.contains(":1@"), "{e}");
    }
}
