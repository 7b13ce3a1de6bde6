//! Pacing of forge requests per rate-limit budget (forge host + credential fingerprint): what
//! the forges' rate-limit headers said, and when the next request on a budget may go. A budget
//! running low is spread evenly over what is left of its window instead of being spent at once
//! and then blocked; a spent one waits for its reset. Pure: every call is given the time, so
//! the rules are tested without a clock.
//!
//! The rules:
//! - Unknown budget (nothing heard yet, or its window reset): one request at a time, so that a
//!   burst learns the budget from the first answer instead of spending it blindly. A forge whose
//!   answers carry no rate-limit header is not metered.
//! - Known and not low: requests go, counted against what is left.
//! - Low (at most [`PACE_BELOW`] or a tenth of the limit left): the requests left (minus one
//!   kept in reserve) are spread evenly until the reset. Each status key gets its own slot, so a
//!   newer state of the same key replaces the queued one and keeps its place in line.
//! - Bitbucket Cloud's `X-RateLimit-NearLimit` (a rolling hour, no count, no reset): requests
//!   are spaced at the rate the limit sustains, an hour divided by the limit.
//! - Spent (an answer said 0 left, or a 429/403 asked to wait): nothing goes until then.

use std::collections::HashMap;
use std::sync::Mutex;

use notify::{Exchange, RateLimit};

use crate::delivery::store::Pending;
use crate::metrics::{Metrics, PacingLabels, RequestLabels};

/// A budget with at most this many requests left (or a tenth of its limit, if larger) is paced.
pub const PACE_BELOW: u64 = 100;
/// Requests kept in reserve when pacing, for clock skew and answers not seen yet.
const RESERVE: u64 = 1;
/// Slack after a reset time before the window is taken to be new (forges round to seconds,
/// and clocks differ).
const RESET_SLACK_MS: i64 = 1000;
/// How often a delivery looks again while the one request that learns an unknown budget is in
/// flight.
const PROBE_POLL_MS: i64 = 100;
/// Bitbucket Cloud's documented limit, when it is near its limit without saying the limit.
const BITBUCKET_HOURLY: u64 = 1000;
const HOUR_MS: i64 = 3_600_000;
/// Budgets remembered at most; idle ones are forgotten first (they are learnt again).
const MAX_BUDGETS: usize = 10_000;

/// May a request go now?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Go,
    /// Look again at this time (ms since the epoch).
    WaitUntil(i64),
}

/// What the pacing metric shows for a budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    Unpaced,
    Paced,
    Blocked,
}

impl Pace {
    pub const ALL: [Pace; 3] = [Pace::Unpaced, Pace::Paced, Pace::Blocked];

    pub fn as_str(self) -> &'static str {
        match self {
            Pace::Unpaced => "unpaced",
            Pace::Paced => "paced",
            Pace::Blocked => "blocked",
        }
    }
}

#[derive(Debug, Default)]
struct Budget {
    /// Requests left in the window, counting what we sent or promised since the last answer.
    remaining: Option<u64>,
    limit: Option<u64>,
    reset_at_ms: Option<i64>,
    /// Bitbucket's near-limit spacing.
    sustain_ms: Option<i64>,
    /// No paced request before this.
    next_ms: i64,
    /// Spent until this.
    blocked_until: i64,
    /// The request learning an unknown budget is in flight.
    probing: bool,
    /// Answers carry no rate-limit header: not metered.
    unmetered: bool,
    /// Status key → its paced slot.
    slots: HashMap<String, i64>,
    last_used: i64,
}

impl Budget {
    fn low(&self) -> bool {
        match self.remaining {
            Some(left) => left <= PACE_BELOW.max(self.limit.unwrap_or(0) / 10),
            None => false,
        }
    }

    fn paced(&self) -> bool {
        self.sustain_ms.is_some() || (self.low() && self.reset_at_ms.is_some())
    }

