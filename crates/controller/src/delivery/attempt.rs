//! One attempt at one delivery, the only forge I/O of the controller: find the forge in the
//! current configuration, take the host's slot and then a global one, read the full record
//! from the store, plan, skip what was posted already, send, and let the policy decide. Each
//! step is a small function; [`Deliverer::attempt_one`] only strings them together.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use rand::Rng;
use tokio::sync::Semaphore;

use notify::{Exchange, Forge, Outcome as Sent, Plan};

use crate::config::catalog::SharedCatalog;
use crate::delivery::pacing::Gate;
use crate::delivery::plan::{self, PROGRESSING, Prepared};
use crate::delivery::policy::{Answer, Decision};
use crate::delivery::scheduler::{Attempter, Budget, Budgets, Next};
use crate::delivery::store::{
    Attempt, Entry, Finish, Outbox, Pending, StoreError, Verdict, rfc3339,
};
use crate::delivery::{DeliveryError, Settings, Skip};
use crate::metrics::{AttemptLabels, BudgetLabels, ErrorLabels, ForgeLabel, OutcomeLabels};

/// First wait before committing an outcome again after the store refused it.
const RECORD_RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(100);
/// Longest wait between two tries; the store itself retries its writes at most this far apart.
const RECORD_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// A pending record as an attempt reads it: the record, what was last posted for its key, and
/// whether a final state was ever posted for it.
type Loaded = (Pending, Option<String>, bool);

/// Sends deliveries for the scheduler.
pub struct Deliverer {
    outbox: Outbox,
    catalog: SharedCatalog,
    settings: Settings,
    global: Semaphore,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Where a delivery goes, as the current configuration says.
struct Target {
    provider: Arc<crate::config::catalog::ProviderEntry>,
    forge: Arc<Forge>,
    /// `scheme://host[:port]` of the repository: the unit of per-host limits.
    host: String,
    budget: Budget,
}

/// How a delivery ended.
enum End {
    /// The forge shows the status (`Posted` or `AlreadySet`); `note` explains a skipped call
    /// or the forge's answer (with its `http_status`).
    Landed {
        verdict: Verdict,
        fingerprint: String,
        http_status: Option<u16>,
        note: Option<String>,
    },
    Skipped(Skip),
    Failed(DeliveryError),
    Expired(DeliveryError),
}

impl End {
    fn verdict(&self) -> Verdict {
        match self {
            End::Landed { verdict, .. } => *verdict,
            End::Skipped(_) => Verdict::Skipped,
            End::Failed(_) => Verdict::Failed,
            End::Expired(_) => Verdict::Expired,
        }
    }

    fn error(&self) -> Option<&DeliveryError> {
        match self {
            End::Failed(e) | End::Expired(e) => Some(e),
            End::Landed { .. } | End::Skipped(_) => None,
        }
    }
}

impl Attempter for Deliverer {
    type Entry = Entry;

    fn budget(&self, entry: &Entry) -> Option<Budget> {
        self.target(entry).ok().map(|t| t.budget)
    }

    fn attempt(self: Arc<Self>, entry: Entry, budgets: Arc<Budgets>) -> BoxFuture<'static, Next> {
        Box::pin(async move { self.attempt_one(entry, &budgets).await })
    }
}

impl Deliverer {
    pub fn new(outbox: Outbox, catalog: SharedCatalog, settings: Settings) -> Deliverer {
        Deliverer {
            global: Semaphore::new(settings.max_in_flight.max(1)),
            outbox,
            catalog,
            settings,
            hosts: Mutex::default(),
        }
    }

    fn now(&self) -> i64 {
        self.settings.clock.now_ms()
    }

