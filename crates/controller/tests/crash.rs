//! Crash safety: SIGKILL the controller while deliveries are pending; after a restart every
//! status arrives, in its final state, and nothing accepted is lost.

mod common;

use std::time::{Duration, Instant};

use common::*;
use testkit::{ForgeKind, Matcher, ScriptedResponse, StubOptions};

#[tokio::test]
async fn sigkill_with_pending_deliveries_loses_nothing() {
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    // The forge is down while events arrive.
    for _ in 0..10_000 {
        stub.push_response(Matcher::any_method(".*"), ScriptedResponse::status(503));
    }
    let dir = tempfile::tempdir().unwrap();
    let manifests = github_manifests(dir.path(), &stub);
    let data = format!("--data-dir={}", dir.path().join("data").display());
    let c = Controller::start(
        &manifests,
        &[&data, "--min-retry-delay=50ms", "--max-retry-delay=100ms"],
        &[],
    )
    .await;

    // 20 commits; each first gets a Progressing (pending) then a final state, half failures.
    let shas: Vec<String> = (0..20)
        .map(|i| format!("{:040x}", 0xabc0_u64 + i))
        .collect();
    for (i, sha) in shas.iter().enumerate() {
        let event = Event::test("flux-system", "app").commit(sha);
        let progressing = event
            .clone()
            .progressing()
            .message(&format!("progressing {i}"))
            .to_json();
        assert_eq!(c.post(&progressing).await.status(), 202);
        let last = if i % 2 == 0 {
            event.to_json()
        } else {
            event
                .failed("HealthCheckFailed", &format!("failed {i}"))
                .to_json()
        };
        assert_eq!(c.post(&last).await.status(), 202);
    }
    // Every 202 means committed: kill -9 right away.
    let pid = c.pid();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    drop(c);

    stub.clear_scripted();
    let c2 = Controller::start(&manifests, &[&data, "--min-retry-delay=50ms"], &[]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = shas.iter().all(|s| !stub.statuses("o/r", s).is_empty());
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, sha) in shas.iter().enumerate() {
        let states: Vec<_> = stub
            .statuses("o/r", sha)
            .iter()
            .map(|s| s["state"].as_str().unwrap().to_string())
            .collect();
        let want = if i % 2 == 0 { "success" } else { "failure" };
        // Exactly the final state: the queued pending state was replaced before it was sent.
        assert_eq!(states, [want], "commit {i}: {states:?}\n{}", c2.logs());
    }
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
}
