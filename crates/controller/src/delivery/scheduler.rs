//! The due queue: which pending delivery is attempted when. It keeps only [`Entry`]s (key and
//! scheduling data) and shares the rate-limit budgets ([`crate::delivery::pacing`]); what an attempt does is the
//! [`Attempter`]'s business, so the queue is tested with a scripted one and tokio's paused
//! clock ([`Clock`]).
//!
//! Rules: one attempt at a time per key, so states keep their order; a newer state of a status
//! key replaces the queued older one (coalescing) and is sent as soon as the running attempt
//! ends, while forwarded events ([`Scheduled::COALESCE`] false) of one key are each sent, in
//! sequence order; a delivery whose credential's budget is spent waits for the reset (never
//! past its deadline, where its next attempt expires it).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::delivery::policy::{Decision, Policy};
use crate::delivery::record::Entry;

/// A rate-limit budget: forge host and credential fingerprint (never the credential).
pub type Budget = Arc<str>;

/// Where the time comes from: the wall clock, or tokio's clock from a given start (paused in
/// tests, so that hours of backoff take no time).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    anchor: Option<(i64, tokio::time::Instant)>,
}

impl Clock {
    /// The system's wall clock (record times are wall-clock times, across restarts too).
    pub fn system() -> Clock {
        Clock { anchor: None }
    }

    /// Follows tokio's clock, starting at `now_ms`.
    pub fn tokio_at(now_ms: i64) -> Clock {
        Clock {
            anchor: Some((now_ms, tokio::time::Instant::now())),
        }
    }

    /// Milliseconds since the epoch.
    pub fn now_ms(&self) -> i64 {
        match self.anchor {
            None => crate::delivery::record::now_ms(),
            Some((ms, at)) => ms + at.elapsed().as_millis() as i64,
        }
    }

    /// Sleeps until `at_ms`.
    pub async fn sleep_until(&self, at_ms: i64) {
        let ms = (at_ms - self.now_ms()).max(0) as u64;
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// The rate-limit budgets: spent until a reset, or paced to last until it. Shared by the queue
/// (which holds deliveries whose budget it knows to be spent) and the attempts (which are
/// admitted, or told when to come back, just before they send).
pub use crate::delivery::pacing::Pacer as Budgets;

/// What the queue keeps of a pending item: its key, its sequence number and when it may go.
pub trait Scheduled: Clone + Send + Sync + 'static {
    /// Whether a newer entry of a key replaces a queued older one (a commit status: only its
    /// newest state matters), or each is attempted in turn, in sequence order (a forwarded
    /// event: every one is sent).
    const COALESCE: bool;
    /// One attempt at a time per key.
    fn key(&self) -> &Arc<str>;
    fn seq(&self) -> u64;
    fn accepted_ms(&self) -> i64;
    fn not_before_ms(&self) -> i64;
    fn set_not_before_ms(&mut self, at: i64);
}

impl Scheduled for Entry {
    const COALESCE: bool = true;

    fn key(&self) -> &Arc<str> {
        &self.key
    }
    fn seq(&self) -> u64 {
        self.seq
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

/// What the queue does with a key after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Finished (or no longer pending): forget it, unless a newer state is queued.
    Done,
    /// Attempt it again at this time.
    RetryAt(i64),
    /// The budget is spent until this time: this key and every other on it wait.
    WaitBudget { budget: Budget, until: i64 },
}

impl Next {
    /// The queue's side of a policy decision; `budget` is the one the attempt spent.
    pub fn from_decision(decision: Decision, budget: Option<Budget>) -> Next {
        match (decision, budget) {
            (Decision::Done(_), _) => Next::Done,
            (Decision::RetryAt(at), _) | (Decision::WaitBudget(at), None) => Next::RetryAt(at),
            (Decision::WaitBudget(until), Some(budget)) => Next::WaitBudget { budget, until },
        }
    }
}

/// Attempts what the queue holds (deliveries, forwarded events).
pub trait Attempter: Send + Sync + 'static {
    type Entry: Scheduled;

