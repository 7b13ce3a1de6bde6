//! The binary started as Flux's notification-controller Deployment starts it (v1.9.3's
//! `config/manager/deployment.yaml` arguments) plus what users' kustomize patches append:
//! every Flux flag is accepted with Go's rules and statuses are still posted.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use testkit::{ForgeKind, StubOptions};

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn flux_deployment_args_with_patch_style_repeats() {
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    Manifests::routed(
        Provider::forge("github", &format!("{}/org/repo", stub.base_url())),
        &[("token", "ghp_flags")],
    )
    .write(dir.path(), "forge.yaml");
    let port = free_port();
    let args: Vec<String> = [
        "--manifests",
        &dir.path().display().to_string(),
        // Flux v1.9.3's own Deployment arguments.
        "--watch-all-namespaces",
        "--log-level=info",
        "--log-encoding=json",
        "--enable-leader-election",
        // What patches append: repeats (the last wins) and the other Flux flags.
        "--log-level=debug",
        "--log-level=info",
        "--events-addr",
        "127.0.0.1:1",
        &format!("--events-addr=127.0.0.1:{port}"),
        "-concurrent=10",
        "--receiverAddr=:9292",
        "--rate-limit-interval",
        "1s",
        "--export-http-path-metrics",
        "--watch-configs-label-selector=owner!=flux",
        "--kube-api-qps=100",
        "--kube-api-burst",
        "500",
        "--no-cross-namespace-refs=false",
        "--min-retry-delay=1s",
        "--max-retry-delay=1m",
        "--feature-gates=CacheSecretsAndConfigMaps=true",
        "--feature-gates=ObjectLevelWorkloadIdentity=true,DisableConfigWatchers=false",
        "--token-cache-max-size=10",
        "--token-cache-max-duration=30m",
        "--default-service-account=flux-applier",
        "--leader-election-lease-duration=40s",
        "--leader-election-renew-deadline=35s",
        "--leader-election-retry-period=3s",
        "--leader-election-release-on-cancel=false",
        "--enable-leader-election=false",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let c = Controller::spawn(&args, &[]).await.keep_dir(dir);
    assert_eq!(c.events_url, format!("http://127.0.0.1:{port}/"));
    assert_eq!(c.post(&success_event("apps", SHA)).await.status(), 202);
    let reqs = stub
        .wait_for(1, WAIT)
        .await
        .unwrap_or_else(|r| panic!("got {r:?}\n{}", c.logs()));
    let post = reqs.iter().find(|r| r.method == "POST").unwrap();
    assert_eq!(post.path, format!("/api/v3/repos/org/repo/statuses/{SHA}"));
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());

    // The last --log-level (info) won: no debug lines.
    let logs = c.logs();
    assert!(!logs.contains("\"level\":\"DEBUG\""), "{logs}");
    assert!(
        logs.contains("Flux flags accepted without effect"),
        "{logs}"
    );
    assert_eq!(c.count_log("Flux flags accepted without effect"), 1);
    assert!(logs.contains("\"concurrent\":10"), "{logs}");
    assert!(logs.contains("ObjectLevelWorkloadIdentity"), "{logs}");
    assert!(!logs.contains("ghp_flags"));

    // --export-http-path-metrics: the path is the handler label.
    let _ = c.post_raw("GET", "/no/such/page", Vec::new()).await;
    let m = c.metrics().await;
    assert!(
        m.contains("gotk_event_http_request_duration_seconds_count{handler=\"/no/such/page\""),
        "{m}"
    );
}

#[tokio::test]
async fn handler_label_is_fixed_without_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    Manifests::routed(
        Provider::forge("github", "https://github.com/o/r"),
        &[("token", "t")],
    )
    .write(dir.path(), "forge.yaml");
    let c = Controller::start(dir.path(), &["-export-http-path-metrics=false"], &[])
        .await
        .keep_dir(dir);
    let _ = c.post_raw("GET", "/no/such/page", Vec::new()).await;
    let m = c.metrics().await;
    assert!(!m.contains("/no/such/page"), "{m}");
    assert!(m.contains("handler=\"/\""), "{m}");
}

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_commit-status-controller"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn refuses_what_flux_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().display().to_string();
    let (code, err) = run(&["--manifests", &m, "--feature-gates=NoSuchGate=true"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("feature-gate 'NoSuchGate' not supported"),
        "{err}"
    );
    let (code, err) = run(&["--manifests", &m, "--default-service-account=sa"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot set default service accounts when the feature gate ObjectLevelWorkloadIdentity is not enabled"),
        "{err}"
    );
    let (code, err) = run(&["--manifests", &m, "--feature-gates=Broken"]);
    assert_eq!(code, 2);
    assert!(err.contains("malformed pair, expect string=bool"), "{err}");
    let (code, err) = run(&["--manifests", &m, "--watch-all-namespaces=maybe"]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid boolean value"), "{err}");
}
