//! Forge request economy (issue 12), through the binary: one request per new status on every
//! forge, GitLab's same-state 400 as "already set", GitHub's per-commit cap as a permanent
//! failure, conditional reads with `--read-before-write`, and pacing before a rate limit.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use testkit::{ForgeKind, StubOptions};

const WAIT: Duration = Duration::from_secs(20);
const FAST_RETRY: [&str; 2] = ["--min-retry-delay=50ms", "--max-retry-delay=200ms"];

/// Distinct commits, for "new status" runs.
fn sha(i: usize) -> String {
    format!("{i:040x}")
}

/// Provider type, repository address and secret for a stub of `kind`.
fn provider_for(kind: ForgeKind, base: &str) -> (&'static str, String, &'static str) {
    match kind {
        ForgeKind::GitHub => ("github", format!("{base}/o/r"), "token"),
        ForgeKind::GitLab => ("gitlab", format!("{base}/g/p"), "token"),
        ForgeKind::Gitea | ForgeKind::Forgejo => ("gitea", format!("{base}/o/r"), "token"),
        ForgeKind::AzureDevOps => ("azuredevops", format!("{base}/org/proj/_git/repo"), "token"),
        ForgeKind::BitbucketCloud => (
            "bitbucket",
            "https://bitbucket.org/ws/repo".to_string(),
            "user:app-password",
        ),
        ForgeKind::BitbucketServer => (
            "bitbucketserver",
            format!("{base}/scm/PRJ/repo.git"),
            "bbs-token",
        ),
    }
}

