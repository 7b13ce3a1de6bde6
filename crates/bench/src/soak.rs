//! Memory under hostile traffic: sequential short connections spread over the listeners (RSS
//! growth after a warm-up), 64 clients sending 3 MiB bodies of hostile shapes at once (peak
//! RSS, every request answered, valid events still delivered), and the soak, which runs
//! connection churn, large bodies and a mixed event stream together for minutes while RSS is
//! sampled.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

use crate::controller::{Controller, memory};
use crate::load::{Mix, Rng, Tally};
use crate::manifests::Layout;
use crate::report::Figure;
use crate::servers::StubForge;
use crate::{Bench, MIB};

/// Flux's body cap; the hostile bodies are exactly this long.
const MAX_BODY: usize = 3 * 1024 * 1024;
/// Sequential short connections measured after the warm-up.
const CHURN_CONNECTIONS: u64 = 200_000;
const CHURN_WARMUP: u64 = 20_000;
/// Concurrent clients with 3 MiB bodies.
const BODY_CLIENTS: usize = 64;
const BODIES_PER_CLIENT: usize = 4;

/// The listeners of one controller run.
#[derive(Clone, Copy)]
pub struct Listeners {
    pub events: SocketAddr,
    pub health: SocketAddr,
    pub metrics: SocketAddr,
    pub pages: SocketAddr,
}

impl Listeners {
    fn of(c: &Controller) -> Listeners {
        Listeners {
            events: c.events,
            health: c.health,
            metrics: c.metrics,
            pages: c.pages,
        }
    }
}

/// One request on a fresh connection from `src` (any 127.x address, so that sequential
/// connections do not run out of ephemeral ports), closed after the answer.
async fn one_shot(
    src: Ipv4Addr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Bytes,
) -> anyhow::Result<u16> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((src, 0)))?;
    let stream = socket.connect(addr).await.context("connect")?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONNECTION, "close");
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let resp = sender.send_request(req.body(Full::new(body))?).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    drop(sender);
    let _ = conn.await;
    Ok(status)
}

/// A loopback source address for connection `n`.
fn source(n: u64) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1 + (n / 250 % 250) as u8, 1 + (n % 250) as u8)
}

/// Connection `n` of the churn: a health probe, a duplicate event, a scrape, or a history
/// query, in turn.
async fn churn_one(l: Listeners, n: u64, event: &Bytes) -> anyhow::Result<u16> {
    let src = source(n);
    match n % 4 {
        0 => one_shot(src, l.health, "GET", "/readyz", None, Bytes::new()).await,
        1 => {
            one_shot(
                src,
                l.events,
                "POST",
                "/",
                Some("application/json"),
                event.clone(),
            )
            .await
        }
        2 => one_shot(src, l.metrics, "GET", "/metrics", None, Bytes::new()).await,
        _ => {
            let path = "/api/v1/deliveries?limit=1";
            one_shot(src, l.pages, "GET", path, None, Bytes::new()).await
        }
    }
}

/// The same event every time: after the first it is a duplicate (429), so the duplicate
/// suppression does not grow and only the connections are measured.
fn churn_event() -> Bytes {
    Bytes::from_static(
        br#"{"involvedObject":{"apiVersion":"kustomize.toolkit.fluxcd.io/v1","kind":"Kustomization","namespace":"elsewhere","name":"churn"},"severity":"info","message":"churn","reason":"ReconciliationSucceeded"}"#,
    )
}

/// Runs `count` sequential connections from connection number `first`.
async fn churn(l: Listeners, first: u64, count: u64, tally: &mut Tally) {
    let event = churn_event();
    for n in first..first + count {
        match churn_one(l, n, &event).await {
            Ok(s) => *tally.by_status.entry(s).or_default() += 1,
            Err(_) => tally.errors += 1,
        }
    }
}

/// The hostile 3 MiB bodies, each exactly [`MAX_BODY`] bytes.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// 9,000 nested arrays under an unknown key.
    Nested,
    /// Half a million repetitions of one unknown key.
    RepeatedKeys,
    /// One 3 MiB string under an unknown key.
    HugeString,
    /// One 3 MiB message (a field that is kept).
    HugeMessage,
    /// The same metadata key over and over.
    RepeatedMetadata,
}

const SHAPES: [Shape; 5] = [
    Shape::Nested,
    Shape::RepeatedKeys,
    Shape::HugeString,
    Shape::HugeMessage,
    Shape::RepeatedMetadata,
];

