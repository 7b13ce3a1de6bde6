//! Standalone manifests: bad objects are reported and skipped, good ones keep working, and
//! edits take effect without a restart.

mod common;

use std::time::Duration;

use common::*;
use testkit::{ForgeKind, StubOptions};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn invalid_objects_are_reported_and_skipped() {
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    github(&stub).write(dir.path(), "good.yaml");
    write(
        dir.path(),
        "bad.yaml",
        "apiVersion: notification.toolkit.fluxcd.io/v1beta3\nkind: Provider\nmetadata:\n  name: broken\n  namespace: flux-system\nspec:\n  type: github\n  timeout: 1d\n",
    );
    write(dir.path(), "syntax.yaml", "kind: [\n");
    let c = Controller::start(dir.path(), &[], &[]).await;
    assert!(
        c.wait_log(
            "bad.yaml (document 0): Provider/flux-system/broken: spec.timeout",
            WAIT
        )
        .await,
        "{}",
        c.logs()
    );
    assert!(
        c.wait_log("syntax.yaml (document 0): invalid YAML", WAIT)
            .await,
        "{}",
        c.logs()
    );
    c.post(&success_event("flux-system", SHA)).await;
    stub.wait_for(1, WAIT)
        .await
        .unwrap_or_else(|r| panic!("{r:?}\n{}", c.logs()));
    // Reported once, not on every reload.
    write(dir.path(), "other.yaml", "# touch\n");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        c.count_log("Provider/flux-system/broken: spec.timeout"),
        1,
        "{}",
        c.logs()
    );
}

#[tokio::test]
async fn hot_reload_adds_edits_and_deletes() {
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "secret-only.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n",
    );
    let c = Controller::start(dir.path(), &[], &[]).await;

    // Added: takes effect within 2 s.
    github(&stub).write(dir.path(), "forge.yaml");
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.post(&success_event("flux-system", SHA)).await;
    stub.wait_for(1, WAIT)
        .await
        .unwrap_or_else(|r| panic!("{r:?}\n{}", c.logs()));

    // Edited: the repository changes.
    Manifests::routed(
        Provider::forge("github", &format!("{}/o/other", stub.base_url())),
        &[("token", "t")],
    )
    .write(dir.path(), "forge.yaml");
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.post(&success_event("second", SHA)).await;
    stub.wait_for(2, WAIT)
        .await
        .unwrap_or_else(|r| panic!("{r:?}\n{}", c.logs()));
    assert_eq!(stub.statuses("o/other", SHA).len(), 1);

    // Deleted: nothing matches any more.
    std::fs::remove_file(dir.path().join("forge.yaml")).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.post(&success_event("third", SHA)).await;
    assert!(
        c.wait_log("no alerts found for the involved object", WAIT)
            .await,
        "{}",
        c.logs()
    );
    assert_eq!(stub.requests().len(), 2);
}

#[tokio::test]
async fn no_secret_reaches_the_logs() {
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    stub.require_auth("Bearer something-else");
    let dir = tempfile::tempdir().unwrap();
    let token = "ghp_TopSecretTokenValue0123456789";
    Manifests::routed(
        Provider::forge("github", &format!("{}/o/r", stub.base_url())),
        &[("token", token)],
    )
    .write(dir.path(), "m.yaml");
    // A provider whose secret is half-present fails at dispatch; its password must not leak.
    Manifests::routed(
        Provider::forge("gitlab", "https://gitlab.example.com/g/p"),
        &[("password", "hunter2-password")],
    )
    .write(dir.path(), "half.yaml");
    let c = Controller::start(dir.path(), &["--log-level=trace"], &[]).await;
    c.post(&success_event("flux-system", SHA)).await;
    assert!(
        c.wait_log("failed to send notification", WAIT).await,
        "{}",
        c.logs()
    );
    assert!(
        c.wait_log("malformed basic auth", WAIT).await,
        "{}",
        c.logs()
    );
    let logs = c.logs();
    assert!(!logs.contains(token), "token leaked");
    assert!(!logs.contains("hunter2-password"), "password leaked");
}

#[tokio::test]
async fn reading_the_manifests_does_not_trigger_reloads() {
    let dir = tempfile::tempdir().unwrap();
    Manifests::routed(
        Provider::forge("github", "https://github.com/o/r"),
        &[("token", "t")],
    )
    .write(dir.path(), "m.yaml");
    let c = Controller::start(dir.path(), &[], &[]).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(c.count_log("manifests loaded"), 1, "{}", c.logs());
}
