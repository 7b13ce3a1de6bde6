//! The retry decision, and nothing else: a pure function of what one attempt got back, how many
//! attempts were made, how old the delivery is and the settings. The forge layer says what an
//! answer means ([`notify::Class`]); this module alone turns that into done / retry at T / wait
//! for the credential's budget until T.

use std::time::Duration;

use notify::Class;

use crate::delivery::record::Verdict;

/// The settings the decision depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// First retry waits up to this long; each further retry doubles it.
    pub min_retry_delay: Duration,
    /// Cap of every wait: our backoff and what a forge asks for (`Retry-After`, reset headers).
    pub max_retry_delay: Duration,
    /// Deliveries older than this are given up as expired, budget waits included.
    pub max_age: Duration,
}

/// What one attempt got back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The forge now shows the status.
    Landed(notify::Outcome),
    /// The forge refused or could not be reached, for this reason.
    Failed(Class),
    /// Not sent: the credential's budget is spent until this time (ms since the epoch).
    BudgetSpent { until_ms: i64 },
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Finished for good.
    Done(Verdict),
    /// Try this delivery again at this time (ms since the epoch).
    RetryAt(i64),
    /// The credential's budget is spent: this delivery, and every other on the same credential,
    /// waits until this time (ms since the epoch).
    WaitBudget(i64),
}

/// Shortest wait before a retry, so a forge saying "now" does not make a busy loop.
const MIN_WAIT: Duration = Duration::from_millis(10);

impl Policy {
    /// When a delivery accepted at `accepted_ms` expires.
    pub fn deadline(&self, accepted_ms: i64) -> i64 {
        accepted_ms.saturating_add(millis(self.max_age))
    }

    /// Whether a delivery accepted at `accepted_ms` is past its age at `now_ms`.
    pub fn expired(&self, accepted_ms: i64, now_ms: i64) -> bool {
        now_ms > self.deadline(accepted_ms)
    }

    /// The decision after an attempt. `attempts` counts this one; `jitter` in [0, 1] picks the
    /// backoff within its range (the caller draws it, so that this stays a function).
    pub fn decide(
        &self,
        answer: Answer,
        attempts: u32,
        accepted_ms: i64,
        now_ms: i64,
        jitter: f64,
    ) -> Decision {
        let (wait, budget) = match answer {
            Answer::Landed(notify::Outcome::Posted) => return Decision::Done(Verdict::Posted),
            Answer::Landed(notify::Outcome::AlreadySet | notify::Outcome::AlreadyInState) => {
                return Decision::Done(Verdict::AlreadySet);
            }
            Answer::Failed(Class::Permanent) => return Decision::Done(Verdict::Failed),
            Answer::Failed(Class::Transient { after }) => {
                (self.wait(after, attempts, jitter), false)
            }
            Answer::Failed(Class::RateLimited { after }) => {
                (self.wait(after, attempts, jitter), true)
            }
            Answer::BudgetSpent { until_ms } => {
                // Someone else spent it: wait for the reset without counting an attempt. Like
                // every wait a forge sets, at most `max_retry_delay` (a hostile or confused
                // reset must not park deliveries for days), and never past the deadline,
                // where the next attempt expires it.
                let at = until_ms
                    .max(now_ms)
                    .min(now_ms.saturating_add(millis(self.max_retry_delay)))
                    .min(self.deadline(accepted_ms) + 1);
                return Decision::RetryAt(at);
            }
        };
        let at = now_ms.saturating_add(millis(wait.max(MIN_WAIT)));
        if at > self.deadline(accepted_ms) {
            Decision::Done(Verdict::Expired)
        } else if budget {
            Decision::WaitBudget(at)
        } else {
            Decision::RetryAt(at)
        }
    }

    /// What the forge asked for, else our backoff; capped at `max_retry_delay` either way.
    pub fn wait(&self, asked: Option<Duration>, attempts: u32, jitter: f64) -> Duration {
        asked
            .unwrap_or_else(|| self.backoff(attempts, jitter))
            .min(self.max_retry_delay)
    }

