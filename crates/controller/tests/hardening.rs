//! The listeners on an open network, through the built binary: form content types refused,
//! the pages on their own listener, bounded metric labels, the bounded duplicate-suppression
//! map, the request-body budget and the connection cap.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// Reads one HTTP/1.1 answer (head and a `Content-Length` body), or `None` if none came in
/// `timeout` or the connection closed first.
async fn read_answer(stream: &mut TcpStream, timeout: Duration) -> Option<String> {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return Some(String::from_utf8_lossy(&buf).into_owned());
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(timeout, read).await.ok().flatten()
}

fn post_head(host: &str, content_type: Option<&str>, len: usize) -> String {
    let ct = content_type.map_or(String::new(), |t| format!("Content-Type: {t}\r\n"));
    format!("POST / HTTP/1.1\r\nHost: {host}\r\n{ct}Content-Length: {len}\r\n\r\n")
}

#[tokio::test]
async fn form_content_types_get_415_and_are_neither_dispatched_nor_rate_limited() {
    let (c, stub, _d) = with_github_stub(&[]).await;
    let event = serde_json::to_vec(&success_event("apps", SHA)).unwrap();
    for ct in [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=----x",
        "text/plain",
        "TEXT/PLAIN; charset=UTF-8",
        "Application/X-WWW-Form-Urlencoded ; charset=utf-8",
    ] {
        let r = reqwest::Client::new()
            .post(&c.events_url)
            .header("content-type", ct)
            .body(event.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415, "{ct}");
    }
    // A 415 on a raw connection leaves it usable: the body was read and dropped.
    let mut s = TcpStream::connect(host_port(&c.events_url)).await.unwrap();
    let host = host_port(&c.events_url);
    for _ in 0..2 {
        s.write_all(post_head(&host, Some("text/plain"), event.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(&event).await.unwrap();
        let answer = read_answer(&mut s, WAIT).await.expect("an answer");
        assert!(answer.starts_with("HTTP/1.1 415"), "{answer}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(stub.requests().is_empty(), "nothing was dispatched");

    // The same event as JSON is accepted: the 415s did not take its rate-limit token.
    let r = reqwest::Client::new()
        .post(&c.events_url)
        .header("content-type", "application/json; charset=utf-8")
        .body(event.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    stub.wait_for(1, WAIT).await.unwrap();
    // Without a Content-Type, Flux's behaviour: here the duplicate is refused.
    let r = c.post_raw("POST", "/", event).await;
    assert_eq!(r.status(), 429);
}

#[tokio::test]
async fn the_pages_listener_takes_no_events_and_the_event_listener_serves_no_pages() {
    let (c, stub, _d) = with_github_stub(&[]).await;
    let event = serde_json::to_vec(&success_event("apps", SHA)).unwrap();
    let client = reqwest::Client::new();
    for (method, path) in [
        ("POST", "/"),
        ("POST", "/deliveries"),
        ("PUT", "/api/v1/deliveries"),
        ("POST", "/some/path"),
    ] {
        let r = client
            .request(method.parse().unwrap(), format!("{}{path}", c.pages_url))
            .header("content-type", "application/json")
            .body(event.clone())
            .send()
            .await
            .unwrap();
        assert!(
            r.status() == 404 || r.status() == 405,
            "{method} {path} on the pages listener: {}",
            r.status()
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        stub.requests().is_empty(),
        "the pages listener dispatched an event"
    );

    // The event listener answers every path as an event: a GET has an empty body (400).
    for path in ["/deliveries", "/api/v1/deliveries", "/deliveries/1"] {
        let r = client
            .get(format!("{}{}", c.events_url.trim_end_matches('/'), path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        assert!(!r.text().await.unwrap().contains("<html"), "{path}");
    }

    // The pages and the history API are on the pages listener, and `deliveries --server`
    // reads from it.
    assert_eq!(c.post(&success_event("apps", SHA)).await.status(), 202);
    stub.wait_for(1, WAIT).await.unwrap();
    let deadline = Instant::now() + WAIT;
    let history: Vec<Value> = loop {
        let h: Vec<Value> = reqwest::get(format!("{}/api/v1/deliveries", c.pages_url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !h.is_empty() || Instant::now() > deadline {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(history.len(), 1);
    let page = reqwest::get(format!("{}/deliveries", c.pages_url))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains(SHA));
    let url = c.pages_url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_commit-status-controller"))
            .args(["deliveries", "--server", &url, "--output=json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["commit"], SHA);
    // `limit` is clamped.
    let h: Vec<Value> = reqwest::get(format!("{}/api/v1/deliveries?limit=99999999", c.pages_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h.len(), 1);
}

#[tokio::test]
async fn made_up_methods_share_the_method_label_other() {
    let dir = tempfile::tempdir().unwrap();
    let c = Controller::start(dir.path(), &[], &[]).await;
    let client = reqwest::Client::new();
    for i in 0..30 {
        let r = client
            .request(format!("MADEUP{i}").parse().unwrap(), &c.events_url)
            .body(format!(r#"{{"message":"m{i}"}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let metrics = c.metrics().await;
    assert!(
        metrics.contains(r#"method="other""#),
        "no method=\"other\" series:\n{metrics}"
    );
    assert!(!metrics.contains("MADEUP"), "{metrics}");
    let methods: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("gotk_event_http_request_duration_seconds_count"))
        .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(methods, ["other"].into_iter().collect());
}

#[tokio::test]
async fn the_duplicate_suppression_map_is_bounded_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let c = Controller::start(
        dir.path(),
        &["--rate-limit-max-keys=2", "--rate-limit-interval=10m"],
        &[],
    )
    .await;
    let event = |name: &str| success_event(name, SHA);
    assert_eq!(c.post(&event("a")).await.status(), 202);
    assert_eq!(c.post(&event("b")).await.status(), 202);
    // Below the bound, Flux's answer and headers.
    let dup = c.post(&event("a")).await;
    assert_eq!(dup.status(), 429);
    for h in [
        "retry-after",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        assert!(dup.headers().contains_key(h), "{h}");
    }
    // A third key evicts the oldest ("a"), which is then new again.
    assert_eq!(c.post(&event("c")).await.status(), 202);
    assert_eq!(c.post(&event("c")).await.status(), 429);
    assert_eq!(c.post(&event("a")).await.status(), 202);
    let metrics = c.metrics().await;
    assert!(
        metrics.contains("commit_status_duplicate_keys_evicted_total 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn past_the_body_budget_the_event_api_answers_503_with_retry_after() {
    let (c, stub, _d) = with_github_stub(&["--max-body-bytes-in-flight=8Mi"]).await;
    let host = host_port(&c.events_url);
    let big = {
        let mut b = br#"{"message":""#.to_vec();
        b.resize(3 * 1024 * 1024 - 2, b'a');
        b.extend_from_slice(b"\"}");
        b
    };
    let with = |c: u8| {
        let mut b = big.clone();
        b[12] = c;
        b
    };
    // One 3 MiB body in flight, sent slowly: it holds most of the budget.
    let slow_body = with(b's');
    let mut slow = TcpStream::connect(&host).await.unwrap();
    slow.write_all(post_head(&host, Some("application/json"), big.len()).as_bytes())
        .await
        .unwrap();
    slow.write_all(&slow_body[..1024]).await.unwrap();

    let deadline = Instant::now() + WAIT;
    let refused = loop {
        let r = c.post_raw("POST", "/", big.clone()).await;
        if r.status() == 503 {
            break r;
        }
        assert!(r.status() == 202 || r.status() == 429, "{}", r.status());
        assert!(Instant::now() < deadline, "no 503 while the budget is held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(refused.headers().contains_key("retry-after"));
    // A small valid event still gets through, and is delivered.
    assert_eq!(c.post(&success_event("apps", SHA)).await.status(), 202);
    stub.wait_for(1, WAIT).await.unwrap();

    // The slow body, finished, is answered; then large bodies are taken again.
    slow.write_all(&slow_body[1024..]).await.unwrap();
    let answer = read_answer(&mut slow, WAIT).await.expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(c.post_raw("POST", "/", with(b'c')).await.status(), 202);
}

#[tokio::test]
async fn each_listener_caps_its_connections_and_closes_idle_ones() {
    let dir = tempfile::tempdir().unwrap();
    let c = Controller::start(dir.path(), &["--max-connections=1"], &[]).await;
    let host = host_port(&c.events_url);
    let first = TcpStream::connect(&host).await.unwrap();
    // Give the controller time to take the first connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second = TcpStream::connect(&host).await.unwrap();
    second
        .write_all(post_head(&host, None, 2).as_bytes())
        .await
        .unwrap();
    second.write_all(b"{}").await.unwrap();
    assert!(
        read_answer(&mut second, Duration::from_millis(1500))
            .await
            .is_none(),
        "a second connection was served past --max-connections=1"
    );
    // Other listeners have their own cap.
    let r = reqwest::get(format!("{}/healthz", c.health_url))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(first);
    let answer = read_answer(&mut second, WAIT)
        .await
        .expect("served once a slot is free");
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    // An idle keep-alive connection is closed by the server (header-read timeout, 10 s).
    let started = Instant::now();
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(40), second.read(&mut rest))
        .await
        .expect("the idle connection was not closed");
    assert_eq!(n.unwrap_or(0), 0);
    assert!(started.elapsed() >= Duration::from_secs(5));
}