    /// Forgets a window whose reset has passed.
    fn roll(&mut self, now: i64) {
        if let Some(reset) = self.reset_at_ms
            && now >= reset.saturating_add(RESET_SLACK_MS)
        {
            self.remaining = None;
            self.reset_at_ms = None;
            self.slots.clear();
            self.next_ms = now;
        }
    }

    fn pace(&self, now: i64) -> Pace {
        if self.blocked_until > now || self.remaining == Some(0) {
            Pace::Blocked
        } else if self.paced() {
            Pace::Paced
        } else {
            Pace::Unpaced
        }
    }
}

/// Every budget's state. Memory is bounded by [`MAX_BUDGETS`], each holding at most its
/// remaining count of slots.
#[derive(Debug, Default)]
pub struct Pacer {
    budgets: Mutex<HashMap<String, Budget>>,
}

impl Pacer {
    fn with<T>(&self, budget: &str, now: i64, f: impl FnOnce(&mut Budget) -> T) -> T {
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        if !budgets.contains_key(budget) && budgets.len() >= MAX_BUDGETS {
            let idle = budgets
                .iter()
                .min_by_key(|(_, b)| b.last_used)
                .map(|(k, _)| k.clone());
            if let Some(idle) = idle {
                budgets.remove(&idle);
            }
        }
        let b = budgets.entry(budget.to_owned()).or_default();
        b.last_used = now;
        b.roll(now);
        f(b)
    }

    /// Whether `requests` requests for status `key` may go on `budget` now; a `Go` counts them
    /// against the budget, and must be followed by [`Pacer::answered`].
    pub fn admit(&self, budget: &str, key: &str, requests: u32, now: i64) -> Gate {
        let n = u64::from(requests.max(1));
        self.with(budget, now, |b| {
            if b.blocked_until > now {
                return Gate::WaitUntil(b.blocked_until);
            }
            if let Some(slot) = b.slots.get(key).copied() {
                if slot > now {
                    return Gate::WaitUntil(slot);
                }
                b.slots.remove(key);
                return Gate::Go;
            }
            if let Some(sustain) = b.sustain_ms {
                let slot = b.next_ms.max(now);
                b.next_ms = slot.saturating_add(sustain.saturating_mul(n as i64));
                return reserve(b, key, slot, now);
            }
            match (b.remaining, b.reset_at_ms) {
                (None, _) if b.unmetered => Gate::Go,
                (None, _) if b.probing => Gate::WaitUntil(now + PROBE_POLL_MS),
                (None, _) => {
                    b.probing = true;
                    Gate::Go
                }
                (Some(left), Some(reset)) if b.low() => {
                    let usable = left.saturating_sub(RESERVE);
                    if usable < n {
                        // Nothing left to spread in this window: wait for the reset.
                        return Gate::WaitUntil(reset.saturating_add(RESET_SLACK_MS));
                    }
                    let slot = b.next_ms.max(now);
                    let spacing = reset.saturating_sub(slot).max(0) / usable as i64;
                    b.next_ms = slot.saturating_add(spacing.saturating_mul(n as i64));
                    b.remaining = Some(left - n);
                    reserve(b, key, slot, now)
                }
                (Some(0), _) => {
                    Gate::WaitUntil(b.reset_at_ms.unwrap_or(now).saturating_add(RESET_SLACK_MS))
                }
                (Some(left), _) => {
                    b.remaining = Some(left.saturating_sub(n));
                    Gate::Go
                }
            }
        })
    }

