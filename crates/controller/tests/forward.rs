//! `--forward-events-to`: every accepted event reaches a recording stand-in for Flux's
//! notification-controller byte for byte, through an outage of the receiver and a SIGKILL of
//! the controller; the receiver's answers are recorded; refused events are never forwarded.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use testkit::{EventReceiver, ForgeKind, Received, StubOptions};

const WAIT: Duration = Duration::from_secs(30);
const FAST_RETRY: [&str; 2] = ["--min-retry-delay=50ms", "--max-retry-delay=200ms"];

/// Manifests for a GitHub stub (so events also become commit statuses), a data directory.
fn setup(stub: &Forge) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let manifests = github_manifests(dir.path(), stub);
    let data = format!("--data-dir={}", dir.path().join("data").display());
    (dir, manifests, data)
}

async fn post(c: &Controller, body: &[u8], content_type: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(&c.events_url)
        .body(body.to_vec());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.send().await.expect("POST")
}

async fn listing(c: &Controller, query: &str) -> Vec<Value> {
    let url = format!("{}/api/v1/deliveries{query}", c.pages_url);
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

async fn get_text(url: String) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

async fn wait_forwards(c: &Controller, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let h = listing(c, "?type=forward").await;
        if h.len() >= n || Instant::now() > deadline {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn accepted(received: &[Received]) -> Vec<&Received> {
    received
        .iter()
        .filter(|r| (200..300).contains(&r.answered))
        .collect()
}

/// A Flux event for `name`, serialised by hand so the exact bytes matter (spacing, key order,
/// escapes), with a revision so it also becomes a commit status.
fn raw_event(name: &str, i: usize, sha: &str) -> Vec<u8> {
    let spacing = if i.is_multiple_of(2) { "" } else { " \n\t" };
    format!(
        r#"{{"involvedObject":{{"kind":"Kustomization","namespace":"flux-system","name":"{name}","uid":"7d0cdc51-ddcf-4743-b223-83ca5c699632","apiVersion":"kustomize.toolkit.fluxcd.io/v1"}},{spacing}"severity":"info","timestamp":"2026-11-25T07:26:19Z","message":"step {i} \u00e9 \"quoted\" ✓","reason":"ReconciliationSucceeded","metadata":{{"kustomize.toolkit.fluxcd.io/revision":"main@sha1:{sha}","kustomize.toolkit.fluxcd.io/commit_status":"update","extra":"{i}"}},"reportingController":"kustomize-controller","reportingInstance":"kustomize-controller-7f5c8b6d9c-x2x9z"}}"#
    )
    .into_bytes()
}

#[tokio::test]
async fn forwards_survive_an_outage_and_a_sigkill_byte_for_byte_and_in_order() {
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let receiver = EventReceiver::start().await;
    receiver.stop();
    let (_dir, manifests, data) = setup(&stub);
    let target = format!("--forward-events-to={}", receiver.url());
    let mut args = vec![data.as_str(), target.as_str()];
    args.extend(FAST_RETRY);
    let c = Controller::start(&manifests, &args, &[]).await;

    let types = [
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        None,
    ];
    let mut sent = Vec::new();
    for i in 0..30 {
        let name = ["app-a", "app-b", "app-c"][i % 3];
        let sha = format!("{:040x}", 0xf00 + i);
        let body = raw_event(name, i, &sha);
        let ct = types[i % 3];
        let r = post(&c, &body, ct).await;
        assert_eq!(r.status(), 202, "{}", c.logs());
        sent.push((name, body, ct.map(|s| s.as_bytes().to_vec())));
    }
    // Every 202 means committed, forwards included: kill -9 right away.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &c.pid().to_string()])
        .status();
    drop(c);

    let c = Controller::start(&manifests, &args, &[]).await;
    // Still down for a while, then up but failing, then well.
    assert!(
        c.wait_log("event not forwarded yet, will retry", WAIT)
            .await,
        "{}",
        c.logs()
    );
    for _ in 0..3 {
        receiver.push_answer(503, "");
    }
    receiver.resume().await;
    let all_in = receiver
        .wait_for(WAIT, |r| accepted(r).len() >= sent.len())
        .await;
    assert!(
        all_in,
        "{} of {}\n{}",
        accepted(&receiver.received()).len(),
        sent.len(),
        c.logs()
    );

    let received = receiver.received();
    let got = accepted(&received);
    assert_eq!(got.len(), sent.len(), "each accepted event exactly once");
    // Byte for byte, with the same Content-Type, and in order per involved object.
    for name in ["app-a", "app-b", "app-c"] {
        let want: Vec<_> = sent
            .iter()
            .filter(|(n, ..)| *n == name)
            .map(|(_, b, ct)| (b.clone(), ct.clone()))
            .collect();
        let needle = format!(r#""name":"{name}""#);
        let have: Vec<_> = got
            .iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains(&needle))
            .map(|r| (r.body.clone(), r.content_type.clone()))
            .collect();
        assert_eq!(have, want, "{name}");
    }
    assert!(got.iter().all(|r| r.method == "POST" && r.path == "/"));
    assert!(
        received.iter().any(|r| r.answered == 503),
        "the 503s were seen"
    );

    // The history shows each forward beside the deliveries, without commit-status fields.
    let forwards = wait_forwards(&c, sent.len()).await;
    assert_eq!(forwards.len(), sent.len(), "{forwards:?}");
    for f in &forwards {
        assert_eq!(f["type"], "forward");
        assert_eq!(f["outcome"], "forwarded", "{f}");
        assert_eq!(f["target"], receiver.url());
        assert_eq!(f["http_status"], 202);
        assert!(f["attempts"].as_u64().unwrap() >= 1);
        assert!(f.get("commit").is_none() && f.get("state").is_none(), "{f}");
    }
    assert!(
        forwards.iter().any(|f| f["attempts"].as_u64().unwrap() > 1),
        "some were retried after the restart"
    );
    let deadline = Instant::now() + WAIT;
    while listing(&c, "?type=delivery").await.len() < sent.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let both = listing(&c, "?limit=1000").await;
    assert_eq!(
        both.len(),
        2 * sent.len(),
        "deliveries and forwards together: {:?}\n{}",
        listing(&c, "?type=delivery").await,
        c.logs()
    );
    let metrics = c.metrics().await;
    let line = format!(
        r#"commit_status_forwards_total{{target="{}",outcome="forwarded"}} {}"#,
        receiver.url(),
        // Forwarded after the restart: the counter started again with the process.
        sent.len()
    );
    assert!(metrics.contains(&line), "{line}\n{metrics}");
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
}

#[tokio::test]
async fn a_429_means_received_and_other_4xx_fail_with_the_answer() {
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let receiver = EventReceiver::start().await;
    let (_dir, manifests, data) = setup(&stub);
    let target = format!("--forward-events-to={}", receiver.url());
    let mut args = vec![data.as_str(), target.as_str()];
    args.extend(FAST_RETRY);
    let c = Controller::start(&manifests, &args, &[]).await;

    receiver.push_answer(429, "Too Many Requests");
    receiver.push_answer(400, "bad event: unknown field \"x\"");
    for (i, name) in ["dup", "bad", "fine"].into_iter().enumerate() {
        let ev = Event::test("flux-system", name)
            .progressing()
            .message("m")
            .only_meta(&[])
            .to_json();
        assert_eq!(c.post(&ev).await.status(), 202);
        assert!(
            receiver.wait_for(WAIT, |r| r.len() > i).await,
            "{}",
            c.logs()
        );
    }
    let forwards = wait_forwards(&c, 3).await;
    let by_object: HashMap<&str, &Value> = forwards
        .iter()
        .map(|f| (f["object"].as_str().unwrap(), f))
        .collect();
    let dup = by_object["Kustomization/flux-system/dup"];
    assert_eq!(dup["outcome"], "already_received", "{dup}");
    assert_eq!(dup["http_status"], 429);
    assert_eq!(dup["attempts"], 1);
    let bad = by_object["Kustomization/flux-system/bad"];
    assert_eq!(bad["outcome"], "failed", "{bad}");
    assert_eq!(bad["http_status"], 400);
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .contains("bad event: unknown field"),
        "{bad}"
    );
    assert_eq!(
        by_object["Kustomization/flux-system/fine"]["outcome"],
        "forwarded"
    );
    // Neither the 429 nor the 400 is retried.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.received().len(), 3);

    // The pages and the CLI show them too.
    let page = get_text(format!("{}/deliveries", c.pages_url)).await;
    assert!(page.contains("Forwarded events"), "{page}");
    assert!(
        page.contains("already received") && page.contains("HTTP 400"),
        "{page}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_commit-status-controller"))
        .args(["deliveries", "--server", &c.pages_url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("failed       forward -> {}", receiver.url()))
            && text.contains("HTTP 400"),
        "{text}"
    );
    let metrics = c.metrics().await;
    for outcome in ["already_received", "failed", "forwarded"] {
        let line = format!(
            r#"commit_status_forwards_total{{target="{}",outcome="{outcome}"}} 1"#,
            receiver.url()
        );
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
}

#[tokio::test]
async fn refused_events_are_not_forwarded() {
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let receiver = EventReceiver::start().await;
    let (_dir, manifests, data) = setup(&stub);
    let target = format!("--forward-events-to={}", receiver.url());
    let c = Controller::start(&manifests, &[&data, &target], &[]).await;

    // 400: malformed.
    assert_eq!(post(&c, b"{\"involvedObject\":", None).await.status(), 400);
    // 413: one byte over 3 MiB; exactly 3 MiB is accepted and forwarded whole.
    let limit = 3 * 1024 * 1024;
    let mut big = br#"{"message":""#.to_vec();
    big.resize(limit - 2, b'a');
    big.extend_from_slice(b"\"}");
    let mut too_big = big.clone();
    too_big.insert(13, b'a');
    assert_eq!(
        post(&c, &too_big, Some("application/json")).await.status(),
        413
    );
    assert_eq!(post(&c, &big, Some("application/json")).await.status(), 202);
    // 429: 1,000 concurrent copies of one event, carrying a token in its metadata.
    let ev = serde_json::to_vec(
        &Event::test("flux-system", "copies")
            .message("m")
            .only_meta(&[("kustomize.toolkit.fluxcd.io/token", "tok-s3cret")])
            .to_json(),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let mut posts = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let (client, url, ev) = (client.clone(), c.events_url.clone(), ev.clone());
        posts.spawn(async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(ev)
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
    }
    let mut codes: HashMap<u16, usize> = HashMap::new();
    while let Some(r) = posts.join_next().await {
        *codes.entry(r.unwrap().unwrap()).or_default() += 1;
    }
    assert_eq!(codes.get(&202), Some(&1), "{codes:?}");
    assert_eq!(codes.get(&429), Some(&999), "{codes:?}");

    assert!(
        receiver.wait_for(WAIT, |r| r.len() >= 2).await,
        "{}",
        c.logs()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = receiver.received();
    assert_eq!(received.len(), 2, "only the two accepted events");
    let bodies: Vec<&[u8]> = received.iter().map(|r| r.body.as_slice()).collect();
    assert!(bodies.contains(&big.as_slice()));
    // Forwarded unchanged, token included (the receiver needs it), but never logged.
    assert!(bodies.contains(&ev.as_slice()));
    assert!(!c.logs().contains("tok-s3cret"));
}

#[tokio::test]
async fn a_full_forward_store_answers_503_and_userinfo_stays_secret() {
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let receiver = EventReceiver::start().await;
    receiver.stop();
    let (_dir, manifests, data) = setup(&stub);
    let url = receiver
        .url()
        .replace("http://", "http://flux:s3cret-pass@");
    let target = format!("--forward-events-to={url}");
    let mut args = vec![data.as_str(), target.as_str(), "--max-pending-forwards=2"];
    args.extend(FAST_RETRY);
    let c = Controller::start(&manifests, &args, &[]).await;

    let events: Vec<Value> = (0..3)
        .map(|i| {
            Event::test("flux-system", &format!("o{i}"))
                .progressing()
                .message("m")
                .only_meta(&[])
                .to_json()
        })
        .collect();
    assert_eq!(c.post(&events[0]).await.status(), 202);
    assert_eq!(c.post(&events[1]).await.status(), 202);
    let full = c.post(&events[2]).await;
    assert_eq!(full.status(), 503);
    assert_eq!(full.headers()["retry-after"], "10");
    // Flux's recorder retries a 503: once there is room, the retry is accepted, not a 429.
    receiver.resume().await;
    assert!(
        receiver.wait_for(WAIT, |r| accepted(r).len() >= 2).await,
        "{}",
        c.logs()
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let r = c.post(&events[2]).await.status();
        if r == 202 {
            break;
        }
        assert_eq!(r, 503);
        assert!(Instant::now() < deadline, "{}", c.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(receiver.wait_for(WAIT, |r| accepted(r).len() >= 3).await);
    let auth = receiver.received()[0].authorization.clone().unwrap();
    assert_eq!(auth, "Basic Zmx1eDpzM2NyZXQtcGFzcw==", "flux:s3cret-pass");

    let forwards = wait_forwards(&c, 3).await;
    let metrics = c.metrics().await;
    let page = get_text(format!("{}/deliveries", c.pages_url)).await;
    for (what, text) in [
        ("logs", c.logs()),
        ("metrics", metrics),
        ("history", serde_json::to_string(&forwards).unwrap()),
        ("page", page),
    ] {
        assert!(!text.contains("s3cret-pass"), "{what}: {text}");
        assert!(
            text.contains(&receiver.url()),
            "{what} names the receiver: {text}"
        );
    }
}
