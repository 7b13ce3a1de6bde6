//! The two HTTP servers the benchmark talks to: the fast stub GitHub Enterprise forge (in
//! process, so its receipt times share the load generator's clock) and the baseline server
//! that answers 202 to everything (run as a child process, like the controller).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A commit SHA as 40 lowercase hex bytes: the key that ties a sent event to the status POST
/// it causes.
pub type Sha = [u8; 40];

/// Send times of events under latency measurement, and the latencies observed so far.
#[derive(Default)]
pub struct Probe {
    sent: Mutex<HashMap<Sha, Instant>>,
    samples: Mutex<Vec<Duration>>,
}

impl Probe {
    pub fn sent(&self, sha: Sha, at: Instant) {
        self.sent.lock().unwrap().insert(sha, at);
    }

    /// Forgets an event that was not accepted, so it is not counted as lost.
    pub fn unsent(&self, sha: &Sha) {
        self.sent.lock().unwrap().remove(sha);
    }

    fn received(&self, sha: &Sha, at: Instant) {
        let sent = self.sent.lock().unwrap().remove(sha);
        if let Some(sent) = sent {
            self.samples
                .lock()
                .unwrap()
                .push(at.saturating_duration_since(sent));
        }
    }

    /// Events sent but whose status has not reached the stub (yet).
    pub fn outstanding(&self) -> usize {
        self.sent.lock().unwrap().len()
    }

    pub fn samples(&self) -> Vec<Duration> {
        self.samples.lock().unwrap().clone()
    }
}

/// What the stub forge has seen.
pub struct StubStats {
    /// While set, every request is answered 503: the forge is down.
    down: std::sync::atomic::AtomicBool,
    posts: AtomicU64,
    gets: AtomicU64,
    unexpected: AtomicU64,
    probe: OnceLock<Arc<Probe>>,
}

impl StubStats {
    pub fn posts(&self) -> u64 {
        self.posts.load(Ordering::Relaxed)
    }

    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::Relaxed)
    }

    pub fn unexpected(&self) -> u64 {
        self.unexpected.load(Ordering::Relaxed)
    }

    /// Takes the forge down (every request answered 503) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    /// Routes receipts of status POSTs to `probe` from now on.
    pub fn attach(&self, probe: Arc<Probe>) {
        let _ = self.probe.set(probe);
    }
}

/// The stub forge: GitHub's list-statuses answers `[]`, create-status answers 201 `{}`.
pub struct StubForge {
    pub addr: SocketAddr,
    pub stats: Arc<StubStats>,
    task: tokio::task::JoinHandle<()>,
}

impl StubForge {
    pub async fn start() -> anyhow::Result<StubForge> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(StubStats {
            down: std::sync::atomic::AtomicBool::new(false),
            posts: AtomicU64::new(0),
            gets: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            probe: OnceLock::new(),
        });
        let shared = stats.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // Without it a small response can sit in Nagle's buffer and skew latency.
                let _ = stream.set_nodelay(true);
                let stats = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| forge(req, stats.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(StubForge { addr, stats, task })
    }
}

impl Drop for StubForge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forge(
    req: Request<Incoming>,
    stats: Arc<StubStats>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    // The body must be read before answering for the connection to be reused.
    let _ = body.collect().await;
    let received = Instant::now();
    let segments: Vec<&str> = parts.uri.path().split('/').collect();
    // ["", "api", "v3", "repos", owner, repo, ...]
    let tail = segments.get(6..).unwrap_or_default();
    let is_repo = segments.len() > 6 && segments[1..4] == ["api", "v3", "repos"];
    let (status, body): (StatusCode, &'static str) = match (&parts.method, tail) {
        _ if stats.down.load(Ordering::Relaxed) => (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"message":"Service Unavailable"}"#,
        ),
        (&Method::GET, ["commits", _, "statuses"]) if is_repo => {
            stats.gets.fetch_add(1, Ordering::Relaxed);
            (StatusCode::OK, "[]")
        }
        (&Method::POST, ["statuses", sha]) if is_repo => {
            stats.posts.fetch_add(1, Ordering::Relaxed);
            if let (Some(probe), Ok(sha)) = (stats.probe.get(), Sha::try_from(sha.as_bytes())) {
                probe.received(&sha, received);
            }
            (StatusCode::CREATED, "{}")
        }
        _ => {
            stats.unexpected.fetch_add(1, Ordering::Relaxed);
            (StatusCode::NOT_FOUND, r#"{"message":"Not Found"}"#)
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    Ok(resp)
}

/// Serves the baseline until killed: read the body, answer 202 with an empty body, which is
/// all the event API must do at minimum. Runs in its own process so that, like the
/// controller, it does not share a runtime with the load generator.
pub async fn serve_baseline(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|req: Request<Incoming>| async move {
                let _ = req.into_body().collect().await;
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = StatusCode::ACCEPTED;
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