    async fn attempt_one(&self, entry: Entry, budgets: &Budgets) -> Next {
        let policy = self.settings.policy();
        if policy.expired(entry.accepted_ms, self.now()) {
            return self.end_unsent(&entry, None).await;
        }
        let target = match self.target(&entry) {
            Ok(target) => target,
            Err(end) => return self.end_unsent(&entry, Some(*end)).await,
        };
        if let Some(next) = self.held(&entry, &target, budgets) {
            return next;
        }
        // The host's slot first: waiting for it must not hold a global one.
        let host = self.host_slot(&target.host);
        let (Ok(_host), Ok(_global)) = (host.acquire().await, self.global.acquire().await) else {
            return Next::Done;
        };
        let (mut record, posted, final_posted) = match self.load(&entry).await {
            Ok(Some(loaded)) => loaded,
            // Finished or superseded meanwhile; a newer state is scheduled on its own.
            Ok(None) => return Next::Done,
            Err(e) => return self.store_failed(&entry, e),
        };
        if final_posted && record.reason == PROGRESSING {
            // kustomize-controller sends one on every drift correction; posting it would turn a
            // finished commit back to pending and spend the forge's per-commit status cap.
            let end = End::Skipped(Skip::SupersededProgressing);
            return self.end_early(record, end).await;
        }
        if record.delivery.planned.is_none() {
            // Stored by an earlier build, which planned at send time with the current Provider.
            record.status_id_from_expr = target.provider.exprs.status.is_some();
        }
        let settings = &self.settings;
        let public_url = settings.public_url.as_deref();
        let (plan, fingerprint) =
            match plan::requests(&target.forge, &mut record, settings.progressing, public_url) {
                Ok(Some(Prepared { plan, fingerprint })) if settings.read_before_write => {
                    (plan, fingerprint)
                }
                // Writing a state the forge already shows is harmless on every forge (GitHub,
                // Gitea and Azure append, Bitbucket updates by key, GitLab refuses with a 400
                // that means "already set"), so the duplicate check's read is only made on
                // request.
                Ok(Some(Prepared { plan, fingerprint })) => (plan.without_read(), fingerprint),
                Ok(None) => {
                    return self
                        .end_early(record, End::Skipped(Skip::Progressing))
                        .await;
                }
                Err(e) => return self.end_early(record, End::Failed(e.into())).await,
            };
        if posted.as_deref() == Some(fingerprint.as_str()) {
            tracing::debug!(provider = %record.delivery.provider, object = %record.delivery.object, commit = %record.delivery.sha, status = %record.delivery.status_id, state = %record.delivery.state, "commit status already posted, skipping");
            let end = End::Landed {
                verdict: Verdict::AlreadySet,
                fingerprint,
                http_status: None,
                note: Some("identical to the last status posted; no API call".into()),
            };
            return self.end(record, end).await;
        }
        // Admitted on the credential's budget (or told when), just before sending: the budget
        // may have been spent, or be paced, while this waited for its slots.
        let now = self.now();
        let requests = 1 + u32::from(plan.read.is_some());
        let gate = budgets.admit(&target.budget, &record.key(), requests, now);
        crate::delivery::pacing::report(&self.settings.metrics, budgets, &target.budget, &record);
        if let Gate::WaitUntil(until_ms) = gate {
            // Not an attempt: the delivery waits for its turn on the credential, and a newer
            // state of the same key replaces it meanwhile (only final states are sent).
            let answer = Answer::BudgetSpent { until_ms };
            let decision = policy.decide(answer, record.attempts, record.accepted_ms, now, 0.0);
            return Next::from_decision(decision, None);
        }
        record.attempts += 1;
        let (result, exchange) = self.send(&target, &plan, &record, budgets).await;
        let answer = match &result {
            Ok(sent) => Answer::Landed(*sent),
            Err(e) => Answer::Failed(e.class()),
        };
        let jitter = rand::rng().random::<f64>();
        let decision = policy.decide(
            answer,
            record.attempts,
            record.accepted_ms,
            self.now(),
            jitter,
        );
        // A spent budget holds every delivery on the credential, even when this one expires.
        if let Err(e) = &result
            && let notify::Class::RateLimited { after } = e.class()
        {
            let wait = policy.wait(after, record.attempts, jitter);
            let until = self.now() + wait.as_millis() as i64;
            budgets.spend(&target.budget, until, self.now());
            crate::delivery::pacing::report(
                &self.settings.metrics,
                budgets,
                &target.budget,
                &record,
            );
        }
        self.settle(
            record,
            &plan,
            fingerprint,
            (result, exchange),
            decision,
            target.budget,
        )
        .await
    }

    /// The Provider, its forge and its limits, from the current configuration; or how the
    /// delivery ends if it has none.
    fn target(&self, entry: &Entry) -> Result<Target, Box<End>> {
        let catalog = self
            .catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (ns, name) = entry
            .provider
            .split_once('/')
            .unwrap_or(("", &entry.provider));
        let provider = catalog
            .provider(ns, name)
            .filter(|p| p.provider.metadata.uid == entry.provider_uid())
            .ok_or(Box::new(End::Skipped(Skip::ProviderGone)))?;
        if provider.provider.spec.suspend {
            return Err(Box::new(End::Skipped(Skip::ProviderSuspended)));
        }
        let forge = match &provider.forge {
            Some(Ok(forge)) => forge.clone(),
            Some(Err(e)) => {
                return Err(Box::new(End::Failed(DeliveryError::Provider {
                    name: name.to_string(),
                    reason: e.clone(),
                })));
            }
            None => return Err(Box::new(End::Skipped(Skip::NotCommitStatus))),
        };
        let host = origin(&provider.address);
        let budget = format!("{host} {}", forge.credential_fingerprint()).into();
        Ok(Target {
            provider: provider.clone(),
            forge,
            host,
            budget,
        })
    }