    /// After an admitted attempt: what its last answer said about the budget (`None`: no
    /// rate-limit header, or no answer at all when `answered` is false).
    pub fn answered(&self, budget: &str, rate: Option<RateLimit>, answered: bool, now: i64) {
        self.with(budget, now, |b| {
            b.probing = false;
            let Some(rate) = rate else {
                if answered && b.remaining.is_none() && b.sustain_ms.is_none() {
                    b.unmetered = true;
                }
                return;
            };
            b.unmetered = false;
            b.limit = rate.limit.or(b.limit);
            b.sustain_ms = rate.near_limit.then(|| {
                let per_hour = rate.limit.unwrap_or(BITBUCKET_HOURLY).max(1);
                HOUR_MS / per_hour as i64
            });
            if let Some(left) = rate.remaining {
                let new_window = rate.reset_at_ms != b.reset_at_ms;
                b.remaining = Some(match b.remaining {
                    // Requests sent or promised since this answer are not in its count yet.
                    Some(ours) if !new_window => ours.min(left),
                    _ => left,
                });
                if new_window {
                    b.slots.clear();
                    b.next_ms = now;
                }
                b.reset_at_ms = rate.reset_at_ms;
                if left == 0
                    && let Some(reset) = rate.reset_at_ms
                {
                    b.blocked_until = b.blocked_until.max(reset.saturating_add(RESET_SLACK_MS));
                }
            }
        });
    }

    /// Until when `budget` is spent, if it is at `now` (nothing is counted: the scheduler asks
    /// this before it starts an attempt).
    pub fn blocked_until(&self, budget: &str, now: i64) -> Option<i64> {
        self.with(budget, now, |b| {
            (b.blocked_until > now).then_some(b.blocked_until)
        })
    }

    /// A forge said the budget is spent until `until_ms` (a 429, or GitHub's 403).
    pub fn spend(&self, budget: &str, until_ms: i64, now: i64) {
        self.with(budget, now, |b| {
            b.probing = false;
            b.blocked_until = b.blocked_until.max(until_ms);
        });
    }

    /// The state the pacing metric shows.
    pub fn pace(&self, budget: &str, now: i64) -> Pace {
        self.with(budget, now, |b| b.pace(now))
    }
}

/// Sets the pacing metric of the Provider `record` is for from its budget's state.
pub fn report(metrics: &Metrics, pacer: &Pacer, budget: &str, record: &Pending) {
    let now = crate::delivery::store::now_ms();
    let current = pacer.pace(budget, now);
    for pace in Pace::ALL {
        metrics
            .pacing
            .get_or_create(&PacingLabels {
                forge: record.delivery.forge.clone(),
                provider: record.delivery.provider.clone(),
                state: pace.as_str().to_owned(),
            })
            .set(i64::from(pace == current));
    }
}

/// Counts the requests one attempt made, by kind, for the Provider `record` is for.
pub fn count(metrics: &Metrics, record: &Pending, exchange: &Exchange) {
    for (kind, n) in [("read", exchange.reads), ("write", exchange.writes)] {
        if n > 0 {
            metrics
                .forge_requests
                .get_or_create(&RequestLabels {
                    forge: record.delivery.forge.clone(),
                    provider: record.delivery.provider.clone(),
                    kind: kind.to_owned(),
                })
                .inc_by(u64::from(n));
        }
    }
}