    /// The budget an attempt would spend, when it can be told without I/O (from the current
    /// configuration); `None` if not (the attempt then finds out), or if there is none.
    fn budget(&self, entry: &Self::Entry) -> Option<Budget>;

    /// One attempt; says what to do with the key next.
    fn attempt(
        self: Arc<Self>,
        entry: Self::Entry,
        budgets: Arc<Budgets>,
    ) -> BoxFuture<'static, Next>;
}

enum Msg<E> {
    Accepted(Vec<E>),
    Ended { key: Arc<str>, seq: u64, next: Next },
}

/// Hands stored entries to the queue.
pub struct Scheduler<E = Entry> {
    tx: mpsc::UnboundedSender<Msg<E>>,
}

impl<E> Clone for Scheduler<E> {
    fn clone(&self) -> Self {
        Scheduler {
            tx: self.tx.clone(),
        }
    }
}

impl<E: Scheduled> Scheduler<E> {
    /// Entries whose commit succeeded (only those: what the store does not hold is never
    /// attempted).
    pub fn accepted(&self, entries: Vec<E>) {
        if !entries.is_empty() {
            let _ = self.tx.send(Msg::Accepted(entries));
        }
    }
}

/// Per key the entries waiting (the latest one only, if they coalesce; the first one is the
/// one running, if any), due times, and keys with an attempt running.
struct Queue<E> {
    lanes: HashMap<Arc<str>, VecDeque<E>>,
    due: BTreeSet<(i64, Arc<str>)>,
    due_at: HashMap<Arc<str>, i64>,
    /// Key → the sequence number its running attempt started from.
    running: HashMap<Arc<str>, u64>,
}

impl<E> Default for Queue<E> {
    fn default() -> Self {
        Queue {
            lanes: HashMap::new(),
            due: BTreeSet::new(),
            due_at: HashMap::new(),
            running: HashMap::new(),
        }
    }
}

impl<E: Scheduled> Queue<E> {
    fn schedule(&mut self, key: Arc<str>, at: i64) {
        if let Some(old) = self.due_at.insert(key.clone(), at) {
            self.due.remove(&(old, key.clone()));
        }
        self.due.insert((at, key));
    }

    fn accept(&mut self, entry: E) {
        let (key, at) = (entry.key().clone(), entry.not_before_ms());
        let running = self.running.contains_key(&key);
        let lane = self.lanes.entry(key.clone()).or_default();
        if E::COALESCE {
            if lane.back().is_some_and(|l| l.seq() >= entry.seq()) {
                return;
            }
            lane.clear();
            lane.push_back(entry);
            if !running {
                self.schedule(key, at);
            }
            return;
        }
        if lane.iter().any(|l| l.seq() == entry.seq()) {
            return;
        }
        // In sequence order, but never before the one running.
        let after = lane
            .iter()
            .rposition(|l| l.seq() < entry.seq())
            .map_or(0, |i| i + 1)
            .max(usize::from(running));
        lane.insert(after, entry);
        if !running && after == 0 {
            self.schedule(key, at);
        }
    }

    /// An attempt ended; `at`: when to look at the key again, `None` when it is finished.
    fn ended(&mut self, key: Arc<str>, seq: u64, at: Option<i64>, now: i64) {
        self.running.remove(&key);
        let Some(lane) = self.lanes.get_mut(&key) else {
            return;
        };
        if at.is_none() {
            lane.retain(|l| l.seq() != seq);
        }
        let Some(head) = lane.front() else {
            self.lanes.remove(&key);
            return;
        };
        let at = match at {
            Some(at) if head.seq() == seq => at,
            // A newer state arrived meanwhile: send it now.
            _ if E::COALESCE => now,
            // The next one of the key, at its own time.
            _ => head.not_before_ms(),
        };
        self.schedule(key, at);
    }

    fn next_due(&self) -> Option<i64> {
        self.due.first().map(|(at, _)| *at)
    }

