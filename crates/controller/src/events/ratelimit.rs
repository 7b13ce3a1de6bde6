//! Duplicate-event suppression (§1.5): one event per key per `--rate-limit-interval`, in fixed
//! windows anchored where the key was first seen, with the response headers Flux sends.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use sha2::{Digest, Sha256};

use api::Event;

pub type Key = [u8; 32];

/// Flux's `eventKeyFunc`: SHA-256 of the identifying parts of a cleaned event.
pub fn event_key(event: &Event) -> Key {
    let o = &event.involved_object;
    let mut parts = vec![
        "event".to_string(),
        format!("name={}", o.name),
        format!("namespace={}", o.namespace),
        format!("kind={}", o.kind),
        format!("message={}", event.message),
    ];
    let group = event.group();
    if let Some(md) = &event.metadata {
        for key in ["originRevision", "revision", "token"] {
            if let Some(v) = md.get(&format!("{group}/{key}")) {
                parts.push(format!("{key}={v}"));
            }
        }
    }
    Sha256::digest(parts.join("/").as_bytes()).into()
}

/// The limiter's answer for one request.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    pub allowed: bool,
    /// End of the current window, for `X-RateLimit-Reset` and `Retry-After`.
    pub reset: SystemTime,
}

struct Bucket {
    anchor: Instant,
    anchor_wall: SystemTime,
    tick: u64,
    tokens: u8,
    last_seen: Instant,
    /// Position in [`Windows::order`].
    born: u64,
}

/// The windows, and the order their keys were first seen in (oldest first), for eviction.
#[derive(Default)]
struct Windows {
    buckets: HashMap<Key, Bucket>,
    order: VecDeque<(u64, Key)>,
    next: u64,
}

/// Keys remembered by [`Limiter::new`].
pub const DEFAULT_MAX_KEYS: usize = 50_000;

pub struct Limiter {
    interval: Duration,
    max_keys: usize,
    evicted: Counter,
    // One lock: the critical sections are a hash look-up, and a global order is what makes
    // "oldest first" and the bound exact.
    windows: Mutex<Windows>,
}

impl Limiter {
    pub fn new(interval: Duration) -> Self {
        Limiter::bounded(interval, DEFAULT_MAX_KEYS, Counter::default())
    }