    /// Exponential backoff with jitter: within [cap/10, cap] for cap = min(max, min·2^attempts).
    pub fn backoff(&self, attempts: u32, jitter: f64) -> Duration {
        let cap = self
            .min_retry_delay
            .saturating_mul(1u32 << attempts.min(20))
            .min(self.max_retry_delay);
        let cap = cap.as_millis().max(1) as f64;
        let ms = cap / 10.0 + jitter.clamp(0.0, 1.0) * (cap - cap / 10.0);
        Duration::from_millis((ms as u64).max(1))
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn policy() -> Policy {
        Policy {
            min_retry_delay: S,
            max_retry_delay: 60 * S,
            max_age: 3600 * S,
        }
    }

    #[test]
    fn decisions() {
        use Answer::*;
        use Decision::*;
        let transient = |after| Failed(Class::Transient { after });
        let limited = |after| Failed(Class::RateLimited { after });
        let now = 1_000_000;
        let accepted = now - 1000;
        let old = now - 3599 * 1000;
        let spent = |s: i64| BudgetSpent {
            until_ms: now + s * 1000,
        };
        // (answer, attempts, accepted, jitter) → decision
        let table: Vec<(Answer, u32, i64, f64, Decision)> = vec![
            (
                Landed(notify::Outcome::Posted),
                1,
                accepted,
                0.0,
                Done(Verdict::Posted),
            ),
            (
                Landed(notify::Outcome::AlreadySet),
                3,
                accepted,
                0.0,
                Done(Verdict::AlreadySet),
            ),
            (
                Failed(Class::Permanent),
                1,
                accepted,
                0.0,
                Done(Verdict::Failed),
            ),
            // Backoff: cap = 1 s · 2^attempts, jitter picks within [cap/10, cap].
            (transient(None), 1, accepted, 1.0, RetryAt(now + 2000)),
            (transient(None), 1, accepted, 0.0, RetryAt(now + 200)),
            (transient(None), 3, accepted, 1.0, RetryAt(now + 8000)),
            (transient(None), 30, accepted, 1.0, RetryAt(now + 60_000)),
            // What the forge asks for replaces the backoff, capped at --max-retry-delay.
            (
                transient(Some(7 * S)),
                1,
                accepted,
                1.0,
                RetryAt(now + 7000),
            ),
            (
                transient(Some(86_400 * S)),
                1,
                accepted,
                1.0,
                RetryAt(now + 60_000),
            ),
            (
                transient(Some(Duration::ZERO)),
                1,
                accepted,
                1.0,
                RetryAt(now + 10),
            ),
            // A spent budget holds the credential, capped too.
            (
                limited(Some(30 * S)),
                1,
                accepted,
                1.0,
                WaitBudget(now + 30_000),
            ),
            (
                limited(Some(86_400 * S)),
                1,
                accepted,
                1.0,
                WaitBudget(now + 60_000),
            ),
            (limited(None), 2, accepted, 1.0, WaitBudget(now + 4000)),
            // Past the deadline: expired now, whatever waits.
            (transient(None), 1, old, 1.0, Done(Verdict::Expired)),
            (transient(Some(30 * S)), 1, old, 1.0, Done(Verdict::Expired)),
            (limited(Some(30 * S)), 1, old, 1.0, Done(Verdict::Expired)),
            (transient(Some(S / 2)), 1, old, 1.0, RetryAt(now + 500)),
            // Someone else's spent budget: wait for it, not past the deadline.
            (spent(30), 0, accepted, 0.0, RetryAt(now + 30_000)),
            (spent(30), 5, old, 0.0, RetryAt(old + 3600 * 1000 + 1)),
            (spent(-5), 0, accepted, 0.0, RetryAt(now)),
            (spent(86_400), 0, accepted, 0.0, RetryAt(now + 60_000)),
        ];
        let p = policy();
        for (answer, attempts, accepted, jitter, want) in table {
            assert_eq!(
                p.decide(answer, attempts, accepted, now, jitter),
                want,
                "{answer:?} after {attempts} attempts, accepted {}s ago",
                (now - accepted) / 1000
            );
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = Policy {
            min_retry_delay: Duration::from_millis(100),
            max_retry_delay: Duration::from_secs(2),
            max_age: Duration::from_secs(60),
        };
        for attempts in 0..30 {
            let cap =
                Duration::from_millis(100 * (1u64 << attempts.min(20))).min(Duration::from_secs(2));
            for jitter in [0.0, 0.3, 1.0] {
                let d = p.backoff(attempts, jitter);
                assert!(d <= cap && d >= cap / 10, "{attempts}: {d:?} vs {cap:?}");
            }
        }
    }

    #[test]
    fn expiry() {
        let p = policy();
        assert!(!p.expired(0, 3600 * 1000));
        assert!(p.expired(0, 3600 * 1000 + 1));
        assert_eq!(p.deadline(i64::MAX), i64::MAX);
    }
}