    fn pop_due(&mut self, now: i64) -> Option<E> {
        loop {
            let (at, key) = self.due.first().cloned()?;
            if at > now {
                return None;
            }
            self.due.remove(&(at, key.clone()));
            self.due_at.remove(&key);
            if let Some(entry) = self.lanes.get(&key).and_then(|l| l.front()) {
                return Some(entry.clone());
            }
        }
    }
}

/// Starts the queue with what the store held at start-up. The returned future ends after
/// `shutdown`, once running attempts finished or `grace` passed (they stay pending).
pub fn start<A: Attempter>(
    attempter: Arc<A>,
    clock: Clock,
    policy: Policy,
    initial: Vec<A::Entry>,
    shutdown: CancellationToken,
    grace: Duration,
) -> (Scheduler<A::Entry>, impl std::future::Future<Output = ()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let scheduler = Scheduler { tx: tx.clone() };
    // A restart is a natural moment to try again: what waited for a long backoff before the
    // restart is retried soon after it.
    let soon = clock.now_ms() + policy.min_retry_delay.as_millis() as i64;
    let initial = initial
        .into_iter()
        .map(|mut e| {
            e.set_not_before_ms(e.not_before_ms().min(soon));
            e
        })
        .collect();
    scheduler.accepted(initial);
    let run = run(attempter, clock, policy, tx, rx, shutdown, grace);
    (scheduler, run)
}

async fn run<A: Attempter>(
    attempter: Arc<A>,
    clock: Clock,
    policy: Policy,
    tx: mpsc::UnboundedSender<Msg<A::Entry>>,
    mut rx: mpsc::UnboundedReceiver<Msg<A::Entry>>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let mut queue = Queue::<A::Entry>::default();
    let budgets = Arc::new(Budgets::default());
    let mut tasks = JoinSet::new();
    loop {
        let next = queue.next_due();
        tokio::select! {
            () = shutdown.cancelled() => break,
            msg = rx.recv() => match msg {
                None => break,
                Some(Msg::Accepted(entries)) => entries.into_iter().for_each(|e| queue.accept(e)),
                Some(Msg::Ended { key, seq, next }) => {
                    let at = match next {
                        Next::Done => None,
                        Next::RetryAt(at) => Some(at),
                        Next::WaitBudget { budget, until } => {
                            budgets.spend(&budget, until, clock.now_ms());
                            Some(until)
                        }
                    };
                    queue.ended(key, seq, at, clock.now_ms());
                }
            },
            () = clock.sleep_until(next.unwrap_or_default()), if next.is_some() => {
                let now = clock.now_ms();
                while let Some(entry) = queue.pop_due(now) {
                    let held = (!policy.expired(entry.accepted_ms(), now))
                        .then(|| attempter.budget(&entry))
                        .flatten()
                        .and_then(|b| budgets.blocked_until(&b, now));
                    if let Some(until) = held {
                        let at = until.min(policy.deadline(entry.accepted_ms()) + 1);
                        queue.schedule(entry.key().clone(), at);
                        continue;
                    }
                    queue.running.insert(entry.key().clone(), entry.seq());
                    let (attempter, budgets, tx) = (attempter.clone(), budgets.clone(), tx.clone());
                    tasks.spawn(async move {
                        let (key, seq) = (entry.key().clone(), entry.seq());
                        let next = attempter.attempt(entry, budgets).await;
                        let _ = tx.send(Msg::Ended { key, seq, next });
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
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use notify::Class;

    use super::*;
    use crate::delivery::policy::Answer;

    const S: i64 = 1000;
    /// The paused clock's start: any wall-clock-like time.
    const T0: i64 = 1_700_000_000_000;

    fn policy() -> Policy {
        Policy {
            min_retry_delay: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
        }
    }

    /// A forge that answers from a script, through the real policy, as the real attempt does:
    /// expiry first, then the budget, then the answer.
    struct Scripted {
        clock: Clock,
        policy: Policy,
        budget: Option<Budget>,
        /// How long the forge takes to answer.
        delay: Duration,
        answers: Mutex<VecDeque<Answer>>,
        attempts: Mutex<HashMap<Arc<str>, u32>>,
        /// (key, seq, time since T0) of every request the forge got.
        sent: Mutex<Vec<(String, u64, i64)>>,
        /// (key, time since T0) of every delivery given up as expired.
        expired: Mutex<Vec<(String, i64)>>,
    }

    impl Scripted {
        fn new(clock: Clock, answers: Vec<Answer>) -> Arc<Scripted> {
            Arc::new(Scripted {
                clock,
                policy: policy(),
                budget: Some("https://forge token".into()),
                delay: Duration::from_millis(100),
                answers: Mutex::new(answers.into()),
                attempts: Mutex::default(),
                sent: Mutex::default(),
                expired: Mutex::default(),
            })
        }

        fn sent(&self) -> Vec<(String, u64, i64)> {
            self.sent.lock().unwrap().clone()
        }
    }

    impl Attempter for Scripted {
        type Entry = Entry;

        fn budget(&self, _: &Entry) -> Option<Budget> {
            self.budget.clone()
        }

        fn attempt(
            self: Arc<Self>,
            entry: Entry,
            budgets: Arc<Budgets>,
        ) -> BoxFuture<'static, Next> {
            Box::pin(async move {
                let now = self.clock.now_ms();
                if self.policy.expired(entry.accepted_ms, now) {
                    self.expired
                        .lock()
                        .unwrap()
                        .push((entry.key.to_string(), now - T0));
                    return Next::Done;
                }
                let attempts = *self.attempts.lock().unwrap().get(&entry.key).unwrap_or(&0);
                let spent = self
                    .budget
                    .as_deref()
                    .and_then(|b| budgets.blocked_until(b, now));
                if let (None, Some(b)) = (spent, self.budget.as_deref()) {
                    // Admitted like a real attempt (the budget is unknown: not metered).
                    budgets.admit(b, &entry.key, 1, now);
                    budgets.answered(b, None, true, now);
                }
                let answer = if let Some(until_ms) = spent {
                    Answer::BudgetSpent { until_ms }
                } else {
                    self.sent
                        .lock()
                        .unwrap()
                        .push((entry.key.to_string(), entry.seq, now - T0));
                    tokio::time::sleep(self.delay).await;
                    *self
                        .attempts
                        .lock()
                        .unwrap()
                        .entry(entry.key.clone())
                        .or_default() += 1;
                    let scripted = self.answers.lock().unwrap().pop_front();
                    scripted.unwrap_or(Answer::Landed(notify::Outcome::Posted))
                };
                let now = self.clock.now_ms();
                let attempts = attempts + u32::from(spent.is_none());
                let decision = self
                    .policy
                    .decide(answer, attempts, entry.accepted_ms, now, 1.0);
                if decision == Decision::Done(crate::delivery::record::Verdict::Expired) {
                    self.expired
                        .lock()
                        .unwrap()
                        .push((entry.key.to_string(), now - T0));
                }
                Next::from_decision(decision, self.budget.clone())
            })
        }
    }

    fn entry(key: &str, seq: u64, accepted_ms: i64) -> Entry {
        Entry {
            key: key.into(),
            seq,
            provider: "ns/p".into(),
            accepted_ms,
            not_before_ms: 0,
        }
    }

    fn transient() -> Answer {
        Answer::Failed(Class::Transient { after: None })
    }

    /// Starts the queue on `forge` with the paused clock at [`T0`].
    fn start_on(
        forge: &Arc<Scripted>,
        initial: Vec<Entry>,
    ) -> (Scheduler, CancellationToken, tokio::task::JoinHandle<()>) {
        let shutdown = CancellationToken::new();
        let (scheduler, run) = start(
            forge.clone(),
            forge.clock,
            forge.policy,
            initial,
            shutdown.clone(),
            Duration::from_secs(5),
        );
        (scheduler, shutdown, tokio::spawn(run))
    }

    /// Lets the paused clock run for `secs` (everything due meanwhile happens).
    async fn run_for(secs: i64) {
        tokio::time::sleep(Duration::from_millis((secs * S) as u64)).await;
    }

    fn assert_near(got: i64, want: i64) {
        assert!((got - want).abs() <= 5, "at {got} ms, want {want} ms");
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_back_off_exponentially_until_the_status_lands() {
        let clock = Clock::tokio_at(T0);
        let forge = Scripted::new(clock, vec![transient(), transient(), transient()]);
        let (scheduler, _stop, _run) = start_on(&forge, Vec::new());
        scheduler.accepted(vec![entry("a", 1, T0)]);
        run_for(60).await;
        let times: Vec<i64> = forge.sent().iter().map(|(_, _, t)| *t).collect();
        assert_eq!(times.len(), 4, "{times:?}");
        // Each answer takes 100 ms; the waits are 2 s, 4 s, 8 s (jitter 1: the whole range).
        let want = [0, 100 + 2000, 2200 + 4000, 6300 + 8000];
        for (got, want) in times.iter().zip(want) {
            assert_near(*got, want);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_budget_holds_every_delivery_on_the_credential_until_the_reset() {
        let clock = Clock::tokio_at(T0);
        let limited = Answer::Failed(Class::RateLimited {
            after: Some(Duration::from_secs(30)),
        });
        let forge = Scripted::new(clock, vec![limited]);
        let (scheduler, _stop, _run) = start_on(&forge, Vec::new());
        scheduler.accepted(vec![entry("a", 1, T0)]);
        run_for(1).await;
        // Accepted while the budget is spent: neither is sent before the reset.
        scheduler.accepted(vec![entry("b", 2, T0 + S), entry("c", 3, T0 + S)]);
        run_for(10).await;
        assert_eq!(forge.sent().len(), 1, "{:?}", forge.sent());
        run_for(30).await;
        let sent = forge.sent();
        assert_eq!(sent.len(), 4, "{sent:?}");
        for (_, _, t) in &sent[1..] {
            assert!(
                *t >= 30_100 - 5,
                "sent at {t} ms, before the reset: {sent:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_delivery_waiting_on_a_budget_still_expires_at_its_max_age() {
        let clock = Clock::tokio_at(T0);
        let forge = Scripted::new(clock, Vec::new());
        let (scheduler, _stop, _run) = start_on(&forge, Vec::new());
        // Spent for longer than the delivery may live (as another delivery learnt).
        let limited = Answer::Failed(Class::RateLimited {
            after: Some(Duration::from_secs(50)),
        });
        forge.answers.lock().unwrap().push_back(limited);
        scheduler.accepted(vec![entry("a", 1, T0)]);
        run_for(1).await;
        // Accepted 3590 s ago: 10 s left, the budget is spent for 50 s.
        scheduler.accepted(vec![entry("old", 2, T0 - 3590 * S)]);
        run_for(120).await;
        let sent: Vec<String> = forge.sent().into_iter().map(|(k, _, _)| k).collect();
        assert_eq!(sent, ["a", "a"], "the old one is never sent");
        let expired = forge.expired.lock().unwrap().clone();
        assert_eq!(expired.len(), 1, "{expired:?}");
        assert_eq!(expired[0].0, "old");
        // Held until its deadline, then given up, not held for the whole reset.
        assert_near(expired[0].1, 10 * S + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_expire_at_the_max_age() {
        let clock = Clock::tokio_at(T0);
        let forge = Scripted::new(clock, vec![transient(); 1000]);
        let (scheduler, _stop, _run) = start_on(&forge, Vec::new());
        scheduler.accepted(vec![entry("a", 1, T0)]);
        run_for(2 * 3600).await;
        let sent = forge.sent();
        let last = sent.last().unwrap().2;
        assert!(last <= 3600 * S, "attempted at {last} ms, past the max age");
        let expired = forge.expired.lock().unwrap().clone();
        assert_eq!(expired.len(), 1, "{expired:?}");
        // Given up when the next wait would end past the deadline, not after it.
        assert!(expired[0].1 <= 3600 * S && expired[0].1 > 3600 * S - 60 * S);
        // 2, 4, … 32 s, then 60 s each (+100 ms per answer) within the hour.
        assert!(sent.len() > 55 && sent.len() < 65, "{}", sent.len());
    }

    #[tokio::test(start_paused = true)]
    async fn newer_states_coalesce_while_an_attempt_runs() {
        let clock = Clock::tokio_at(T0);
        let forge = Scripted::new(clock, Vec::new());
        let (scheduler, _stop, _run) = start_on(&forge, Vec::new());
        scheduler.accepted(vec![entry("a", 1, T0)]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // While seq 1 is at the forge, 2, 4 and 3 arrive (3 committed after 4): only 4 follows.
        scheduler.accepted(vec![entry("a", 2, T0)]);
        scheduler.accepted(vec![entry("a", 4, T0), entry("a", 3, T0)]);
        run_for(10).await;
        let seqs: Vec<u64> = forge.sent().iter().map(|(_, s, _)| *s).collect();
        assert_eq!(seqs, [1, 4]);
        let t = forge.sent()[1].2;
        assert_near(t, 100);
        // Queued and not running: replaced without an attempt.
        scheduler.accepted(vec![Entry {
            not_before_ms: T0 + 60 * S,
            ..entry("b", 5, T0)
        }]);
        scheduler.accepted(vec![entry("b", 6, T0)]);
        run_for(120).await;
        let b: Vec<u64> = forge
            .sent()
            .iter()
            .filter(|(k, _, _)| k == "b")
            .map(|(_, s, _)| *s)
            .collect();
        assert_eq!(b, [6]);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_restart_long_waits_are_cut_short() {
        let clock = Clock::tokio_at(T0);
        let forge = Scripted::new(clock, Vec::new());
        let waiting = Entry {
            not_before_ms: T0 + 3000 * S,
            ..entry("a", 1, T0 - 60 * S)
        };
        let (_scheduler, stop, run) = start_on(&forge, vec![waiting]);
        run_for(5).await;
        let sent = forge.sent();
        assert_eq!(sent.len(), 1);
        assert_near(sent[0].2, S);
        stop.cancel();
        run.await.unwrap();
    }

    /// An entry that does not coalesce, as a forwarded event's.
    #[derive(Clone, Debug)]
    struct Event {
        key: Arc<str>,
        seq: u64,
        accepted_ms: i64,
        not_before_ms: i64,
    }

    impl Scheduled for Event {
        const COALESCE: bool = false;
        fn key(&self) -> &Arc<str> {
            &self.key
        }
        fn seq(&self) -> u64 {
            self.seq
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

    fn event(key: &str, seq: u64) -> Event {
        Event {
            key: key.into(),
            seq,
            accepted_ms: T0,
            not_before_ms: T0,
        }
    }

    /// A receiver that takes 100 ms per request and fails the sequence numbers in `failing`
    /// (transiently) as many times as they are listed; everything else is received.
    struct Receiver {
        clock: Clock,
        failing: Mutex<Vec<u64>>,
        attempts: Mutex<HashMap<u64, u32>>,
        /// (key, seq, start and end since T0) of every request.
        sent: Mutex<Vec<(String, u64, i64, i64)>>,
    }

    impl Receiver {
        fn new(clock: Clock, failing: Vec<u64>) -> Arc<Receiver> {
            Arc::new(Receiver {
                clock,
                failing: Mutex::new(failing),
                attempts: Mutex::default(),
                sent: Mutex::default(),
            })
        }

        fn seqs(&self, key: &str) -> Vec<u64> {
            let sent = self.sent.lock().unwrap();
            sent.iter()
                .filter(|(k, ..)| k == key)
                .map(|(_, s, ..)| *s)
                .collect()
        }
    }

    impl Attempter for Receiver {
        type Entry = Event;

        fn budget(&self, _: &Event) -> Option<Budget> {
            None
        }

        fn attempt(self: Arc<Self>, entry: Event, _: Arc<Budgets>) -> BoxFuture<'static, Next> {
            Box::pin(async move {
                let start = self.clock.now_ms() - T0;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now = self.clock.now_ms();
                self.sent
                    .lock()
                    .unwrap()
                    .push((entry.key.to_string(), entry.seq, start, now - T0));
                let attempts = {
                    let mut a = self.attempts.lock().unwrap();
                    let n = a.entry(entry.seq).or_default();
                    *n += 1;
                    *n
                };
                let mut failing = self.failing.lock().unwrap();
                let answer = match failing.iter().position(|s| *s == entry.seq) {
                    Some(i) => {
                        failing.remove(i);
                        transient()
                    }
                    None => Answer::Landed(notify::Outcome::Posted),
                };
                let decision = policy().decide(answer, attempts, entry.accepted_ms, now, 1.0);
                Next::from_decision(decision, None)
            })
        }
    }

    fn start_receiver(
        receiver: &Arc<Receiver>,
        initial: Vec<Event>,
    ) -> (Scheduler<Event>, CancellationToken) {
        let shutdown = CancellationToken::new();
        let (scheduler, run) = start(
            receiver.clone(),
            receiver.clock,
            policy(),
            initial,
            shutdown.clone(),
            Duration::from_secs(5),
        );
        tokio::spawn(run);
        (scheduler, shutdown)
    }

    #[tokio::test(start_paused = true)]
    async fn events_of_one_key_are_each_sent_one_at_a_time_in_order_keys_in_parallel() {
        let receiver = Receiver::new(Clock::tokio_at(T0), Vec::new());
        let (scheduler, _stop) = start_receiver(&receiver, Vec::new());
        scheduler.accepted(vec![event("a", 1), event("a", 2), event("b", 3)]);
        scheduler.accepted(vec![event("a", 4), event("b", 5)]);
        run_for(5).await;
        // Nothing coalesces: every event is sent, in order.
        assert_eq!(receiver.seqs("a"), [1, 2, 4]);
        assert_eq!(receiver.seqs("b"), [3, 5]);
        let sent = receiver.sent.lock().unwrap().clone();
        for key in ["a", "b"] {
            let mine: Vec<_> = sent.iter().filter(|(k, ..)| k == key).collect();
            for pair in mine.windows(2) {
                assert!(
                    pair[1].2 >= pair[0].3,
                    "overlapping requests of {key}: {sent:?}"
                );
            }
        }
        // The keys went side by side: b's first went with a's first.
        assert_near(sent.iter().find(|s| s.1 == 3).unwrap().2, 0);
        assert_near(sent.iter().find(|s| s.1 == 4).unwrap().2, 200);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retried_event_holds_the_later_ones_of_its_key_only() {
        let receiver = Receiver::new(Clock::tokio_at(T0), vec![1, 1]);
        let (scheduler, _stop) = start_receiver(&receiver, Vec::new());
        scheduler.accepted(vec![event("a", 1), event("a", 2), event("b", 3)]);
        run_for(30).await;
        assert_eq!(receiver.seqs("a"), [1, 1, 1, 2]);
        let sent = receiver.sent.lock().unwrap().clone();
        let starts: Vec<i64> = sent.iter().filter(|s| s.0 == "a").map(|s| s.2).collect();
        // The policy's backoff (2 s, 4 s at jitter 1) after each 100 ms answer; 2 only after 1.
        for (got, want) in starts.iter().zip([0, 2100, 6200, 6300]) {
            assert_near(*got, want);
        }
        assert_near(sent.iter().find(|s| s.1 == 3).unwrap().2, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn events_committed_out_of_order_are_sent_in_sequence_order() {
        let receiver = Receiver::new(Clock::tokio_at(T0), Vec::new());
        let (scheduler, _stop) = start_receiver(&receiver, Vec::new());
        scheduler.accepted(vec![event("a", 2)]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // 2 is at the receiver; 5 and 3 arrive, then 4 and 2 again (already queued).
        scheduler.accepted(vec![event("a", 5), event("a", 3)]);
        scheduler.accepted(vec![event("a", 4), event("a", 2)]);
        run_for(5).await;
        assert_eq!(receiver.seqs("a"), [2, 3, 4, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_restart_events_resume_in_order() {
        let receiver = Receiver::new(Clock::tokio_at(T0), Vec::new());
        let waiting = |seq| Event {
            not_before_ms: T0 + 3000 * S,
            ..event("a", seq)
        };
        let (_scheduler, stop) = start_receiver(&receiver, vec![waiting(7), waiting(8)]);
        run_for(5).await;
        assert_eq!(receiver.seqs("a"), [7, 8]);
        let first = receiver.sent.lock().unwrap()[0].2;
        assert_near(first, S);
        stop.cancel();
    }

    #[test]
    fn a_spent_budget_is_seen_without_being_counted() {
        let b = Budgets::default();
        b.spend("x", 100, 0);
        b.spend("x", 50, 0);
        assert_eq!(b.blocked_until("x", 10), Some(100));
        assert_eq!(b.blocked_until("x", 100), None);
        assert_eq!(b.blocked_until("y", 0), None);
    }

    #[tokio::test(start_paused = true)]
    async fn different_keys_are_attempted_side_by_side() {
        let clock = Clock::tokio_at(T0);
        let forge = Scripted::new(clock, Vec::new());
        let (scheduler, _stop, _run) = start_on(&forge, Vec::new());
        scheduler.accepted(vec![
            entry("a", 1, T0),
            entry("b", 2, T0),
            entry("c", 3, T0),
        ]);
        run_for(1).await;
        let sent = forge.sent();
        assert_eq!(sent.len(), 3, "{sent:?}");
        // Each answer takes 100 ms: none waited for another's.
        for (_, _, t) in &sent {
            assert_near(*t, 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_forges_retry_after_replaces_the_backoff_within_the_cap() {
        let clock = Clock::tokio_at(T0);
        let after = |secs| {
            Answer::Failed(Class::Transient {
                after: Some(Duration::from_secs(secs)),
            })
        };
        // 20 s as asked; 600 s capped at --max-retry-delay (60 s).
        let forge = Scripted::new(clock, vec![after(20), after(600)]);
        let (scheduler, _stop, _run) = start_on(&forge, Vec::new());
        scheduler.accepted(vec![entry("a", 1, T0)]);
        run_for(120).await;
        let times: Vec<i64> = forge.sent().iter().map(|(_, _, t)| *t).collect();
        assert_eq!(times.len(), 3, "{times:?}");
        assert_near(times[1], 100 + 20 * S);
        assert_near(times[2], times[1] + 100 + 60 * S);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_is_attempted_once() {
        let clock = Clock::tokio_at(T0);
        let forge = Scripted::new(clock, vec![Answer::Failed(Class::Permanent)]);
        let (scheduler, _stop, _run) = start_on(&forge, Vec::new());
        scheduler.accepted(vec![entry("a", 1, T0)]);
        run_for(3600).await;
        assert_eq!(forge.sent().len(), 1, "{:?}", forge.sent());
        assert!(forge.expired.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_delivery_past_its_max_age_at_start_up_expires_unsent() {
        let clock = Clock::tokio_at(T0);
        let forge = Scripted::new(clock, Vec::new());
        let stale = entry("old", 1, T0 - 2 * 3600 * S);
        let (_scheduler, _stop, _run) = start_on(&forge, vec![stale, entry("new", 2, T0)]);
        run_for(10).await;
        let sent: Vec<String> = forge.sent().into_iter().map(|(k, _, _)| k).collect();
        assert_eq!(sent, ["new"]);
        let expired = forge.expired.lock().unwrap().clone();
        assert_eq!(expired.len(), 1, "{expired:?}");
        assert_eq!(expired[0].0, "old");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_running_attempts_only_for_the_grace_period() {
        let clock = Clock::tokio_at(T0);
        let forge = Arc::new(Scripted {
            delay: Duration::from_secs(600),
            ..Arc::into_inner(Scripted::new(clock, Vec::new())).unwrap()
        });
        let (scheduler, stop, run) = start_on(&forge, Vec::new());
        scheduler.accepted(vec![entry("a", 1, T0)]);
        run_for(1).await;
        assert_eq!(forge.sent().len(), 1);
        let stopped = tokio::time::Instant::now();
        stop.cancel();
        run.await.unwrap();
        // The grace period is 5 s (see `start_on`); the attempt was abandoned, not awaited.
        let waited = stopped.elapsed();
        assert!(
            waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
            "{waited:?}"
        );
        assert!(forge.attempts.lock().unwrap().is_empty(), "never answered");
    }
}
