//! The load generator: Flux-shaped events, each unique, sent over C HTTP/1.1 keep-alive
//! connections, either closed-loop (as fast as answers come back) or open-loop (paced).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

use crate::servers::{Probe, Sha};

/// How long a worker waits before retrying an event refused with 503. Far below the
/// controller's `Retry-After: 5` on purpose: the point is to keep delivery saturated.
const BUSY_BACKOFF: Duration = Duration::from_millis(20);

/// Which events to send. Every event gets a fresh random revision SHA, because the controller
/// refuses an identical (name, namespace, kind, message, revision) event for 5 minutes.
#[derive(Clone, Copy, Debug)]
pub enum Mix {
    /// kustomize-controller's success event (`commit_status: update`) for Kustomizations
    /// `app-<n>` in namespace `elsewhere`, which no Alert selects.
    Unwatched { names: usize },
    /// The same success event for `app-<n>`: selected by exactly one Alert, so each event
    /// becomes one commit status.
    Deliver { names: usize },
    /// kustomize-controller's `Progressing` change-set event for `app-<n>`: matched by one
    /// Alert, then dropped at the commit-status gate (no `commit_status`), so the run measures
    /// ingest and matching without delivery.
    Gated { names: usize },
}

impl Mix {
    pub fn event(self, seq: u64, sha: &Sha) -> Bytes {
        let sha = std::str::from_utf8(sha).expect("hex");
        let namespace = match self {
            Mix::Unwatched { .. } => "elsewhere",
            Mix::Deliver { .. } | Mix::Gated { .. } => "bench",
        };
        let (name, reason, message, extra) = match self {
            Mix::Unwatched { names } => (
                format!("app-{}", seq % names as u64),
                "ReconciliationSucceeded",
                "Reconciliation finished in 2.1s, next run in 10m0s".to_string(),
                r#","kustomize.toolkit.fluxcd.io/commit_status":"update""#,
            ),
            Mix::Deliver { names } => (
                format!("app-{}", seq % names as u64),
                "ReconciliationSucceeded",
                "Reconciliation finished in 2.1s, next run in 10m0s".to_string(),
                r#","kustomize.toolkit.fluxcd.io/commit_status":"update""#,
            ),
            Mix::Gated { names } => {
                let name = format!("app-{}", seq % names as u64);
                let message = format!("Deployment/bench/{name} configured");
                (name, "Progressing", message, "")
            }
        };
        Bytes::from(format!(
            r#"{{"involvedObject":{{"apiVersion":"kustomize.toolkit.fluxcd.io/v1","kind":"Kustomization","namespace":"{namespace}","name":"{name}","uid":"7d0cdc51-ddcf-4743-b223-83ca5c699632"}},"severity":"info","timestamp":"2026-11-25T07:26:19Z","message":"{message}","reason":"{reason}","metadata":{{"kustomize.toolkit.fluxcd.io/revision":"main@sha1:{sha}"{extra}}},"reportingController":"kustomize-controller","reportingInstance":"kustomize-controller-7f5c8b6d9c-x2x9z"}}"#
        ))
    }
}

/// xorshift64*: plenty for unique SHAs, and no extra dependency.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(stream: u64) -> Rng {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        Rng((now ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn sha(&mut self) -> Sha {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 40];
        for chunk in out.chunks_mut(16) {
            let mut bits = self.next();
            for b in chunk {
                *b = HEX[(bits & 15) as usize];
                bits >>= 4;
            }
        }
        out
    }
}

/// Answers by status code, plus transport errors.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub by_status: BTreeMap<u16, u64>,
    pub errors: u64,
}

impl Tally {
    pub fn accepted(&self) -> u64 {
        self.by_status.get(&202).copied().unwrap_or(0)
    }

    pub fn add(&mut self, other: &Tally) {
        for (k, v) in &other.by_status {
            *self.by_status.entry(*k).or_default() += v;
        }
        self.errors += other.errors;
    }

    /// Everything that was not a 202, for the report's notes.
    pub fn anomalies(&self) -> String {
        let mut parts: Vec<String> = self
            .by_status
            .iter()
            .filter(|(k, _)| **k != 202)
            .map(|(k, v)| format!("{v}×{k}"))
            .collect();
        if self.errors > 0 {
            parts.push(format!("{} transport errors", self.errors));
        }
        parts.join(", ")
    }
}

pub(crate) struct Conn {
    addr: SocketAddr,
    host: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub(crate) fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            host: addr.to_string(),
            sender: None,
        }
    }

    /// POSTs one event to `/` and returns the status, reconnecting if the connection broke.
    pub(crate) async fn post(&mut self, body: Bytes) -> anyhow::Result<u16> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Some(connect(self.addr).await?);
        }
        let sender = self.sender.as_mut().expect("connected");
        let result = async {
            sender.ready().await?;
            let req = Request::post("/")
                .header(header::HOST, &self.host)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(body))?;
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await?;
            anyhow::Ok(status)
        }
        .await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One GET on a fresh connection; the status, if any answer came.
