//! `--kube-api-qps` / `--kube-api-burst`: a token bucket in front of every Kubernetes API
//! request, as client-go's default rate limiter (a full bucket of `burst` tokens, refilled at
//! `qps` per second; a request waits for its token rather than failing).

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Shared by every request of one client.
#[derive(Clone, Debug)]
pub struct Throttle {
    qps: f64,
    burst: f64,
    bucket: Arc<Mutex<Bucket>>,
}

impl Throttle {
    /// `qps <= 0` turns throttling off, as in client-go.
    pub fn new(qps: f32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            qps: f64::from(qps),
            burst,
            bucket: Arc::new(Mutex::new(Bucket {
                tokens: burst,
                last: Instant::now(),
            })),
        }
    }

    /// Takes a token now (possibly going into debt) and says how long to wait until it is
    /// really ours; waiting callers queue up in the order they reserved.
    pub fn reserve(&self) -> Duration {
        if !self.qps.is_finite() || self.qps <= 0.0 {
            return Duration::ZERO;
        }
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * self.qps;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.last = now;
        b.tokens -= 1.0;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / self.qps)
        }
    }
}

impl<S> tower_layer::Layer<S> for Throttle {
    type Service = Throttled<S>;
    fn layer(&self, inner: S) -> Throttled<S> {
        Throttled {
            inner,
            throttle: self.clone(),
        }
    }
}

pub struct Throttled<S> {
    inner: S,
    throttle: Throttle,
}

impl<S, R> tower_service::Service<R> for Throttled<S>
where
    S: tower_service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let wait = self.throttle.reserve();
        // Futures are lazy: the request leaves only once polled, after the wait.
        let fut = self.inner.call(req);
        Box::pin(async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            fut.await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_qps() {
        let t = Throttle::new(1.0, 3);
        for _ in 0..3 {
            assert_eq!(t.reserve(), Duration::ZERO);
        }
        let fourth = t.reserve().as_secs_f64();
        assert!((0.9..=1.0).contains(&fourth), "{fourth}");
        let fifth = t.reserve().as_secs_f64();
        assert!((1.9..=2.0).contains(&fifth), "{fifth}");
        // Refilled at the rate, never above the burst.
        let fast = Throttle::new(1000.0, 2);
        assert_eq!(fast.reserve(), Duration::ZERO);
        assert_eq!(fast.reserve(), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(fast.reserve(), Duration::ZERO);
        assert_eq!(fast.reserve(), Duration::ZERO);
        assert!(fast.reserve() > Duration::ZERO);
        assert_eq!(Throttle::new(0.0, 1).reserve(), Duration::ZERO);
    }
}
