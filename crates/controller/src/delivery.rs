//! Sends what the outbox holds: schedules each pending delivery, attempts it with the forge
//! named by the current configuration, and retries with exponential backoff and full jitter
//! until it lands, fails for good or expires.
//!
//! Limits: one attempt at a time per status (so states keep their order), a bounded number of
//! attempts in flight in all and per forge host, and a shared rate-limit budget per (forge
//! host, credential): once a forge says the budget is spent, every delivery on that credential
//! waits for the reset instead of each failing against it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use notify::{Outcome as Sent, ProgressingMode, Retry};

use crate::outbox::{Attempt, Finish, Outbox, Outcome, Pending, Verdict, now_ms, rfc3339};
use crate::pacing::{Gate, Pacer};
use crate::server::SharedCatalog;

/// Tunables of delivery.
#[derive(Clone)]
pub struct Settings {
    /// First retry waits up to this long; each further retry doubles it.
    pub min_retry_delay: Duration,
    /// Cap of the retry wait (before jitter).
    pub max_retry_delay: Duration,
    /// Deliveries older than this are recorded as expired.
    pub max_age: Duration,
    /// Attempts in flight at once, in all.
    pub max_in_flight: usize,
    /// Attempts in flight at once against one forge host.
    pub max_in_flight_per_host: usize,
    pub progressing: ProgressingMode,
    /// Where warnings about an Alert go (Kubernetes Events on the Alert).
    pub notices: Arc<dyn crate::hooks::Notices>,
    /// `--public-url`: statuses link to this controller's delivery page unless the Provider
    /// has its own link template.
    pub public_url: Option<String>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// `--read-before-write` (issue 12): read the forge's statuses before each write, as Flux
    /// does, instead of writing straight away.
    pub read_before_write: bool,
}

enum Msg {
    Accepted(Vec<Pending>),
    /// An attempt ended; `at` is when to look at the key again (with the updated record), or
    /// `None` when the delivery is finished.
    Ended {
        record: Box<Pending>,
        at: Option<i64>,
    },
}

