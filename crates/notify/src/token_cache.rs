//! The token cache shared by every credential that is exchanged for a short-lived token
//! (GitHub App installation tokens, Azure workload-identity tokens): bounded by
//! `--token-cache-max-size` entries (least recently used goes first) and
//! `--token-cache-max-duration`, one exchange at a time per identity, and observed the way
//! Flux's `fluxcd/pkg/cache` token cache is (`gotk_token_cache_*`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::Secret;

/// Flux's `cache.TokenMaxDuration`: no token is kept longer, whatever the flag says.
pub const TOKEN_MAX_DURATION: Duration = Duration::from_secs(60 * 60);

/// `--token-cache-max-size` and `--token-cache-max-duration`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenCacheSettings {
    /// Tokens kept at most; 0 turns caching off (every delivery exchanges anew, as in Flux).
    pub max_size: usize,
    /// The longest a token is kept (capped at [`TOKEN_MAX_DURATION`]).
    pub max_duration: Duration,
}

impl Default for TokenCacheSettings {
    fn default() -> Self {
        Self {
            max_size: 100,
            max_duration: TOKEN_MAX_DURATION,
        }
    }
}

/// The Provider a token is fetched for: labels the cache events, never part of a cache key
/// (Providers with the same identity share a token).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProviderRef {
    pub namespace: String,
    pub name: String,
}

/// What the cache reports, mirroring Flux's cache metrics: an event (`cache_hit` /
/// `cache_miss`) per lookup with the Provider, a request outcome, the item count and
/// evictions.
pub trait TokenCacheObserver: Send + Sync {
    fn event(&self, hit: bool, provider: &ProviderRef);
    fn request(&self, success: bool);
    fn items(&self, count: usize);
    fn eviction(&self);
}

struct Entry {
    token: Secret,
    refresh_at: Instant,
    used: u64,
}

type ExchangeLock = tokio::sync::Mutex<()>;

struct Inner {
    settings: TokenCacheSettings,
    observer: Option<Arc<dyn TokenCacheObserver>>,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    locks: Mutex<HashMap<[u8; 32], Weak<ExchangeLock>>>,
    tick: AtomicU64,
}

/// Cheap to clone; lives in [`crate::ClientCache`].
#[derive(Clone)]
pub(crate) struct TokenCache {
    inner: Arc<Inner>,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(TokenCacheSettings::default(), None)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl TokenCache {
    pub(crate) fn new(
        settings: TokenCacheSettings,
        observer: Option<Arc<dyn TokenCacheObserver>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings: TokenCacheSettings {
                    max_duration: settings.max_duration.min(TOKEN_MAX_DURATION),
                    ..settings
                },
                observer,
                entries: Mutex::default(),
                locks: Mutex::default(),
                tick: AtomicU64::new(0),
            }),
        }
    }

    /// The exchange lock of one identity, shared by every holder of the same key while any
    /// holds it; locks nobody holds any more are dropped here.
    pub(crate) fn exchange_lock(&self, key: [u8; 32]) -> Arc<ExchangeLock> {
        let mut locks = lock(&self.inner.locks);
        locks.retain(|_, l| l.strong_count() > 0);
        if let Some(l) = locks.get(&key).and_then(Weak::upgrade) {
            return l;
        }
        let l = Arc::new(ExchangeLock::default());
        locks.insert(key, Arc::downgrade(&l));
        l
    }

    /// Identities with a live exchange lock (tests).
    #[cfg(test)]
    pub(crate) fn identities(&self) -> usize {
        lock(&self.inner.locks)
            .values()
            .filter(|l| l.strong_count() > 0)
            .count()
    }

    fn fresh(&self, key: &[u8; 32], stale: Option<&Secret>) -> Option<Secret> {
        let mut entries = lock(&self.inner.entries);
        let entry = entries.get_mut(key)?;
        if Instant::now() >= entry.refresh_at || stale.is_some_and(|s| *s == entry.token) {
            return None;
        }
        entry.used = self.inner.tick.fetch_add(1, Ordering::Relaxed);
        Some(entry.token.clone())
    }

    fn observe(&self, f: impl FnOnce(&dyn TokenCacheObserver)) {
        if let Some(o) = &self.inner.observer {
            f(o.as_ref());
        }
    }

    /// The cached token of `key` while it is fresh and not `stale` (the one the forge just
    /// refused); else one from `fetch`, which returns the token and how long it may be used.
    pub(crate) async fn get_or_fetch<E, F, Fut>(
        &self,
        key: [u8; 32],
        exchange: &ExchangeLock,
        stale: Option<&Secret>,
        provider: Option<&ProviderRef>,
        fetch: F,
    ) -> Result<Secret, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(Secret, Duration), E>>,
    {
        if self.inner.settings.max_size == 0 {
            return fetch().await.map(|(token, _)| token);
        }
        let provider = provider.cloned().unwrap_or_default();
        if let Some(token) = self.fresh(&key, stale) {
            self.observe(|o| {
                o.event(true, &provider);
                o.request(true);
            });
            return Ok(token);
        }
        // Concurrent deliveries wait for one exchange instead of each starting their own.
        let _exchange = exchange.lock().await;
        if let Some(token) = self.fresh(&key, stale) {
            self.observe(|o| {
                o.event(true, &provider);
                o.request(true);
            });
            return Ok(token);
        }
        self.observe(|o| o.event(false, &provider));
        let (token, usable) = match fetch().await {
            Ok(t) => t,
            Err(e) => {
                self.observe(|o| o.request(false));
                return Err(e);
            }
        };
        let keep = usable.min(self.inner.settings.max_duration);
        let (count, evicted) = {
            let mut entries = lock(&self.inner.entries);
            let mut evicted = 0;
            while !entries.contains_key(&key) && entries.len() >= self.inner.settings.max_size {
                let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| *k)
                else {
                    break;
                };
                entries.remove(&oldest);
                evicted += 1;
            }
            entries.insert(
                key,
                Entry {
                    token: token.clone(),
                    refresh_at: Instant::now() + keep,
                    used: self.inner.tick.fetch_add(1, Ordering::Relaxed),
                },
            );
            (entries.len(), evicted)
        };
        self.observe(|o| {
            for _ in 0..evicted {
                o.eviction();
            }
            o.items(count);
            o.request(true);
        });
        Ok(token)
    }
}

