//! `Progressing` as kustomize-controller v1.9 really sends it: the change-set event of an
//! apply carries the Ready condition's reason, severity `info`, the revision and origin
//! revision, and no `commit_status` key. It posts the in-progress state once per commit; after
//! the final state, drift corrections post nothing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use testkit::{ForgeKind, StubOptions};

const WAIT: Duration = Duration::from_secs(15);
const OTHER: &str = "0b5a2f3c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a";

/// The event kustomize-controller's `r.event(...)` records after a server-side apply that
/// changed something, while Ready is still `Progressing`.
fn change_set(sha: &str) -> Value {
    Event::test("flux-system", "apps")
        .progressing()
        .message("ConfigMap/apps/web-config configured\nDeployment/apps/web created\nService/apps/web unchanged")
        .only_meta(&[
            (REVISION_KEY, &format!("main@sha1:{sha}")),
            (
                "kustomize.toolkit.fluxcd.io/originRevision",
                &format!("v1.2.3@sha1:{sha}"),
            ),
        ])
        .to_json()
}

async fn start(args: &[&str]) -> (Controller, Forge) {
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    github(&stub).write(dir.path(), "m.yaml");
    let c = Controller::start(dir.path(), args, &[]).await.keep_dir(dir);
    (c, stub)
}

fn states(stub: &Forge, sha: &str) -> Vec<String> {
    stub.statuses("o/r", sha)
        .iter()
        .map(|s| s["state"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn history(c: &Controller, n: usize) -> Vec<Value> {
    let url = format!("{}/api/v1/deliveries", c.pages_url);
    let deadline = Instant::now() + WAIT;
    loop {
        let h: Vec<Value> = reqwest::get(&url)
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        if h.len() >= n || Instant::now() > deadline {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_states(stub: &Forge, sha: &str, want: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = states(stub, sha);
        if s.len() >= want.len() || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn change_set_event_posts_pending_once_per_commit() {
    let (c, stub) = start(&[]).await;
    assert_eq!(c.post(&change_set(SHA)).await.status(), 202);
    assert_eq!(
        wait_states(&stub, SHA, &["pending"]).await,
        ["pending"],
        "{}",
        c.logs()
    );
    let pending = &stub.statuses("o/r", SHA)[0];
    assert_eq!(pending["context"], "kustomization/apps/0c9c2e41");
    assert_eq!(pending["description"], "progressing");

    // The reconcile ends: the final state replaces it under the same context.
    c.post(&success_event("apps", SHA)).await;
    assert_eq!(
        wait_states(&stub, SHA, &["pending", "success"]).await,
        ["pending", "success"]
    );
    history(&c, 2).await;

    // Drift corrections later in the life of the same commit: nothing is posted.
    for i in 0..3 {
        let mut drift = change_set(SHA);
        drift["message"] = json!(format!("Deployment/apps/web configured ({i})"));
        assert_eq!(c.post(&drift).await.status(), 202);
        history(&c, 3 + i).await;
    }
    let h = history(&c, 5).await;
    let skipped = h.iter().filter(|o| o["outcome"] == "skipped").count();
    assert_eq!(skipped, 3, "{h:?}\n{}", c.logs());
    assert!(
        h.iter().any(|o| o["message"]
            .as_str()
            .is_some_and(|m| m.contains("already has its final state"))),
        "{h:?}"
    );
    assert_eq!(states(&stub, SHA), ["pending", "success"]);

    // A new commit gets its in-progress state again.
    c.post(&change_set(OTHER)).await;
    assert_eq!(wait_states(&stub, OTHER, &["pending"]).await, ["pending"]);
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
}

#[tokio::test]
async fn a_failed_commit_is_not_turned_back_to_pending() {
    let (c, stub) = start(&[]).await;
    let failed = Event::test("flux-system", "apps").failed("HealthCheckFailed", "health check failed after 5m0s: timeout waiting for: [Deployment/apps/web status: 'InProgress']").only_meta(&[(REVISION_KEY, &format!("main@sha1:{SHA}"))]).to_json();
    c.post(&failed).await;
    assert_eq!(wait_states(&stub, SHA, &["failure"]).await, ["failure"]);
    history(&c, 1).await;
    c.post(&change_set(SHA)).await;
    let h = history(&c, 2).await;
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(states(&stub, SHA), ["failure"]);
}

#[tokio::test]
async fn skip_and_events_without_a_revision_post_nothing() {
    let (c, stub) = start(&["--progressing-status", "skip"]).await;
    c.post(&change_set(SHA)).await;
    c.post(&success_event("apps", SHA)).await;
    assert_eq!(wait_states(&stub, SHA, &["success"]).await, ["success"]);
    drop(c);

    let (c, stub) = start(&[]).await;
    let mut bare = change_set(SHA);
    bare["metadata"] = json!({});
    assert_eq!(c.post(&bare).await.status(), 202);
    c.post(&success_event("apps", OTHER)).await;
    assert_eq!(wait_states(&stub, OTHER, &["success"]).await, ["success"]);
    assert!(states(&stub, SHA).is_empty());
}