pub async fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut sender = connect(addr).await.ok()?;
    let req = Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))
        .ok()?;
    let resp = sender.send_request(req).await.ok()?;
    Some(resp.status().as_u16())
}

/// Closed-loop run: `conns` connections each send the next event as soon as the previous one is
/// answered. Answers completed inside `[start + warmup, start + warmup + measure)` are counted.
pub struct ClosedLoop {
    pub conns: usize,
    pub warmup: Duration,
    pub measure: Duration,
}

pub struct ClosedResult {
    /// Answers inside the measurement window.
    pub window: Tally,
    /// Answers over the whole run (for checking that every accepted event was delivered).
    pub total: Tally,
    pub measure_start: Instant,
    pub measure_end: Instant,
}

impl ClosedResult {
    pub fn accepted_per_sec(&self) -> f64 {
        self.window.accepted() as f64 / (self.measure_end - self.measure_start).as_secs_f64()
    }
}

impl ClosedLoop {
    pub async fn run(&self, addr: SocketAddr, mix: Mix) -> anyhow::Result<ClosedResult> {
        let start = Instant::now();
        let measure_start = start + self.warmup;
        let measure_end = measure_start + self.measure;
        let mut workers = Vec::with_capacity(self.conns);
        for w in 0..self.conns {
            workers.push(tokio::spawn(async move {
                let mut rng = Rng::seeded(w as u64);
                let mut conn = Conn::new(addr);
                let (mut window, mut total) = (Tally::default(), Tally::default());
                let mut seq = w as u64;
                'events: loop {
                    let body = mix.event(seq, &rng.sha());
                    seq += 1;
                    loop {
                        let answer = conn.post(body.clone()).await;
                        let now = Instant::now();
                        let tally_for = |t: &mut Tally| match &answer {
                            Ok(s) => *t.by_status.entry(*s).or_default() += 1,
                            Err(_) => t.errors += 1,
                        };
                        tally_for(&mut total);
                        if now >= measure_end {
                            break 'events;
                        }
                        if now >= measure_start {
                            tally_for(&mut window);
                        }
                        match answer {
                            // Full queues: retry the same event, as Flux's recorder does
                            // (the controller gives the rate-limit token back with a 503).
                            Ok(503) => tokio::time::sleep(BUSY_BACKOFF).await,
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                            Ok(_) => continue 'events,
                        }
                    }
                }
                (window, total)
            }));
        }
        let (mut window, mut total) = (Tally::default(), Tally::default());
        for w in workers {
            let (w_window, w_total) = w.await?;
            window.add(&w_window);
            total.add(&w_total);
        }
        Ok(ClosedResult {
            window,
            total,
            measure_start,
            measure_end,
        })
    }
}

/// Open-loop run: events are released at a fixed rate whatever the answers, and handed to the
/// first free connection of `conns`. Send times go to `probe`.
pub async fn open_loop(
    addr: SocketAddr,
    mix: Mix,
    rate: u32,
    duration: Duration,
    conns: usize,
    probe: Arc<Probe>,
) -> anyhow::Result<Tally> {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let count = (duration.as_secs_f64() * f64::from(rate)).round() as u64;
    let (tx, rx) = mpsc::channel::<u64>(conns * 4);
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::with_capacity(conns);
    for w in 0..conns {
        let (rx, probe) = (rx.clone(), probe.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = Rng::seeded(1000 + w as u64);
            let mut conn = Conn::new(addr);
            let mut tally = Tally::default();
            loop {
                let next = rx.lock().await.recv().await;
                let Some(seq) = next else { break };
                let sha = rng.sha();
                let body = mix.event(seq, &sha);
                probe.sent(sha, Instant::now());
                match conn.post(body).await {
                    Ok(status) => {
                        *tally.by_status.entry(status).or_default() += 1;
                        if status != 202 {
                            probe.unsent(&sha);
                        }
                    }
                    Err(_) => {
                        tally.errors += 1;
                        probe.unsent(&sha);
                    }
                }
            }
            tally
        }));
    }
    let start = tokio::time::Instant::now();
    for seq in 0..count {
        tokio::time::sleep_until(start + period.mul_f64(seq as f64)).await;
        if tx.send(seq).await.is_err() {
            break;
        }
    }
    drop(tx);
    let mut tally = Tally::default();
    for w in workers {
        tally.add(&w.await?);
    }
    Ok(tally)
}