/// One identity's place in the cache: its key, the exchange lock it shares with every holder
/// of the same key, and the Provider that labels its events.
pub(crate) struct TokenSlot {
    tokens: TokenCache,
    key: [u8; 32],
    exchange: Arc<ExchangeLock>,
    provider: Option<ProviderRef>,
}

impl TokenSlot {
    pub(crate) fn new(tokens: &TokenCache, key: [u8; 32], provider: Option<&ProviderRef>) -> Self {
        Self {
            tokens: tokens.clone(),
            key,
            exchange: tokens.exchange_lock(key),
            provider: provider.cloned(),
        }
    }

    /// [`TokenCache::get_or_fetch`] for this identity.
    pub(crate) async fn get_or_fetch<E, F, Fut>(
        &self,
        stale: Option<&Secret>,
        fetch: F,
    ) -> Result<Secret, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(Secret, Duration), E>>,
    {
        self.tokens
            .get_or_fetch(
                self.key,
                &self.exchange,
                stale,
                self.provider.as_ref(),
                fetch,
            )
            .await
    }

    /// Whether both wait on one exchange (tests).
    #[cfg(test)]
    pub(crate) fn shares_exchange_with(&self, other: &TokenSlot) -> bool {
        Arc::ptr_eq(&self.exchange, &other.exchange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);

    impl TokenCacheObserver for Seen {
        fn event(&self, hit: bool, p: &ProviderRef) {
            lock(&self.0).push(format!(
                "{} {}/{}",
                if hit { "hit" } else { "miss" },
                p.namespace,
                p.name
            ));
        }
        fn request(&self, ok: bool) {
            lock(&self.0).push(format!("request {ok}"));
        }
        fn items(&self, n: usize) {
            lock(&self.0).push(format!("items {n}"));
        }
        fn eviction(&self) {
            lock(&self.0).push("eviction".into());
        }
    }

    async fn get(c: &TokenCache, k: u8, value: &str) -> Secret {
        let l = c.exchange_lock([k; 32]);
        let p = ProviderRef {
            namespace: "ns".into(),
            name: format!("p{k}"),
        };
        c.get_or_fetch::<(), _, _>([k; 32], &l, None, Some(&p), || async {
            Ok((Secret::new(value), Duration::from_secs(600)))
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn bounded_lru_with_flux_events() {
        let seen = Arc::new(Seen::default());
        let c = TokenCache::new(
            TokenCacheSettings {
                max_size: 2,
                max_duration: Duration::from_secs(7200),
            },
            Some(seen.clone()),
        );
        assert_eq!(c.inner.settings.max_duration, TOKEN_MAX_DURATION);
        assert_eq!(get(&c, 1, "a").await.expose(), "a");
        assert_eq!(get(&c, 1, "other").await.expose(), "a");
        get(&c, 2, "b").await;
        get(&c, 1, "a").await; // 1 is now the most recently used
        get(&c, 3, "c").await; // evicts 2
        assert_eq!(get(&c, 2, "b2").await.expose(), "b2");
        let log = lock(&seen.0).join("\n");
        assert!(
            log.starts_with("miss ns/p1\nitems 1\nrequest true\nhit ns/p1\nrequest true\n"),
            "{log}"
        );
        assert_eq!(log.matches("eviction").count(), 2, "{log}");
        assert!(
            log.ends_with("miss ns/p2\neviction\nitems 2\nrequest true"),
            "{log}"
        );
    }

    #[tokio::test]
    async fn size_zero_never_caches_and_failures_count() {
        let off = TokenCache::new(
            TokenCacheSettings {
                max_size: 0,
                max_duration: TOKEN_MAX_DURATION,
            },
            None,
        );
        get(&off, 1, "a").await;
        assert_eq!(get(&off, 1, "b").await.expose(), "b");
        let seen = Arc::new(Seen::default());
        let c = TokenCache::new(TokenCacheSettings::default(), Some(seen.clone()));
        let l = c.exchange_lock([9; 32]);
        let r = c
            .get_or_fetch([9; 32], &l, None, None, || async {
                Err::<(Secret, Duration), _>("down")
            })
            .await;
        assert_eq!(r.unwrap_err(), "down");
        assert_eq!(lock(&seen.0).join(","), "miss /,request false");
        // A short usable lifetime is honoured.
        let fetch =
            |v: &'static str| move || async move { Ok::<_, ()>((Secret::new(v), Duration::ZERO)) };
        c.get_or_fetch([8; 32], &l, None, None, fetch("x"))
            .await
            .unwrap();
        let again = c
            .get_or_fetch([8; 32], &l, None, None, fetch("y"))
            .await
            .unwrap();
        assert_eq!(again.expose(), "y");
    }
}