    /// Remembers at most `max_keys` keys; the oldest window is forgotten first, counted in
    /// `evicted`. Below the bound the answers are Flux's.
    pub fn bounded(interval: Duration, max_keys: usize, evicted: Counter) -> Self {
        // A zero interval would divide by zero; Go's limiter treats it as "always refill".
        let interval = interval.max(Duration::from_nanos(1));
        Self {
            interval,
            max_keys: max_keys.max(1),
            evicted,
            windows: Mutex::new(Windows::default()),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, Windows> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tick(&self, anchor: Instant, now: Instant) -> u64 {
        (now.duration_since(anchor).as_nanos() / self.interval.as_nanos()) as u64
    }

    /// Takes the key's token if it has one.
    pub fn take(&self, key: &Key) -> Decision {
        self.take_at(key, Instant::now(), SystemTime::now())
    }

    fn take_at(&self, key: &Key, now: Instant, wall: SystemTime) -> Decision {
        let mut w = self.windows();
        if !w.buckets.contains_key(key) {
            while w.buckets.len() >= self.max_keys {
                let Some((born, oldest)) = w.order.pop_front() else {
                    break;
                };
                if w.buckets.get(&oldest).is_some_and(|b| b.born == born) {
                    w.buckets.remove(&oldest);
                    self.evicted.inc();
                }
            }
            let born = w.next;
            w.next += 1;
            w.order.push_back((born, *key));
            w.buckets.insert(
                *key,
                Bucket {
                    anchor: now,
                    anchor_wall: wall,
                    tick: 0,
                    tokens: 1,
                    last_seen: now,
                    born,
                },
            );
        }
        let bucket = w.buckets.get_mut(key).expect("inserted above");
        let tick = self.tick(bucket.anchor, now);
        if tick > bucket.tick {
            bucket.tick = tick;
            bucket.tokens = 1;
        }
        bucket.last_seen = now;
        let allowed = bucket.tokens > 0;
        if allowed {
            bucket.tokens -= 1;
        }
        let reset = bucket.anchor_wall + self.interval * (tick as u32).saturating_add(1);
        Decision { allowed, reset }
    }

    /// Gives a taken token back, for an event that was accepted by the limiter but then could
    /// not be queued: the sender's retry must not be mistaken for a duplicate.
    pub fn refund(&self, key: &Key) {
        let now = Instant::now();
        let mut w = self.windows();
        if let Some(bucket) = w.buckets.get_mut(key)
            && self.tick(bucket.anchor, now) == bucket.tick
        {
            bucket.tokens = 1;
        }
    }

    /// Drops buckets idle for more than two intervals, as Flux's store sweep does.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut w = self.windows();
        let Windows { buckets, order, .. } = &mut *w;
        buckets.retain(|_, b| now.duration_since(b.last_seen) <= self.interval * 2);
        order.retain(|(born, k)| buckets.get(k).is_some_and(|b| b.born == *born));
    }

    pub fn len(&self) -> usize {
        self.windows().buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `Mon, 02 Jan 2006 15:04:05 UTC`: Go's RFC1123 layout in UTC (not HTTP's `GMT`).
pub fn rfc1123_utc(t: SystemTime) -> String {
    let t: chrono::DateTime<chrono::Utc> = t.into();
    t.format("%a, %d %b %Y %H:%M:%S UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn event(name: &str, message: &str, md: &[(&str, &str)]) -> Event {
        let mut e = Event::default();
        e.involved_object.name = name.into();
        e.involved_object.namespace = name.into();
        e.involved_object.kind = "Kustomization".into();
        e.involved_object.api_version = "kustomize.toolkit.fluxcd.io/v1".into();
        e.message = message.into();
        e.metadata = Some(
            md.iter()
                .map(|(k, v)| (format!("kustomize.toolkit.fluxcd.io/{k}"), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        e
    }

    #[test]
    fn key_matches_flux_vectors() {
        assert_eq!(
            hex::encode(event_key(&event("1", "Health check passed", &[]))),
            "acafa3267ee162f37eea965bd741c1447004be52ce8991161b716747ddcb4762"
        );
        assert_eq!(
            hex::encode(event_key(&event(
                "4",
                "Health check passed",
                &[("revision", "rev1")]
            ))),
            "a6d4d07208eb68fd001f2c24e31c95ef2bbb499facedcbf56f892a5329a4f071"
        );
    }

    #[test]
    fn test_event_key_func_sequence() {
        // Flux's TestEventKeyFunc, in order, against one store.
        let l = Limiter::new(Duration::from_secs(600));
        let mut error = event(
            "1",
            "Health check timed out for [Deployment 'foo/bar']",
            &[],
        );
        error.severity = "error".into();
        let cases: Vec<(Event, bool)> = vec![
            (event("1", "Health check passed", &[]), true),
            (event("1", "Health check passed", &[]), false),
            (error, true),
            (event("2", "Health check passed", &[]), true),
            (event("3", "Health check passed", &[]), true),
            (event("2", "Health check passed", &[]), false),
            (
                event("4", "Health check passed", &[("revision", "rev1")]),
                true,
            ),
            (
                event("4", "Health check passed", &[("revision", "rev1")]),
                false,
            ),
            (
                event("4", "Health check passed", &[("revision", "rev2")]),
                true,
            ),
            (
                event("4", "Health check passed", &[("originRevision", "orev1")]),
                true,
            ),
            (
                event("4", "Health check passed", &[("originRevision", "orev1")]),
                false,
            ),
            (
                event("4", "Health check passed", &[("originRevision", "orev2")]),
                true,
            ),
            (
                event("4", "Health check passed", &[("token", "token1")]),
                true,
            ),
            (
                event("4", "Health check passed", &[("token", "token1")]),
                false,
            ),
            (
                event("4", "Health check passed", &[("token", "token2")]),
                true,
            ),
        ];
        for (i, (e, want)) in cases.into_iter().enumerate() {
            assert_eq!(l.take(&event_key(&e)).allowed, want, "case {i}");
        }
    }

    #[test]
    fn fixed_windows_anchored_at_first_sight() {
        let l = Limiter::new(Duration::from_secs(10));
        let k = [7u8; 32];
        let t0 = Instant::now();
        let w0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let d = l.take_at(&k, t0, w0);
        assert!(d.allowed);
        assert_eq!(d.reset, w0 + Duration::from_secs(10));
        assert!(!l.take_at(&k, t0 + Duration::from_secs(9), w0).allowed);
        let d = l.take_at(&k, t0 + Duration::from_secs(10), w0);
        assert!(d.allowed);
        assert_eq!(d.reset, w0 + Duration::from_secs(20));
        assert!(!l.take_at(&k, t0 + Duration::from_secs(19), w0).allowed);
        let k2 = [8u8; 32];
        assert!(l.take(&k2).allowed);
        assert!(!l.take(&k2).allowed);
        l.refund(&k2);
        assert!(l.take(&k2).allowed);
    }

    #[test]
    fn the_oldest_key_is_evicted_first_and_counted() {
        let evicted = Counter::default();
        let l = Limiter::bounded(Duration::from_secs(600), 3, evicted.clone());
        let key = |n: u8| [n; 32];
        for n in 1..=3 {
            assert!(l.take(&key(n)).allowed);
        }
        // Below the bound: Flux's answers.
        assert!(!l.take(&key(1)).allowed);
        assert_eq!(evicted.get(), 0);
        // A fourth key evicts the first seen (key 1, although it was seen last).
        assert!(l.take(&key(4)).allowed);
        assert_eq!((l.len(), evicted.get()), (3, 1));
        assert!(!l.take(&key(2)).allowed, "key 2 is remembered");
        assert!(l.take(&key(1)).allowed, "key 1 was forgotten");
        assert_eq!((l.len(), evicted.get()), (3, 2));
        assert!(!l.take(&key(4)).allowed);
        assert!(l.take(&key(2)).allowed, "key 2 was next");
        l.sweep();
        assert_eq!(l.len(), 3);
        assert_eq!(l.windows().order.len(), 3);
    }

    #[test]
    fn reset_header_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1136214245);
        assert_eq!(rfc1123_utc(t), "Mon, 02 Jan 2006 15:04:05 UTC");
    }
}