/// Goes now, or holds the slot for `key`.
fn reserve(b: &mut Budget, key: &str, slot: i64, now: i64) -> Gate {
    if slot <= now {
        Gate::Go
    } else {
        b.slots.insert(key.to_owned(), slot);
        Gate::WaitUntil(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "https://api.github.com 0123";
    const T0: i64 = 1_700_000_000_000;

    fn github(remaining: u64, reset_in_s: i64) -> Option<RateLimit> {
        Some(RateLimit {
            remaining: Some(remaining),
            limit: Some(5000),
            reset_at_ms: Some(T0 + reset_in_s * 1000),
            near_limit: false,
        })
    }

    /// Drives `keys` through the pacer as a scheduler would, each answered at once: the times
    /// each request went.
    fn drive(p: &Pacer, keys: usize, until: i64) -> Vec<i64> {
        let mut wake: Vec<(i64, usize)> = (0..keys).map(|k| (T0, k)).collect();
        let mut sent = Vec::new();
        while let Some(i) = (0..wake.len()).min_by_key(|i| wake[*i]) {
            let (now, k) = wake[i];
            if now > until {
                break;
            }
            match p.admit(B, &format!("key-{k}"), 1, now) {
                Gate::Go => {
                    sent.push(now);
                    wake.remove(i);
                }
                Gate::WaitUntil(at) => {
                    assert!(at > now, "no busy loop: {at} <= {now}");
                    wake[i].0 = at;
                }
            }
        }
        sent
    }

    #[test]
    fn an_unknown_budget_is_learnt_with_one_request() {
        let p = Pacer::default();
        assert_eq!(p.admit(B, "a", 1, T0), Gate::Go);
        assert_eq!(p.admit(B, "b", 1, T0), Gate::WaitUntil(T0 + PROBE_POLL_MS));
        p.answered(B, github(4000, 3600), true, T0 + 5);
        assert_eq!(p.admit(B, "b", 1, T0 + 10), Gate::Go);
        assert_eq!(p.admit(B, "c", 1, T0 + 10), Gate::Go);
        assert_eq!(p.pace(B, T0 + 10), Pace::Unpaced);
        // No headers at all: not metered.
        let q = Pacer::default();
        assert_eq!(q.admit(B, "a", 1, T0), Gate::Go);
        q.answered(B, None, true, T0);
        for k in 0..50 {
            assert_eq!(q.admit(B, &k.to_string(), 1, T0), Gate::Go);
        }
        // No answer (connection refused): the next request learns it.
        let r = Pacer::default();
        assert_eq!(r.admit(B, "a", 1, T0), Gate::Go);
        r.answered(B, None, false, T0);
        assert_eq!(r.admit(B, "b", 1, T0), Gate::Go);
        assert_eq!(r.admit(B, "c", 1, T0), Gate::WaitUntil(T0 + PROBE_POLL_MS));
    }

    #[test]
    fn ten_left_and_a_reset_in_20_s_are_spread_over_the_window() {
        let p = Pacer::default();
        p.answered(B, github(10, 20), true, T0);
        assert_eq!(p.pace(B, T0), Pace::Paced);
        let before = drive(&p, 30, T0 + 20_000);
        assert_eq!(before.len(), 9, "one kept in reserve: {before:?}");
        // Evenly: 20 s / 9 apart, the first at once, the last well before the reset.
        for (i, at) in before.iter().enumerate() {
            let want = T0 + i as i64 * 20_000 / 9;
            assert!((at - want).abs() <= 10, "request {i} at {at}, want {want}");
        }
        assert!(*before.last().unwrap() < T0 + 20_000);
        // After the reset: learnt again, then whatever the new window allows.
        let after = T0 + 21_000;
        assert_eq!(p.pace(B, after), Pace::Unpaced);
        assert_eq!(p.admit(B, "late-1", 1, after), Gate::Go);
        p.answered(B, github(4999, 3620), true, after + 5);
        assert_eq!(p.admit(B, "late-2", 1, after + 6), Gate::Go);
    }

    #[test]
    fn a_newer_state_of_a_key_keeps_its_slot() {
        let p = Pacer::default();
        p.answered(B, github(5, 40), true, T0);
        assert_eq!(p.admit(B, "a", 1, T0), Gate::Go);
        let Gate::WaitUntil(slot) = p.admit(B, "b", 1, T0) else {
            panic!("b must wait")
        };
        assert_eq!(slot, T0 + 10_000);
        // "b" again (a newer state replaced the queued one): same slot, nothing more spent.
        assert_eq!(p.admit(B, "b", 1, T0 + 3000), Gate::WaitUntil(slot));
        assert_eq!(p.admit(B, "b", 1, slot), Gate::Go);
        assert_eq!(p.admit(B, "c", 1, slot), Gate::WaitUntil(T0 + 20_000));
    }

    #[test]
    fn a_spent_budget_blocks_until_the_reset() {
        let p = Pacer::default();
        p.answered(B, github(0, 30), true, T0);
        assert_eq!(p.pace(B, T0), Pace::Blocked);
        assert_eq!(
            p.admit(B, "a", 1, T0),
            Gate::WaitUntil(T0 + 30_000 + RESET_SLACK_MS)
        );
        let q = Pacer::default();
        q.spend(B, T0 + 60_000, T0);
        assert_eq!(q.admit(B, "a", 1, T0 + 1), Gate::WaitUntil(T0 + 60_000));
        assert_eq!(q.pace(B, T0 + 60_001), Pace::Unpaced);
    }

    #[test]
    fn in_flight_requests_are_not_counted_twice() {
        let p = Pacer::default();
        p.answered(B, github(1000, 3600), true, T0);
        for k in 0..5 {
            assert_eq!(p.admit(B, &k.to_string(), 1, T0), Gate::Go);
        }
        // An answer to the first request, sent before the other four: ours is lower.
        p.answered(B, github(999, 3600), true, T0 + 1);
        let left = p.with(B, T0 + 1, |b| b.remaining);
        assert_eq!(left, Some(995));
    }

    #[test]
    fn bitbucket_near_its_limit_is_spaced_at_the_sustainable_rate() {
        let p = Pacer::default();
        let near = Some(RateLimit {
            limit: Some(1000),
            near_limit: true,
            ..RateLimit::default()
        });
        p.answered(B, near, true, T0);
        assert_eq!(p.pace(B, T0), Pace::Paced);
        let sent = drive(&p, 5, T0 + 20_000);
        assert_eq!(sent, [T0, T0 + 3600, T0 + 7200, T0 + 10_800, T0 + 14_400]);
        p.answered(
            B,
            Some(RateLimit {
                limit: Some(1000),
                ..RateLimit::default()
            }),
            true,
            T0,
        );
        assert_eq!(p.pace(B, T0 + 20_000), Pace::Unpaced);
    }

    #[test]
    fn a_thousand_concurrent_deliveries_share_a_low_budget() {
        let p = std::sync::Arc::new(Pacer::default());
        p.answered(B, github(50, 10), true, T0);
        let gates: Vec<Gate> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..1000)
                .map(|k| {
                    let p = p.clone();
                    s.spawn(move || p.admit(B, &format!("key-{k}"), 1, T0))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let go = gates.iter().filter(|g| **g == Gate::Go).count();
        let mut slots: Vec<i64> = gates
            .iter()
            .filter_map(|g| match g {
                Gate::WaitUntil(at) if *at < T0 + 10_000 => Some(*at),
                _ => None,
            })
            .collect();
        slots.sort_unstable();
        slots.dedup();
        // 49 usable (one in reserve): one now, 48 distinct slots before the reset, the rest
        // after it.
        assert_eq!(go, 1);
        assert_eq!(slots.len(), 48);
        let after = gates
            .iter()
            .filter(|g| **g == Gate::WaitUntil(T0 + 10_000 + RESET_SLACK_MS))
            .count();
        assert_eq!(after, 1000 - 49);
    }

    #[test]
    fn absurd_headers_do_not_break_the_arithmetic() {
        let p = Pacer::default();
        let absurd = Some(RateLimit {
            remaining: Some(u64::MAX),
            limit: Some(u64::MAX),
            reset_at_ms: Some(i64::MAX),
            near_limit: false,
        });
        p.answered(B, absurd, true, T0);
        assert_eq!(p.admit(B, "a", 1, T0), Gate::Go);
        let past = Some(RateLimit {
            remaining: Some(3),
            reset_at_ms: Some(-5),
            ..RateLimit::default()
        });
        p.answered(B, past, true, T0);
        assert_eq!(p.admit(B, "b", 1, T0), Gate::Go);
        let zero_limit = Some(RateLimit {
            limit: Some(0),
            near_limit: true,
            ..RateLimit::default()
        });
        p.answered(B, zero_limit, true, T0);
        assert_eq!(p.admit(B, "c", 1, T0), Gate::Go);
    }

    #[test]
    fn memory_is_bounded() {
        let p = Pacer::default();
        for i in 0..(MAX_BUDGETS + 50) {
            p.answered(&i.to_string(), github(10, 20), true, T0 + i as i64);
        }
        assert_eq!(p.budgets.lock().unwrap().len(), MAX_BUDGETS);
    }
}