fn hostile(shape: Shape, salt: u64) -> Bytes {
    let pad = |mut b: Vec<u8>, tail: &[u8]| {
        // Pads inside a final string so that the body ends with `tail` at exactly MAX_BODY.
        let fill = MAX_BODY - b.len() - tail.len();
        b.extend(std::iter::repeat_n(b'a', fill));
        b.extend_from_slice(tail);
        Bytes::from(b)
    };
    let salt = format!("{salt:016x}");
    match shape {
        Shape::Nested => {
            let mut b = format!(r#"{{"salt":"{salt}","x":"#).into_bytes();
            b.extend(std::iter::repeat_n(b'[', 9_000));
            b.extend(std::iter::repeat_n(b']', 9_000));
            b.extend_from_slice(br#","p":""#);
            pad(b, br#""}"#)
        }
        Shape::RepeatedKeys => {
            let mut b = format!(r#"{{"salt":"{salt}""#).into_bytes();
            while b.len() < MAX_BODY - 64 {
                b.extend_from_slice(br#","a":1"#);
            }
            b.extend_from_slice(br#","p":""#);
            pad(b, br#""}"#)
        }
        Shape::HugeString => pad(format!(r#"{{"salt":"{salt}","x":""#).into_bytes(), br#""}"#),
        Shape::HugeMessage => pad(format!(r#"{{"message":"{salt}"#).into_bytes(), br#""}"#),
        Shape::RepeatedMetadata => {
            let mut b = format!(r#"{{"message":"{salt}","metadata":{{"#).into_bytes();
            while b.len() < MAX_BODY - 64 {
                b.extend_from_slice(br#""event.toolkit.fluxcd.io/k":"v","#);
            }
            b.extend_from_slice(br#""p":""#);
            pad(b, br#""}}"#)
        }
    }
}

/// Valid events for Alerts `a-<n>`, each a status at the stub; a 503 is retried after the
/// `Retry-After` pause, as Flux's recorder does.
async fn valid_stream(
    events: SocketAddr,
    count: u64,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    stream: u64,
) -> Tally {
    let mut tally = Tally::default();
    let mut rng = Rng::seeded(7_000 + stream);
    let mix = Mix::Deliver { names: 10 };
    for seq in 0..count {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let body = mix.event(seq, &rng.sha());
        loop {
            let answer = one_shot(
                source(seq),
                events,
                "POST",
                "/",
                Some("application/json"),
                body.clone(),
            )
            .await;
            match answer {
                Ok(s) => {
                    *tally.by_status.entry(s).or_default() += 1;
                    if s == 503 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    if s == 202 {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(_) => tally.errors += 1,
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tally
}

/// Samples the controller's RSS every 200 ms until stopped: (first, peak, last) in KiB.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64, u64)> {
    tokio::spawn(async move {
        let (mut first, mut peak, mut last) = (None, 0, 0);
        while !stop.load(Ordering::Relaxed) {
            if let Ok(m) = memory(pid) {
                first.get_or_insert(m.rss_kib);
                peak = peak.max(m.rss_kib).max(m.hwm_kib);
                last = m.rss_kib;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (first.unwrap_or(0), peak, last)
    })
}

fn by_status(t: &Tally) -> String {
    let mut parts: Vec<String> = t
        .by_status
        .iter()
        .map(|(k, v)| format!("{v}×{k}"))
        .collect();
    if t.errors > 0 {
        parts.push(format!("{} without an answer", t.errors));
    }
    parts.join(", ")
}

/// Waits until the stub has `n` status POSTs; false after `timeout`.
async fn delivered(stub: &StubForge, n: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while stub.stats.posts() < n {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

const SMALL: Layout = Layout {
    providers: 10,
    alerts: 10,
    foreign_alerts: 0,
    other_name_alerts: 0,
};

impl Bench {
    /// RSS growth over 200,000 sequential short connections after a warm-up.
    pub async fn churn(&self) -> Vec<Figure> {
        let label = format!(
            "memory: RSS growth over {} short connections (4 listeners)",
            if self.quick { "20,000" } else { "200,000" }
        );
        let result = async {
            let stub = StubForge::start().await?;
            let (c, _) = self.controller("churn", SMALL, &stub).await?;
            let l = Listeners::of(&c);
            let (warmup, count) = if self.quick {
                (CHURN_WARMUP / 10, CHURN_CONNECTIONS / 10)
            } else {
                (CHURN_WARMUP, CHURN_CONNECTIONS)
            };
            let mut warm = Tally::default();
            churn(l, 0, warmup, &mut warm).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = c.memory()?;
            let started = Instant::now();
            let mut tally = Tally::default();
            churn(l, warmup, count, &mut tally).await;
            let rate = count as f64 / started.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = c.memory()?;
            c.stop().await;
            let growth = (after.rss_kib as f64 - before.rss_kib as f64) / MIB;
            anyhow::Ok(vec![
                Figure::new("churn_rss_growth_mib", label.clone(), growth, "MiB")
                    .at_most(2.0, "≤ 2 MiB")
                    .note(format!(
                        "{count} connections; RSS {:.1} → {:.1} MiB after a {warmup}-connection warm-up; {rate:.0} connections/s; answers: {}",
                        before.rss_kib as f64 / MIB,
                        after.rss_kib as f64 / MIB,
                        by_status(&tally)
                    )),
            ])
        }
        .await;
        result.unwrap_or_else(|e| {
            vec![Figure::missing(
                "churn_rss_growth_mib",
                label,
                e.to_string(),
            )]
        })
    }

    /// Peak RSS while 64 clients send 3 MiB bodies of hostile shapes, with valid events
    /// during and after.
    pub async fn bodies(&self) -> Vec<Figure> {
        let label = "memory: peak RSS, 64 clients × 3 MiB hostile bodies";
        let result = async {
            let stub = StubForge::start().await?;
            let (c, _) = self.controller("bodies", SMALL, &stub).await?;
            let events = c.events;
            let (stop, accepted) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
            let during = tokio::spawn(valid_stream(events, 200, stop.clone(), accepted.clone(), 0));
            let shapes = Arc::new(Mutex::new(BTreeMap::<String, Tally>::new()));
            let rounds = if self.quick { 1 } else { BODIES_PER_CLIENT };
            let mut clients = Vec::new();
            for client in 0..BODY_CLIENTS {
                let shapes = shapes.clone();
                clients.push(tokio::spawn(async move {
                    for round in 0..rounds {
                        let shape = SHAPES[(client + round) % SHAPES.len()];
                        let body = hostile(shape, (client * 1000 + round) as u64);
                        let answer = one_shot(
                            source(client as u64),
                            events,
                            "POST",
                            "/",
                            Some("application/json"),
                            body,
                        )
                        .await;
                        let mut shapes = shapes.lock().unwrap();
                        let t = shapes.entry(format!("{shape:?}")).or_default();
                        match answer {
                            Ok(s) => *t.by_status.entry(s).or_default() += 1,
                            Err(_) => t.errors += 1,
                        }
                    }
                }));
            }
            for client in clients {
                client.await?;
            }
            let during = during.await?;
            let after = valid_stream(events, 100, stop, accepted.clone(), 1).await;
            let all = accepted.load(Ordering::Relaxed);
            let delivered = delivered(&stub, all, Duration::from_secs(60)).await;
            let m = c.memory()?;
            c.stop().await;
            let shapes = shapes.lock().unwrap();
            let unanswered: u64 = shapes.values().map(|t| t.errors).sum();
            let answers: Vec<String> = shapes
                .iter()
                .map(|(k, t)| format!("{k}: {}", by_status(t)))
                .collect();
            anyhow::Ok(vec![
                Figure::new("bodies_peak_rss_mib", label, m.hwm_kib as f64 / MIB, "MiB")
                    .at_most(128.0, "≤ 128 MiB")
                    .note(format!(
                        "bodies {}; valid events during: {}, after: {}; {all} accepted, {}; {unanswered} bodies without an answer",
                        answers.join("; "),
                        by_status(&during),
                        by_status(&after),
                        if delivered { "all delivered" } else { "NOT all delivered" }
                    )),
            ])
        }
        .await;
        result
            .unwrap_or_else(|e| vec![Figure::missing("bodies_peak_rss_mib", label, e.to_string())])
    }

    /// Connection churn on every listener, large hostile bodies and a mixed event stream at
    /// once for `duration`, printing RSS (start, peak, end) and the answers by status code.
    pub async fn soak(&self, duration: Duration) -> anyhow::Result<String> {
        let stub = StubForge::start().await?;
        let (c, _) = self.controller("soak", SMALL, &stub).await?;
        let l = Listeners::of(&c);
        let stop = Arc::new(AtomicBool::new(false));
        let rss = sample_rss(c.pid, stop.clone());
        let started = Instant::now();
        let deadline = started + duration;
        let running = move || Instant::now() < deadline;

        let mut churners = Vec::new();
        for worker in 0..2u64 {
            churners.push(tokio::spawn(async move {
                let (mut tally, event) = (Tally::default(), churn_event());
                let mut n = worker * 1_000_000_000;
                while running() {
                    match churn_one(l, n, &event).await {
                        Ok(s) => *tally.by_status.entry(s).or_default() += 1,
                        Err(_) => tally.errors += 1,
                    }
                    n += 1;
                }
                tally
            }));
        }
        let mut bodies = Vec::new();
        for client in 0..16u64 {
            bodies.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut round = 0u64;
                while running() {
                    let shape = SHAPES[((client + round) as usize) % SHAPES.len()];
                    let body = hostile(shape, client << 32 | round);
                    let answer = one_shot(
                        source(client),
                        l.events,
                        "POST",
                        "/",
                        Some("application/json"),
                        body,
                    )
                    .await;
                    match answer {
                        Ok(s) => *tally.by_status.entry(s).or_default() += 1,
                        Err(_) => tally.errors += 1,
                    }
                    round += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tally
            }));
        }
        // The mixed stream: valid events (each a status), duplicates, invalid JSON, form
        // bodies, made-up methods and oversized bodies.
        let accepted = Arc::new(AtomicU64::new(0));
        let mixed = {
            let accepted = accepted.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut rng = Rng::seeded(99);
                let mix = Mix::Deliver { names: 10 };
                let mut last = mix.event(0, &rng.sha());
                let oversized = Bytes::from(vec![b' '; MAX_BODY + 1]);
                let mut seq = 0u64;
                while running() {
                    let (method, ct, body, deliverable) = match seq % 10 {
                        0..=4 => {
                            last = mix.event(seq, &rng.sha());
                            ("POST", Some("application/json"), last.clone(), true)
                        }
                        5 => ("POST", Some("application/json"), last.clone(), false),
                        6 => ("POST", None, Bytes::from_static(b"{not json"), false),
                        7 => (
                            "POST",
                            Some("text/plain"),
                            mix.event(seq, &rng.sha()),
                            false,
                        ),
                        8 => ("BREW", None, Bytes::from_static(b"{}"), false),
                        _ => ("POST", None, oversized.clone(), false),
                    };
                    match one_shot(source(seq), l.events, method, "/", ct, body).await {
                        Ok(s) => {
                            *tally.by_status.entry(s).or_default() += 1;
                            if deliverable && s == 202 {
                                accepted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => tally.errors += 1,
                    }
                    seq += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                tally
            })
        };
        let mut churn_tally = Tally::default();
        for t in churners {
            churn_tally.add(&t.await?);
        }
        let mut body_tally = Tally::default();
        for t in bodies {
            body_tally.add(&t.await?);
        }
        let mixed = mixed.await?;
        let all = accepted.load(Ordering::Relaxed);
        let delivered = delivered(&stub, all, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        let (first, peak, last) = rss.await?;
        let end = c.memory()?;
        let errors = c.errors();
        c.stop().await;
        let mib = |k: u64| k as f64 / MIB;
        let mut out = format!(
            "soak: {:.0} s of connection churn on 4 listeners (2 loops), 16 clients with 3 MiB hostile bodies, and a mixed event stream\n\
             RSS: start {:.1} MiB, peak {:.1} MiB (VmHWM {:.1} MiB), end {:.1} MiB\n\
             answers, churn: {}\n\
             answers, 3 MiB bodies: {}\n\
             answers, mixed stream: {}\n\
             valid events accepted: {all}; statuses at the stub: {} ({})\n",
            duration.as_secs_f64(),
            mib(first),
            mib(peak),
            mib(end.hwm_kib),
            mib(last),
            by_status(&churn_tally),
            by_status(&body_tally),
            by_status(&mixed),
            stub.stats.posts(),
            if delivered {
                "all delivered"
            } else {
                "NOT all delivered"
            },
        );
        if !errors.is_empty() {
            out.push_str(&format!("controller errors (last lines): {errors}\n"));
        }
        Ok(out)
    }
}
