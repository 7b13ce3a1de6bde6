//! Duplicate-event suppression (§1.5): one event per key per `--rate-limit-interval`, in fixed
//! windows anchored where the key was first seen, with the response headers Flux sends.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use api::Event;

/// Shards spread lock contention over cores; 16 is plenty for 2–8 cores.
const SHARDS: usize = 16;

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
}

pub struct Limiter {
    interval: Duration,
    shards: Vec<Mutex<HashMap<Key, Bucket>>>,
}

impl Limiter {
    pub fn new(interval: Duration) -> Self {
        // A zero interval would divide by zero; Go's limiter treats it as "always refill".
        let interval = interval.max(Duration::from_nanos(1));
        Self {
            interval,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn shard(&self, key: &Key) -> &Mutex<HashMap<Key, Bucket>> {
        &self.shards[key[0] as usize % SHARDS]
    }

    fn tick(&self, anchor: Instant, now: Instant) -> u64 {
        (now.duration_since(anchor).as_nanos() / self.interval.as_nanos()) as u64
    }

    /// Takes the key's token if it has one.
    pub fn take(&self, key: &Key) -> Decision {
        self.take_at(key, Instant::now(), SystemTime::now())
    }

    fn take_at(&self, key: &Key, now: Instant, wall: SystemTime) -> Decision {
        let mut shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let bucket = shard.entry(*key).or_insert(Bucket {
            anchor: now,
            anchor_wall: wall,
            tick: 0,
            tokens: 1,
            last_seen: now,
        });
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
        let mut shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = shard.get_mut(key)
            && self.tick(bucket.anchor, now) == bucket.tick
        {
            bucket.tokens = 1;
        }
    }

    /// Drops buckets idle for more than two intervals, as Flux's store sweep does.
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.retain(|_, b| now.duration_since(b.last_seen) <= self.interval * 2);
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
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
    fn reset_header_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1136214245);
        assert_eq!(rfc1123_utc(t), "Mon, 02 Jan 2006 15:04:05 UTC");
    }
}