async fn start(kind: ForgeKind, args: &[&str]) -> (Controller, Forge) {
    let stub = Forge::start(kind, StubOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (type_, address, token) = provider_for(kind, &stub.base_url());
    Manifests::routed(Provider::forge(type_, &address), &[("token", token)])
        .write(dir.path(), "m.yaml");
    let api = format!("{}/2.0", stub.base_url());
    let env = [("BITBUCKET_API_BASE_URL", api.as_str())];
    let c = Controller::start(dir.path(), args, &env)
        .await
        .keep_dir(dir);
    (c, stub)
}

#[tokio::test]
async fn every_forge_takes_exactly_one_request_per_new_status() {
    for kind in [
        ForgeKind::GitHub,
        ForgeKind::Gitea,
        ForgeKind::Forgejo,
        ForgeKind::AzureDevOps,
        ForgeKind::BitbucketCloud,
        ForgeKind::BitbucketServer,
        ForgeKind::GitLab,
    ] {
        let (c, stub) = start(kind, &[]).await;
        const N: usize = 5;
        for i in 0..N {
            assert_eq!(c.post(&success_event("app", &sha(i))).await.status(), 202);
        }
        let h = c.wait_history(N, WAIT).await;
        assert_eq!(h.len(), N, "{kind:?}: {h:?}\n{}", c.logs());
        assert!(
            h.iter().all(|o| o["outcome"] == "posted"),
            "{kind:?}: {h:?}"
        );
        let reqs = stub.requests();
        assert_eq!(reqs.len(), N, "{kind:?}: one write per status: {reqs:?}");
        assert!(
            reqs.iter().all(|r| r.method == "POST"),
            "{kind:?}: no reads: {reqs:?}"
        );
        assert!(
            stub.violations().is_empty(),
            "{kind:?}: {:?}",
            stub.violations()
        );

        // The same status again costs nothing: the store remembers what it posted.
        let mut again = success_event("app", &sha(0));
        again["message"] = json!("Reconciliation finished in 3.4s, next run in 10m0s");
        assert_eq!(c.post(&again).await.status(), 202);
        let h = c.wait_history(N + 1, WAIT).await;
        assert_eq!(h[0]["outcome"], "already_set", "{kind:?}: {h:?}");
        assert_eq!(stub.requests().len(), N, "{kind:?}: a repeat is free");
    }
}

#[tokio::test]
async fn gitlab_same_state_400_is_recorded_as_already_set() {
    let (c, stub) = start(ForgeKind::GitLab, &FAST_RETRY).await;
    // The job is already running on GitLab (posted by another controller, or before the store
    // was lost): the write of "running" is refused with GitLab's transition error.
    stub.insert_status(
        "g/p",
        SHA,
        json!({"state": "running", "name": "kustomization/app/0c9c2e41", "description": "reconciliation in progress"}),
    );
    let progressing = progressing_event("app", SHA);
    assert_eq!(c.post(&progressing).await.status(), 202);
    let h = c.wait_history(1, WAIT).await;
    assert_eq!(h[0]["outcome"], "already_set", "{h:?}\n{}", c.logs());
    assert_eq!(h[0]["http_status"], 400, "{h:?}");
    assert!(
        h[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already shows this state"),
        "{h:?}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 1, "not retried: {reqs:?}");
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
    assert!(
        !c.logs().contains("failed to send notification"),
        "{}",
        c.logs()
    );
    let m = c.metrics().await;
    assert!(
        m.contains(r#"commit_status_deliveries_total{forge="gitlab",outcome="already_set"} 1"#),
        "{m}"
    );
    assert!(!m.contains(r#"outcome="failed""#), "{m}");
}

#[tokio::test]
async fn github_status_cap_is_a_permanent_failure() {
    let (c, stub) = start(ForgeKind::GitHub, &FAST_RETRY).await;
    for _ in 0..1000 {
        stub.insert_status(
            "o/r",
            SHA,
            json!({"state": "pending", "description": "x", "context": "kustomization/app/0c9c2e41"}),
        );
    }
    assert_eq!(c.post(&success_event("app", SHA)).await.status(), 202);
    let h = c.wait_history(1, WAIT).await;
    assert_eq!(h[0]["outcome"], "failed", "{h:?}\n{}", c.logs());
    assert_eq!(h[0]["http_status"], 422);
    let message = h[0]["message"].as_str().unwrap_or_default();
    for needle in [
        "This SHA and context has reached the maximum number of statuses",
        "at most 1000 statuses per commit and context",
        "not retried",
    ] {
        assert!(
            message.contains(needle),
            "{needle:?} missing from {message}"
        );
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        stub.requests().len(),
        1,
        "never retried: {:?}",
        stub.requests()
    );
}

fn epoch_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn a_low_budget_is_spread_until_the_reset_and_queued_states_coalesce() {
    let (c, stub) = start(ForgeKind::GitHub, &[]).await;
    // 10 requests left, the window resets 20 s from now (GitHub states the reset in whole
    // seconds).
    let before_set = epoch_secs(std::time::SystemTime::now());
    stub.set_rate_limit(5000, 10, Duration::from_secs(20), Duration::from_secs(3600));
    let reset = before_set + 20;
    const N: usize = 15;
    for i in 0..N {
        assert_eq!(c.post(&success_event("app", &sha(i))).await.status(), 202);
    }
    // Another key gets a pending state and then, while it waits for its turn, the final one.
    let last = sha(100);
    let progressing = progressing_event("app", &last);
    assert_eq!(c.post(&progressing).await.status(), 202);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = c.metrics().await;
    assert!(
        m.contains(r#"commit_status_credential_pacing{forge="github",provider="flux-system/github",state="paced"} 1"#),
        "{m}"
    );
    assert!(!m.contains("ghp_"), "no token in metrics");
    assert_eq!(c.post(&success_event("app", &last)).await.status(), 202);

    // Everything lands: 15 statuses and the final state of the other key.
    let reqs = stub
        .wait_for(N + 1, Duration::from_secs(60))
        .await
        .unwrap_or_else(|r| panic!("got {} requests\n{}", r.len(), c.logs()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let timed = stub.requests_with_times();
    assert_eq!(
        timed.len(),
        N + 1,
        "no request refused or repeated: {reqs:?}"
    );
    let arrivals: Vec<std::time::SystemTime> = timed.iter().map(|(t, _)| *t).collect();
    let early: Vec<_> = arrivals
        .iter()
        .filter(|t| epoch_secs(**t) < reset)
        .collect();
    assert!(
        early.len() <= 10,
        "{} requests before the reset",
        early.len()
    );
    // Spread over the window, not at once: the first and the last before the reset are more
    // than half the window apart, and no more than 3 went in the first two seconds.
    let first = arrivals[0];
    let spread = early.last().unwrap().duration_since(first).unwrap();
    assert!(spread >= Duration::from_secs(10), "spread over {spread:?}");
    let burst = early
        .iter()
        .filter(|t| t.duration_since(first).unwrap() < Duration::from_secs(2))
        .count();
    assert!(burst <= 3, "{burst} requests in the first 2 s");
    assert!(
        arrivals.len() > early.len(),
        "the rest is sent after the reset"
    );
    assert!(timed.iter().all(|(_, r)| r.method == "POST"));

    // Only the final state of the coalesced key was sent.
    let states: Vec<_> = stub
        .statuses("o/r", &last)
        .iter()
        .map(|s| s["state"].clone())
        .collect();
    assert_eq!(states, [json!("success")]);
    let h = c.wait_history(N + 1, WAIT).await;
    assert!(
        h.iter().all(|o| o["outcome"] == "posted"),
        "{h:?}\n{}",
        c.logs()
    );
    let m = c.metrics().await;
    assert!(
        m.contains(&format!(
            r#"commit_status_forge_requests_total{{forge="github",provider="flux-system/github",kind="write"}} {}"#,
            N + 1
        )),
        "{m}"
    );
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
}

#[tokio::test]
async fn with_read_before_write_a_304_stands_for_the_kept_answer() {
    let (c, stub) = start(ForgeKind::GitHub, &["--read-before-write"]).await;
    for app in ["app-a", "app-b"] {
        stub.insert_status(
            "o/r",
            SHA,
            json!({"state": "success", "description": "reconciliation succeeded", "context": format!("kustomization/{app}/0c9c2e41")}),
        );
    }
    // The first read is unconditional; the forge already shows the status.
    assert_eq!(c.post(&success_event("app-a", SHA)).await.status(), 202);
    let h = c.wait_history(1, WAIT).await;
    assert_eq!(h[0]["outcome"], "already_set", "{h:?}\n{}", c.logs());
    // The second status on the same commit: the same read, now conditional, answered 304, and
    // the kept answer shows that status too.
    assert_eq!(c.post(&success_event("app-b", SHA)).await.status(), 202);
    let h = c.wait_history(2, WAIT).await;
    assert_eq!(h[0]["outcome"], "already_set", "{h:?}");
    assert_eq!(h[0]["http_status"], 304, "{h:?}");
    assert!(
        h[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("304 Not Modified"),
        "{h:?}"
    );
    // A new state: the kept answer (via 304 again) shows another one, so it is written.
    let mut failed = success_event("app-a", SHA);
    failed["severity"] = json!("error");
    failed["reason"] = json!("HealthCheckFailed");
    failed["message"] = json!("Health check failed after 30s");
    assert_eq!(c.post(&failed).await.status(), 202);
    let h = c.wait_history(3, WAIT).await;
    assert_eq!(h[0]["outcome"], "posted", "{h:?}\n{}", c.logs());
    let reqs = stub.requests();
    let methods: Vec<&str> = reqs.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["GET", "GET", "GET", "POST"], "{reqs:?}");
    assert!(reqs[0].header("if-none-match").is_none());
    let etag = reqs[1].header("if-none-match").expect("conditional read");
    assert!(etag.starts_with("W/\""), "{etag}");
    assert_eq!(reqs[2].header("if-none-match"), Some(etag));
    let states: Vec<_> = stub
        .statuses("o/r", SHA)
        .iter()
        .map(|s| s["state"].clone())
        .collect();
    assert_eq!(
        states,
        [json!("success"), json!("success"), json!("failure")]
    );
    let m = c.metrics().await;
    for (kind, n) in [("read", 3), ("write", 1)] {
        let line = format!(
            r#"commit_status_forge_requests_total{{forge="github",provider="flux-system/github",kind="{kind}"}} {n}"#
        );
        assert!(m.contains(&line), "{line} missing:\n{m}");
    }
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
}