    /// `Some` when the target's budget is spent: when to look again, without an attempt.
    fn held(&self, entry: &Entry, target: &Target, budgets: &Budgets) -> Option<Next> {
        let now = self.now();
        let until_ms = budgets.blocked_until(&target.budget, now)?;
        let answer = Answer::BudgetSpent { until_ms };
        let decision = self
            .settings
            .policy()
            .decide(answer, 0, entry.accepted_ms, now, 0.0);
        Some(Next::from_decision(decision, None))
    }

    fn host_slot(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts
            .entry(host.to_string())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(self.settings.max_in_flight_per_host.max(1)))
            })
            .clone()
    }

    /// The full record, if the store still holds this delivery (and not a newer state of its
    /// key), and what was last posted for the key.
    async fn load(&self, entry: &Entry) -> Result<Option<Loaded>, StoreError> {
        let outbox = self.outbox.clone();
        let key = entry.key.clone();
        let (record, posted, final_posted) = tokio::task::spawn_blocking(move || {
            let (record, posted) = outbox.load(&key)?;
            Ok::<_, StoreError>((record, posted, outbox.final_posted(&key)?))
        })
        .await
        .unwrap_or(Err(StoreError::Closed))?;
        Ok(record
            .filter(|r| r.seq == entry.seq)
            .map(|r| (r, posted, final_posted)))
    }

    /// The store cannot be read: try again soon, without calling the forge.
    fn store_failed(&self, entry: &Entry, e: StoreError) -> Next {
        let error = DeliveryError::Store(e);
        tracing::warn!(provider = %entry.provider, error = %error, "cannot read a pending delivery; will retry");
        self.count_error("", error.name());
        Next::RetryAt(self.now() + self.settings.min_retry_delay.as_millis() as i64)
    }

    /// Sends the plan and counts the attempt.
    async fn send(
        &self,
        target: &Target,
        plan: &Plan,
        record: &Pending,
        budgets: &Budgets,
    ) -> (Result<Sent, notify::DeliveryError>, Exchange) {
        let forge = &target.forge;
        let started = std::time::Instant::now();
        // With --read-before-write the read is conditional when a validator for it is kept.
        let kept = match &plan.read {
            Some(read) => {
                self.validator(&record.delivery.provider_uid, &read.url)
                    .await
            }
            None => None,
        };
        let (result, exchange) = forge.execute_with(plan, kept.as_ref()).await;
        if let Some(v) = exchange.validator.clone() {
            self.outbox.keep_validator(&record.delivery.provider_uid, v);
        }
        let answered = result
            .as_ref()
            .map_or_else(|e| e.status().is_some(), |_| true);
        // A spent budget makes every delivery on it wait for the reset the forge states: that
        // wait, like any the forge asks for, is capped at --max-retry-delay. A budget with
        // requests left keeps its real reset, over which they are spread.
        let now = self.now();
        let mut rate = exchange.rate_limit;
        if let Some(r) = rate.as_mut().filter(|r| r.remaining == Some(0)) {
            let cap = now + self.settings.max_retry_delay.as_millis() as i64;
            r.reset_at_ms = r.reset_at_ms.map(|t| t.min(cap));
        }
        budgets.answered(&target.budget, rate, answered, now);
        let m = &self.settings.metrics;
        crate::delivery::pacing::count(m, record, &exchange);
        let forge_label = ForgeLabel {
            forge: record.delivery.forge.clone(),
        };
        m.attempt_duration
            .get_or_create(&forge_label)
            .observe(started.elapsed().as_secs_f64());
        let status = match &result {
            Ok(_) => Some(200),
            Err(e) => e.status(),
        };
        m.attempts
            .get_or_create(&AttemptLabels {
                forge: record.delivery.forge.clone(),
                status_class: crate::metrics::status_class(status),
            })
            .inc();
        if let Some(left) = forge.rate_limit_remaining() {
            m.budget_remaining
                .get_or_create(&BudgetLabels {
                    forge: record.delivery.forge.clone(),
                    provider: record.delivery.provider.clone(),
                })
                .set(left as i64);
        }
        if let Err(e) = &result {
            if matches!(e.class(), notify::Class::RateLimited { .. }) {
                m.rate_limited.get_or_create(&forge_label).inc();
            }
            self.count_error(
                &record.delivery.forge,
                DeliveryError::forge_error_name(e.class()),
            );
        }
        (result, exchange)
    }

    /// The validator kept for a conditional read, if any (issue 12).
    async fn validator(&self, provider_uid: &str, url: &str) -> Option<notify::Validator> {
        let (outbox, uid, url) = (self.outbox.clone(), provider_uid.to_owned(), url.to_owned());
        tokio::task::spawn_blocking(move || outbox.validator(&uid, &url))
            .await
            .ok()?
            .ok()
            .flatten()
    }

    /// Records what the policy decided about a sent attempt.
    async fn settle(
        &self,
        mut record: Pending,
        plan: &Plan,
        fingerprint: String,
        (result, exchange): (Result<Sent, notify::DeliveryError>, Exchange),
        decision: Decision,
        budget: Budget,
    ) -> Next {
        let r = &record;
        let attempts = r.attempts;
        let e = match result {
            Ok(sent) => {
                let verdict = match sent {
                    Sent::Posted => Verdict::Posted,
                    Sent::AlreadySet | Sent::AlreadyInState => Verdict::AlreadySet,
                };
                tracing::info!(provider = %r.delivery.provider, alert = %r.delivery.alert, object = %r.delivery.object, commit = %r.delivery.sha, status = %r.delivery.status_id, state = %plan.state, attempts, already_set = verdict == Verdict::AlreadySet, "commit status posted");
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
                            r.delivery.forge
                        )),
                    ),
                    Sent::Posted | Sent::AlreadySet => (None, None),
                };
                record.log(Attempt {
                    time: rfc3339(self.now()),
                    result: if verdict == Verdict::Posted {
                        "posted"
                    } else {
                        "already set"
                    }
                    .into(),
                    http_status,
                    message: note.clone(),
                });
                let end = End::Landed {
                    verdict,
                    fingerprint,
                    http_status,
                    note,
                };
                return self.end(record, end).await;
            }
            Err(e) => e,
        };
        let message = crate::config::hooks::failure_message(
            &r.delivery.object,
            crate::config::hooks::Stage::Send,
            &e.to_string(),
        );
        let at = match decision {
            Decision::RetryAt(at) | Decision::WaitBudget(at) => at,
            Decision::Done(verdict) => {
                record.log(self.attempt_entry("failed", Some(&e)));
                let r = &record;
                let end = if verdict == Verdict::Expired {
                    tracing::error!(provider = %r.delivery.provider, alert = %r.delivery.alert, object = %r.delivery.object, commit = %r.delivery.sha, status = %r.delivery.status_id, http_status = e.status(), attempts, error = %message, "failed to send notification: delivery expired");
                    End::Expired(e.into())
                } else {
                    tracing::error!(provider = %r.delivery.provider, alert = %r.delivery.alert, object = %r.delivery.object, commit = %r.delivery.sha, status = %r.delivery.status_id, http_status = e.status(), attempts, error = %message, "failed to send notification");
                    End::Failed(e.into())
                };
                return self.end(record, end).await;
            }
        };
        let retry_in = std::time::Duration::from_millis((at - self.now()).max(0) as u64);
        tracing::warn!(provider = %r.delivery.provider, alert = %r.delivery.alert, object = %r.delivery.object, commit = %r.delivery.sha, status = %r.delivery.status_id, http_status = e.status(), attempts, retry_in = ?retry_in, error = %message, "commit status not delivered yet, will retry");
        self.settings
            .metrics
            .retries
            .get_or_create(&ForgeLabel {
                forge: r.delivery.forge.clone(),
            })
            .inc();
        let finish = Finish::Retry {
            key: r.key(),
            seq: r.seq,
            attempts,
            not_before_ms: at,
            error: message,
            attempt: self.attempt_entry("retrying", Some(&e)),
        };
        // If the store cannot record the attempt, the retry still happens: the record keeps
        // its older count and time line.
        if let Err(e) = self.outbox.finish(finish).await {
            tracing::warn!(error = %e, "cannot record a failed attempt");
        }
        Next::from_decision(decision, Some(budget))
    }

    fn attempt_entry(&self, result: &str, error: Option<&notify::DeliveryError>) -> Attempt {
        Attempt {
            time: rfc3339(self.now()),
            result: result.into(),
            http_status: error.and_then(|e| e.status()),
            message: error.map(|e| e.to_string()),
        }
    }

    /// Ends a delivery before anything was sent: expired (`None`), or as `end` says.
    async fn end_unsent(&self, entry: &Entry, end: Option<End>) -> Next {
        let record = match self.load(entry).await {
            Ok(Some((record, _, _))) => record,
            Ok(None) => return Next::Done,
            Err(e) => return self.store_failed(entry, e),
        };
        let end = end.unwrap_or_else(|| {
            End::Expired(DeliveryError::Expired {
                max_age: self.settings.max_age,
                last_error: record.last_error.clone(),
            })
        });
        self.end_early(record, end).await
    }

    /// Ends a delivery that never reached the forge: logs it and records the outcome.
    async fn end_early(&self, record: Pending, end: End) -> Next {
        report(&record, &end);
        self.end(record, end).await
    }

    /// Records how a delivery ended: Warning event, metric, outcome. If the store cannot
    /// record it, the delivery stays pending and is looked at again soon (its next attempt
    /// finds the forge's state, so nothing is posted twice in a different state).
    async fn end(&self, r: Pending, end: End) -> Next {
        let verdict = end.verdict();
        let http_status = match &end {
            End::Landed { http_status, .. } => *http_status,
            _ => end.error().and_then(DeliveryError::http_status),
        };
        if let Some(e) = end.error() {
            self.settings.notices.warning(
                &r.delivery.alert,
                crate::config::hooks::reason::DISPATCH_FAILED,
                e.notice(&r.delivery.object),
            );
            if !matches!(e, DeliveryError::Forge(_)) {
                self.count_error(&r.delivery.forge, e.name());
            }
        }
        let (fingerprint, message) = match end {
            End::Landed {
                fingerprint, note, ..
            } => (Some(fingerprint), note),
            End::Skipped(skip) => (None, Some(skip.to_string())),
            End::Failed(ref e) | End::Expired(ref e) => {
                (None, Some(e.history_message(&r.delivery.object)))
            }
        };
        let now = self.now();
        let forge = r.delivery.forge.clone();
        let finish = Finish::Done {
            key: r.key(),
            seq: r.seq,
            final_state: fingerprint.is_some() && r.reason != PROGRESSING,
            fingerprint,
            outcome: Box::new(r.into_outcome(rfc3339(now), verdict, http_status, message)),
        };
        if let Err(e) = self.record_end(finish).await {
            tracing::warn!(error = %e, "cannot record how a delivery ended; it stays pending");
            return Next::RetryAt(self.now() + self.settings.min_retry_delay.as_millis() as i64);
        }
        self.settings
            .metrics
            .deliveries
            .get_or_create(&OutcomeLabels {
                forge,
                outcome: verdict.name().into(),
            })
            .inc();
        Next::Done
    }

    /// Commits how a delivery ended, trying again while the store heals: the forge may show
    /// the status already, and attempting the delivery again would post it again. The slots
    /// stay taken meanwhile, which holds back attempts whose outcome could not be recorded
    /// either.
    async fn record_end(&self, finish: Finish) -> Result<(), StoreError> {
        let mut wait = RECORD_RETRY_MIN;
        loop {
            match self.outbox.finish(finish.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) if e.retry() => {
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot record how a delivery ended yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RECORD_RETRY_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn count_error(&self, forge: &str, name: &'static str) {
        self.settings
            .metrics
            .delivery_errors
            .get_or_create(&ErrorLabels {
                forge: forge.into(),
                error: name.into(),
            })
            .inc();
    }
}

/// Logs a delivery that ended without reaching the forge.
fn report(r: &Pending, end: &End) {
    match end {
        End::Failed(e) | End::Expired(e) => {
            tracing::error!(provider = %r.delivery.provider, alert = %r.delivery.alert, object = %r.delivery.object, commit = %r.delivery.sha, status = %r.delivery.status_id, error = %e.notice(&r.delivery.object), kind = e.name(), "failed to send notification")
        }
        End::Skipped(skip) => {
            tracing::info!(provider = %r.delivery.provider, alert = %r.delivery.alert, object = %r.delivery.object, commit = %r.delivery.sha, status = %r.delivery.status_id, reason = %skip, "commit status skipped")
        }
        End::Landed { .. } => {}
    }
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
    fn origins() {
        assert_eq!(
            origin("https://api.github.com/repos/o/r"),
            "https://api.github.com"
        );
        assert_eq!(origin("http://127.0.0.1:8080/x"), "http://127.0.0.1:8080");
        assert_eq!(
            origin("https://user:token@github.com/o/r"),
            "https://github.com"
        );
    }
}