/// Hands newly accepted deliveries to the scheduler.
#[derive(Clone)]
pub struct Scheduler {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Scheduler {
    /// Called as soon as deliveries are numbered, before their commit: sending need not wait
    /// for the fsync (a crash in between only means the sender retries: at least once).
    pub fn accepted(&self, records: Vec<Pending>) {
        let _ = self.tx.send(Msg::Accepted(records));
    }
}

struct Shared {
    outbox: Outbox,
    catalog: SharedCatalog,
    settings: Settings,
    global: Semaphore,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Rate-limit budgets: spent until a reset, or paced to last until it (issue 12).
    pacer: Pacer,
}

/// Starts the scheduler with what the store held at start-up. The returned future ends after
/// `shutdown`, once in-flight attempts finished or `grace` passed.
pub fn start(
    outbox: Outbox,
    catalog: SharedCatalog,
    settings: Settings,
    initial: Vec<Pending>,
    shutdown: CancellationToken,
    grace: Duration,
) -> (Scheduler, impl std::future::Future<Output = ()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let scheduler = Scheduler { tx: tx.clone() };
    let shared = Arc::new(Shared {
        global: Semaphore::new(settings.max_in_flight.max(1)),
        outbox,
        catalog,
        settings,
        hosts: Mutex::default(),
        pacer: Pacer::default(),
    });
    // A restart is a natural moment to try again: what waited for a long backoff before the
    // restart is retried soon after it.
    let soon = now_ms() + shared.settings.min_retry_delay.as_millis() as i64;
    let initial = initial
        .into_iter()
        .map(|mut p| {
            p.not_before_ms = p.not_before_ms.min(soon);
            p
        })
        .collect();
    let _ = tx.send(Msg::Accepted(initial));
    (scheduler, run(shared, tx, rx, shutdown, grace))
}

async fn run(
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Msg>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    // The latest record per pending key (attempts and their answers included); due times;
    // keys with an attempt running (and the sequence number it started from).
    let mut latest: HashMap<String, Pending> = HashMap::new();
    let mut due: BTreeSet<(i64, String)> = BTreeSet::new();
    let mut due_at: HashMap<String, i64> = HashMap::new();
    let mut running: HashMap<String, u64> = HashMap::new();
    let mut tasks = JoinSet::new();

    let schedule = |due: &mut BTreeSet<(i64, String)>,
                    due_at: &mut HashMap<String, i64>,
                    key: String,
                    at: i64| {
        if let Some(old) = due_at.insert(key.clone(), at) {
            due.remove(&(old, key.clone()));
        }
        due.insert((at, key));
    };

    loop {
        let next = due.first().map(|(at, _)| *at);
        let sleep = match next {
            Some(at) => Duration::from_millis((at - now_ms()).max(0) as u64),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                match msg {
                    Msg::Accepted(records) => {
                        for record in records {
                            let key = record.key();
                            let at = record.not_before_ms;
                            latest.insert(key.clone(), record);
                            if !running.contains_key(&key) {
                                schedule(&mut due, &mut due_at, key, at);
                            }
                        }
                    }
                    Msg::Ended { record, at } => {
                        let key = record.key();
                        running.remove(&key);
                        let newer = latest.get(&key).is_some_and(|l| l.seq != record.seq);
                        if newer {
                            // A newer state arrived meanwhile: send it now.
                            schedule(&mut due, &mut due_at, key, now_ms());
                        } else if let Some(at) = at {
                            latest.insert(key.clone(), *record);
                            schedule(&mut due, &mut due_at, key, at);
                        } else {
                            latest.remove(&key);
                        }
                    }
                }
            }
            () = tokio::time::sleep(sleep), if next.is_some() => {
                let now = now_ms();
                while let Some((at, key)) = due.first().cloned() {
                    if at > now {
                        break;
                    }
                    due.remove(&(at, key.clone()));
                    due_at.remove(&key);
                    let Some(record) = latest.get(&key) else { continue };
                    let mut record = record.clone();
                    running.insert(key, record.seq);
                    let shared = shared.clone();
                    let tx = tx.clone();
                    tasks.spawn(async move {
                        let at = attempt(&shared, &mut record).await;
                        let _ = tx.send(Msg::Ended { record: Box::new(record), at });
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
            "attempts still running after the grace period were abandoned; they stay queued"
        );
        tasks.abort_all();
    }
    shared.outbox.flush().await;
}

/// One attempt. Returns when to look at the key again, or `None` when it is finished;
/// `record` is updated with the attempt (count, answer, next time).
async fn attempt(shared: &Shared, record: &mut Pending) -> Option<i64> {
    let _permit = shared.global.acquire().await.ok()?;
    let settings = &shared.settings;
    let age = now_ms() - record.accepted_ms;
    if age > settings.max_age.as_millis() as i64 {
        let message = format!(
            "not delivered within {:?} (last error: {})",
            settings.max_age,
            record.last_error.as_deref().unwrap_or("none")
        );
        return end_early(shared, record, Verdict::Expired, message);
    }

    let catalog = shared
        .catalog
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let (ns, name) = record
        .provider
        .split_once('/')
        .unwrap_or(("", &record.provider));
    let provider = catalog
        .provider(ns, name)
        .filter(|p| p.provider.metadata.uid == record.provider_uid);
    let Some(provider) = provider else {
        return end_early(
            shared,
            record,
            Verdict::Skipped,
            "the provider was deleted or replaced",
        );
    };
    if provider.provider.spec.suspend {
        return end_early(
            shared,
            record,
            Verdict::Skipped,
            "the provider is suspended",
        );
    }
    let forge = match &provider.forge {
        Some(Ok(f)) => f.clone(),
        Some(Err(e)) => {
            let msg = format!("failed to initialize notifier for provider '{name}': {e}");
            return end_early(shared, record, Verdict::Failed, msg);
        }
        None => {
            return end_early(
                shared,
                record,
                Verdict::Skipped,
                "the provider is no longer a commit-status type",
            );
        }
    };
    let own_link = settings
        .public_url
        .as_ref()
        .map(|base| format!("{}/deliveries/{}", base.trim_end_matches('/'), record.seq));
    if record.target_url.is_none() {
        record.target_url = own_link.clone();
    }
    if superseded_progressing(&shared.outbox, record) {
        return end_early(
            shared,
            record,
            Verdict::Skipped,
            "the commit already has its final state; in-progress not posted again",
        );
    }
    let ev = crate::route::status_event(record, provider);
    let plan = match forge.plan(&ev, settings.progressing) {
        Ok(Some(plan)) if settings.read_before_write => plan,
        // Writing a state the forge already shows is harmless on every forge (GitHub, Gitea
        // and Azure append, Bitbucket updates by key, GitLab refuses with a 400 that means
        // "already set"), so the duplicate check's read is only made on request.
        Ok(Some(plan)) => plan.without_read(),
        Ok(None) => {
            return end_early(shared, record, Verdict::Skipped, "progressing event");
        }
        Err(e) => {
            return end_early(shared, record, Verdict::Failed, e.to_string());
        }
    };
    // Our delivery page's link names this delivery, so it differs between deliveries of the
    // same state; left in the fingerprint, no repeat (an event and a healed state that agree,
    // a resync) would ever be recognised as already posted.
    let fingerprint = match own_link.filter(|l| record.target_url.as_deref() == Some(l)) {
        Some(link) => plan.fingerprint_without(&link),
        None => plan.fingerprint(),
    };
    if shared
        .outbox
        .posted(&record.key())
        .ok()
        .flatten()
        .as_deref()
        == Some(fingerprint.as_str())
    {
        tracing::debug!(provider = %record.provider, object = %record.object, commit = %record.sha, status = %record.status_id, state = %record.state, "commit status already posted, skipping");
        done(
            shared,
            record,
            Verdict::AlreadySet,
            Some(fingerprint),
            None,
            Some("identical to the last status posted; no API call".into()),
        );
        return None;
    }

    let host = origin(&plan.write.url);
    let budget = format!("{host} {}", forge.credential_fingerprint());
    let requests = 1 + u32::from(plan.read.is_some());
    let gate = shared
        .pacer
        .admit(&budget, &record.key(), requests, now_ms());
    crate::pacing::report(&settings.metrics, &shared.pacer, &budget, record);
    if let Gate::WaitUntil(at) = gate {
        // Not an attempt: the delivery waits for its turn on the credential, and a newer
        // state of the same key replaces it meanwhile (only final states are sent). Waiting
        // never outlives the delivery: it wakes up to expire at its max age.
        let expires = record.accepted_ms + settings.max_age.as_millis() as i64 + 1;
        return Some(at.min(expires));
    }
    let host_limit = {
        let mut hosts = shared.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts
            .entry(host.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(settings.max_in_flight_per_host.max(1))))
            .clone()
    };
    let _host_permit = host_limit.acquire().await.ok()?;

    record.attempts += 1;
    let attempts = record.attempts;
    let started = std::time::Instant::now();
    // With --read-before-write the read is conditional when a validator for it is kept.
    let kept = plan.read.as_ref().and_then(|read| {
        shared
            .outbox
            .validator(&record.provider_uid, &read.url)
            .ok()
            .flatten()
    });
    let (result, exchange) = forge.execute_with(&plan, kept.as_ref()).await;
    if let Some(v) = exchange.validator.clone() {
        shared.outbox.keep_validator(&record.provider_uid, v);
    }
    let answered = result
        .as_ref()
        .map_or_else(|e| e.status().is_some(), |_| true);
    // A spent budget makes every delivery on it wait for the reset the forge states: that
    // wait, like any the forge asks for, is capped at --max-retry-delay (a reset ten years
    // out, or in milliseconds read as seconds, must not hold statuses for years). A budget
    // with requests left keeps its real reset, over which they are spread.
    let mut rate = exchange.rate_limit;
    if let Some(r) = rate.as_mut().filter(|r| r.remaining == Some(0)) {
        let cap = now_ms() + settings.max_retry_delay.as_millis() as i64;
        r.reset_at_ms = r.reset_at_ms.map(|t| t.min(cap));
    }
    shared.pacer.answered(&budget, rate, answered, now_ms());
    {
        let m = &settings.metrics;
        crate::pacing::count(m, record, &exchange);
        let forge_label = crate::metrics::ForgeLabel {
            forge: record.forge.clone(),
        };
        m.attempt_duration
            .get_or_create(&forge_label)
            .observe(started.elapsed().as_secs_f64());
        let status = match &result {
            Ok(_) => Some(200),
            Err(e) => e.status(),
        };
        m.attempts
            .get_or_create(&crate::metrics::AttemptLabels {
                forge: record.forge.clone(),
                status_class: crate::metrics::status_class(status),
            })
            .inc();
        if let Some(left) = forge.rate_limit_remaining() {
            m.budget_remaining
                .get_or_create(&crate::metrics::BudgetLabels {
                    forge: record.forge.clone(),
                    provider: record.provider.clone(),
                })
                .set(left as i64);
        }
        if let Err(e) = &result {
            if e.retry() != Retry::No {
                m.retries.get_or_create(&forge_label).inc();
            }
            if matches!(e.status(), Some(429))
                || (matches!(e.retry(), Retry::After(_)) && e.status() == Some(403))
            {
                m.rate_limited.get_or_create(&forge_label).inc();
            }
        }
    }
    match result {
        Ok(sent) => {
            let verdict = match sent {
                Sent::Posted => Verdict::Posted,
                Sent::AlreadySet | Sent::AlreadyInState => Verdict::AlreadySet,
            };
            let (http_status, note) = match sent {
                Sent::AlreadySet if exchange.not_modified => (
                    Some(304),
                    Some("the forge already shows this status: its statuses are unchanged (304 Not Modified) since the read that showed it".to_owned()),
                ),
                Sent::Posted if exchange.not_modified => (
                    None,
                    Some("the read was answered 304 Not Modified: the kept answer, unchanged, showed another state, so the status was written".to_owned()),
                ),
                Sent::AlreadyInState => (
                    Some(400),
                    Some(format!(
                        "{} already shows this state: it refused the transition (HTTP 400 \"Cannot transition status\"), so nothing changed",
                        record.forge
                    )),
                ),
                _ => (None, None),
            };
            tracing::info!(provider = %record.provider, alert = %record.alert, object = %record.object, commit = %record.sha, status = %record.status_id, state = %plan.state, attempts, already_set = verdict == Verdict::AlreadySet, "commit status posted");
            record.attempt_log.push(Attempt {
                time: rfc3339(now_ms()),
                result: if verdict == Verdict::Posted {
                    "posted"
                } else {
                    "already set"
                }
                .into(),
                http_status,
                message: note.clone(),
            });
            done(
                shared,
                record,
                verdict,
                Some(fingerprint),
                http_status,
                note,
            );
            None
        }
        Err(e) => {
            let message = crate::route::Routed::failure_message(
                &record.object,
                crate::route::Stage::Send,
                &e.to_string(),
            );
            let wait = match e.retry() {
                Retry::No => None,
                Retry::Backoff => Some(backoff(settings, record.attempts)),
                Retry::After(d) => {
                    // The forge's wish, within our own bound: `Retry-After: 86400` must not
                    // park a status for a day.
                    let d = d.min(settings.max_retry_delay);
                    if matches!(e.status(), Some(429 | 403)) {
                        // The budget is per credential: everyone using it waits.
                        let now = now_ms();
                        shared.pacer.spend(&budget, now + d.as_millis() as i64, now);
                        crate::pacing::report(&settings.metrics, &shared.pacer, &budget, record);
                    }
                    Some(d.max(Duration::from_millis(10)))
                }
            };
            let attempt = Attempt {
                time: rfc3339(now_ms()),
                result: if wait.is_some() { "retrying" } else { "failed" }.into(),
                http_status: e.status(),
                message: Some(e.to_string()),
            };
            match wait {
                Some(wait)
                    if (now_ms() + wait.as_millis() as i64 - record.accepted_ms)
                        <= settings.max_age.as_millis() as i64 =>
                {
                    tracing::warn!(provider = %record.provider, alert = %record.alert, object = %record.object, commit = %record.sha, status = %record.status_id, http_status = e.status(), attempts, retry_in = ?wait, error = %message, "commit status not delivered yet, will retry");
                    let at = now_ms() + wait.as_millis() as i64;
                    record.attempt_log.push(attempt.clone());
                    record.last_error = Some(message.clone());
                    record.not_before_ms = at;
                    shared.outbox.finish(Finish::Retry {
                        key: record.key(),
                        seq: record.seq,
                        attempts,
                        not_before_ms: at,
                        error: message,
                        attempt,
                    });
                    Some(at)
                }
                Some(_) => {
                    record.attempt_log.push(attempt);
                    tracing::error!(provider = %record.provider, alert = %record.alert, object = %record.object, commit = %record.sha, status = %record.status_id, http_status = e.status(), attempts, error = %message, "failed to send notification: delivery expired");
                    done(
                        shared,
                        record,
                        Verdict::Expired,
                        None,
                        e.status(),
                        Some(message),
                    );
                    None
                }
                None => {
                    record.attempt_log.push(attempt);
                    tracing::error!(provider = %record.provider, alert = %record.alert, object = %record.object, commit = %record.sha, status = %record.status_id, http_status = e.status(), attempts, error = %message, "failed to send notification");
                    done(
                        shared,
                        record,
                        Verdict::Failed,
                        None,
                        e.status(),
                        Some(message),
                    );
                    None
                }
            }
        }
    }
}

/// Ends a delivery that never reached the forge: logs it and records the outcome.
fn end_early(
    shared: &Shared,
    record: &Pending,
    verdict: Verdict,
    message: impl ToString,
) -> Option<i64> {
    let message = message.to_string();
    report(record, verdict, &message);
    done(shared, record, verdict, None, None, Some(message));
    None
}

/// Logs a delivery that ended without reaching the forge.
fn report(r: &Pending, verdict: Verdict, message: &str) {
    match verdict {
        Verdict::Skipped | Verdict::AlreadySet | Verdict::Posted => {
            tracing::info!(provider = %r.provider, alert = %r.alert, object = %r.object, commit = %r.sha, status = %r.status_id, reason = %message, "commit status skipped")
        }
        Verdict::Failed | Verdict::Expired => {
            tracing::error!(provider = %r.provider, alert = %r.alert, object = %r.object, commit = %r.sha, status = %r.status_id, error = %crate::route::Routed::failure_message(&r.object, crate::route::Stage::Send, message), "failed to send notification")
        }
    }
}

/// The reason of events that post the in-progress state.
const PROGRESSING: &str = "Progressing";

/// A `Progressing` delivery for a (Provider, commit, status name) that already had success or
/// failure posted: kustomize-controller sends one on every drift correction, and posting it
/// would turn a finished commit back to pending and spend the forge's per-commit status cap.
pub fn superseded_progressing(outbox: &Outbox, record: &Pending) -> bool {
    record.reason == PROGRESSING && outbox.final_posted(&record.key()).unwrap_or(false)
}

fn done(
    shared: &Shared,
    r: &Pending,
    verdict: Verdict,
    fingerprint: Option<String>,
    http_status: Option<u16>,
    message: Option<String>,
) {
    if matches!(verdict, Verdict::Failed | Verdict::Expired)
        && let Some(m) = &message
    {
        let text = if m.starts_with("failed to send notification for ") {
            m.clone()
        } else {
            crate::route::Routed::failure_message(&r.object, crate::route::Stage::Send, m)
        };
        shared
            .settings
            .notices
            .warning(&r.alert, crate::hooks::reason::DISPATCH_FAILED, text);
    }
    shared
        .settings
        .metrics
        .deliveries
        .get_or_create(&crate::metrics::OutcomeLabels {
            forge: r.forge.clone(),
            outcome: serde_json::to_value(verdict)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
        })
        .inc();
    let now = now_ms();
    shared.outbox.finish(Finish::Done {
        key: r.key(),
        seq: r.seq,
        final_state: fingerprint.is_some() && r.reason != PROGRESSING,
        fingerprint,
        outcome: Box::new(Outcome {
            id: 0,
            time: rfc3339(now),
            outcome: verdict,
            provider: r.provider.clone(),
            alert: r.alert.clone(),
            object: r.object.clone(),
            repository: r.repository.clone(),
            forge: r.forge.clone(),
            commit: r.sha.clone(),
            status: r.status_id.clone(),
            state: r.state.clone(),
            description: r.description.clone(),
            attempts: r.attempts,
            http_status,
            message,
            event_message: r.message.clone(),
            accepted: rfc3339(r.accepted_ms),
            delivery: r.seq,
            timeline: r.attempt_log.clone(),
            target_url: r.target_url.clone(),
        }),
    });
}

/// Exponential backoff with full jitter: uniform in [0, min(max, min·2^attempts)].
fn backoff(settings: &Settings, attempts: u32) -> Duration {
    backoff_delay(settings.min_retry_delay, settings.max_retry_delay, attempts)
}

/// The same rule for anything else retried with `--min-retry-delay`/`--max-retry-delay`
/// (forwarded events).
pub(crate) fn backoff_delay(min: Duration, max: Duration, attempts: u32) -> Duration {
    let cap = min.saturating_mul(1u32 << attempts.min(20)).min(max);
    let ms = cap.as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(ms / 10..=ms).max(1))
}

/// `scheme://host[:port]` of a URL, the unit of per-host limits.
fn origin(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let s = Settings {
            min_retry_delay: Duration::from_millis(100),
            max_retry_delay: Duration::from_secs(2),
            max_age: Duration::from_secs(60),
            max_in_flight: 1,
            max_in_flight_per_host: 1,
            progressing: ProgressingMode::Pending,
            notices: Arc::new(crate::hooks::LogOnly),
            public_url: None,
            metrics: crate::metrics::Metrics::new(),
            read_before_write: false,
        };
        for attempts in 0..30 {
            let cap =
                Duration::from_millis(100 * (1u64 << attempts.min(20))).min(Duration::from_secs(2));
            let d = backoff(&s, attempts);
            assert!(d <= cap && d >= cap / 10, "{attempts}: {d:?} vs {cap:?}");
        }
    }

    #[test]
    fn origins() {
        assert_eq!(
            origin("https://api.github.com/repos/o/r"),
            "https://api.github.com"
        );
        assert_eq!(origin("http://127.0.0.1:8080/x"), "http://127.0.0.1:8080");
    }
}
