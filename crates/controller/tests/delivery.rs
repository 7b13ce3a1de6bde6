//! Durable, at-least-once delivery against faulty stub forges: retries, rate-limit budgets,
//! timeouts, resets, permanent errors, expiry, backpressure, and a SIGKILL in the middle.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use testkit::{ForgeKind, Matcher, ScriptedResponse, StubOptions};

const WAIT: Duration = Duration::from_secs(15);
const FAST_RETRY: [&str; 2] = ["--min-retry-delay=50ms", "--max-retry-delay=200ms"];

async fn github(args: &[&str]) -> (Controller, Forge, tempfile::TempDir) {
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    Manifests::routed(
        Provider::forge("github", &format!("{}/o/r", stub.base_url()))
            .with_spec(|s| s.timeout = Some("1s".into())),
        &[("token", "t")],
    )
    .write(&manifests, "m.yaml");
    let data = format!("--data-dir={}", dir.path().join("data").display());
    let mut all: Vec<&str> = vec![&data];
    all.extend_from_slice(args);
    let c = Controller::start(&manifests, &all, &[]).await;
    (c, stub, dir)
}

async fn history(c: &Controller) -> Vec<Value> {
    let url = format!("{}/api/v1/deliveries", c.pages_url);
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

async fn wait_history(c: &Controller, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let h = history(c).await;
        if h.len() >= n || Instant::now() > deadline {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn states(stub: &Forge, sha: &str) -> Vec<String> {
    stub.statuses("o/r", sha)
        .iter()
        .map(|s| s["state"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn a_burst_of_5xx_is_retried_until_the_status_lands() {
    let (c, stub, _d) = github(&FAST_RETRY).await;
    for code in [500, 502, 503] {
        stub.push_response(Matcher::post(".*"), ScriptedResponse::status(code));
    }
    c.post(&success_event("flux-system", SHA)).await;
    let h = wait_history(&c, 1).await;
    assert_eq!(h[0]["outcome"], "posted", "{h:?}\n{}", c.logs());
    assert_eq!(h[0]["attempts"], 4);
    assert_eq!(states(&stub, SHA), ["success"]);
    assert!(stub.violations().is_empty());
    let timeline: Vec<_> = h[0]["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["result"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(timeline, ["retrying", "retrying", "retrying", "posted"]);
    let metrics = c.metrics().await;
    assert!(
        metrics.contains(r#"commit_status_deliveries_total{forge="github",outcome="posted"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"commit_status_attempts_total{forge="github",status_class="5xx"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"commit_status_retries_total{forge="github"} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn retry_after_is_honoured() {
    // Up to --max-retry-delay (crates/controller/tests/secrets.rs checks the cap).
    let (c, stub, _d) = github(&["--min-retry-delay=50ms", "--max-retry-delay=5s"]).await;
    stub.push_response(
        Matcher::post(".*"),
        ScriptedResponse::status(429).with_header("retry-after", "1"),
    );
    let started = Instant::now();
    c.post(&success_event("flux-system", SHA)).await;
    let h = wait_history(&c, 1).await;
    assert_eq!(h[0]["outcome"], "posted", "{h:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "retried after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_spent_github_budget_holds_every_delivery_on_that_credential_until_the_reset() {
    let (c, stub, _d) = github(&["--min-retry-delay=50ms", "--max-retry-delay=5s"]).await;
    let reset = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 4)
    .to_string();
    stub.push_response(
        Matcher::post(".*"),
        ScriptedResponse::json(403, &json!({"message": "API rate limit exceeded for user ID 1.", "documentation_url": "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting"}))
            .with_header("x-ratelimit-remaining", "0")
            .with_header("x-ratelimit-reset", &reset),
    );
    let started = Instant::now();
    c.post(&success_event("flux-system", SHA)).await;
    stub.wait_for(1, WAIT).await.unwrap();
    // The budget left is exported per Provider (never per token).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let metrics = c.metrics().await;
    assert!(
        metrics.contains(
            r#"commit_status_rate_limit_remaining{forge="github",provider="flux-system/github"} 0"#
        ),
        "{metrics}"
    );
    // A second status on the same credential, accepted while the budget is spent, waits too.
    let other = "a1afe267b54f38b46b487f6e938a6fd508278c07";
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.post(&success_event("other", other)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stub.requests().len(),
        1,
        "nothing may be sent before the reset: {:?}",
        stub.requests()
    );
    let h = wait_history(&c, 2).await;
    assert!(
        h.iter().all(|o| o["outcome"] == "posted"),
        "{h:?}\n{}",
        c.logs()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(states(&stub, SHA), ["success"]);
    assert_eq!(states(&stub, other), ["success"]);
}

#[tokio::test]
async fn slow_answers_and_connection_resets_are_retried() {
    let (c, stub, _d) = github(&FAST_RETRY).await;
    stub.push_response(
        Matcher::post(".*"),
        ScriptedResponse::status(201)
            .with_body("{}")
            .with_delay(Duration::from_secs(3)),
    );
    stub.push_response(Matcher::post(".*"), ScriptedResponse::disconnect());
    stub.push_response(Matcher::post(".*"), ScriptedResponse::disconnect());
    c.post(&success_event("flux-system", SHA)).await;
    let h = wait_history(&c, 1).await;
    assert_eq!(h[0]["outcome"], "posted", "{h:?}\n{}", c.logs());
    assert_eq!(h[0]["attempts"], 4);
    assert_eq!(states(&stub, SHA), ["success"]);
    assert!(c.logs().contains("timed out"), "{}", c.logs());
}

#[tokio::test]
async fn permanent_errors_are_recorded_with_the_forge_answer_and_not_retried() {
    let (c, stub, _d) = github(&FAST_RETRY).await;
    stub.push_response(
        Matcher::post(".*"),
        ScriptedResponse::json(422, &json!({"message": "Validation Failed", "errors": [{"resource": "Status", "code": "custom", "field": "sha", "message": "No commit found for SHA: x"}]})),
    );
    c.post(&success_event("flux-system", SHA)).await;
    let h = wait_history(&c, 1).await;
    assert_eq!(h[0]["outcome"], "failed", "{h:?}");
    assert_eq!(h[0]["http_status"], 422);
    assert!(
        h[0]["message"]
            .as_str()
            .unwrap()
            .contains("No commit found"),
        "{h:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stub.requests().len(), 1, "a 422 is not retried");
}

#[tokio::test]
async fn deliveries_past_their_max_age_expire() {
    let (c, stub, _d) = github(&[
        "--min-retry-delay=100ms",
        "--max-retry-delay=100ms",
        "--delivery-max-age=1s",
    ])
    .await;
    for _ in 0..100 {
        stub.push_response(Matcher::post(".*"), ScriptedResponse::status(503));
    }
    c.post(&success_event("flux-system", SHA)).await;
    let h = wait_history(&c, 1).await;
    assert_eq!(h[0]["outcome"], "expired", "{h:?}");
    assert!(states(&stub, SHA).is_empty());
}

#[tokio::test]
async fn a_full_queue_answers_503_and_the_retry_is_not_a_duplicate() {
    let (c, stub, _d) = github(&["--max-pending=1", "--min-retry-delay=10s"]).await;
    for _ in 0..5 {
        stub.push_response(Matcher::post(".*"), ScriptedResponse::status(503));
    }
    assert_eq!(c.post(&success_event("a", SHA)).await.status(), 202);
    let second = success_event("b", SHA);
    let r = c.post(&second).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    // The rate-limit token was given back: the same event is refused for capacity, not 429.
    assert_eq!(c.post(&second).await.status(), 503);
}

#[tokio::test]
async fn newer_states_replace_queued_older_ones() {
    let (c, stub, _d) = github(&["--min-retry-delay=30s", "--max-retry-delay=30s"]).await;
    stub.push_response(Matcher::post(".*"), ScriptedResponse::status(503));
    let progressing = Event::test("flux-system", "flux-system")
        .progressing()
        .commit(SHA)
        .to_json();
    c.post(&progressing).await;
    stub.wait_for(1, WAIT).await.unwrap();
    // While the pending state waits for its retry, the success arrives and replaces it.
    c.post(&success_event("flux-system", SHA)).await;
    let h = wait_history(&c, 1).await;
    assert_eq!(h[0]["state"], "success", "{h:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        states(&stub, SHA),
        ["success"],
        "the older pending state must never be posted"
    );
}

#[tokio::test]
async fn sigterm_keeps_what_is_pending_and_the_next_start_sends_it() {
    let (mut c, stub, dir) = github(&["--min-retry-delay=30s", "--max-retry-delay=30s"]).await;
    stub.push_response(Matcher::post(".*"), ScriptedResponse::status(503));
    c.post(&success_event("flux-system", SHA)).await;
    stub.wait_for(1, WAIT).await.unwrap();
    assert!(c.terminate().success());
    let manifests = dir.path().join("manifests");
    let data = format!("--data-dir={}", dir.path().join("data").display());
    let c2 = Controller::start(&manifests, &[&data, "--min-retry-delay=50ms"], &[]).await;
    let h = wait_history(&c2, 1).await;
    assert_eq!(h[0]["outcome"], "posted", "{h:?}\n{}", c2.logs());
    assert_eq!(states(&stub, SHA), ["success"]);

    // The subcommand reads the same history once the controller is stopped.
    let mut c2 = c2;
    assert!(c2.terminate().success());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_commit-status-controller"))
        .args(["deliveries", "--output=json", &data])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["outcome"], "posted");
    assert_eq!(listed[0]["commit"], SHA);
}

#[tokio::test]
async fn history_api_filters() {
    let (c, stub, _d) = github(&FAST_RETRY).await;
    let other = "a1afe267b54f38b46b487f6e938a6fd508278c07";
    c.post(&success_event("a", SHA)).await;
    c.post(&success_event("b", other)).await;
    stub.wait_for(2, WAIT).await.unwrap();
    wait_history(&c, 2).await;
    let url = format!(
        "{}/api/v1/deliveries?commit={}&provider=flux-system/github",
        c.pages_url,
        &other[..8]
    );
    let h: Vec<Value> = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["commit"], other);
    let url = format!("{}/api/v1/deliveries?provider=nope/none", c.pages_url);
    let h: Vec<Value> = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert!(h.is_empty());
    // On the event listener the same path is an event, as every path is in Flux.
    let r = c
        .post_raw("GET", "/api/v1/deliveries", b"{}".to_vec())
        .await;
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn with_public_url_a_repeated_state_costs_no_request() {
    // The link to our delivery page differs per delivery; it must not hide a repeat.
    let (c, stub, _d) = github(&["--public-url=https://csc.example.com"]).await;
    for message in ["Applied revision (first)", "Applied revision (second)"] {
        let ev = Event::test("flux-system", "flux-system")
            .message(message)
            .commit(SHA)
            .to_json();
        c.post(&ev).await;
        stub.wait_for(1, WAIT).await.unwrap();
    }
    let h = wait_history(&c, 2).await;
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(states(&stub, SHA), ["success"], "one request for one state");
    let linked = stub.statuses("o/r", SHA)[0]["target_url"].clone();
    assert!(
        linked
            .as_str()
            .is_some_and(|u| u.starts_with("https://csc.example.com/deliveries/")),
        "{linked}"
    );
}
