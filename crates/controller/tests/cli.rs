//! The operator subcommands, run as a user would: `validate`, `explain` (dry run and --send)
//! and `send-event`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use testkit::{ForgeKind, StubOptions};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_commit-status-controller"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn validate_reports_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    Manifests::routed(
        Provider::forge("github", "https://github.com/o/r"),
        &[("token", "t")],
    )
    .write(dir.path(), "good.yaml");
    write(
        dir.path(),
        "bad.yaml",
        "apiVersion: notification.toolkit.fluxcd.io/v1beta3\nkind: Alert\nmetadata: {name: a}\nspec:\n  providerRef: {name: p}\n  eventSources: [{kind: Pod, name: x}]\n  inclusionList: ['(']\n",
    );
    write(
        dir.path(),
        "orphan.yaml",
        "apiVersion: notification.toolkit.fluxcd.io/v1beta3\nkind: Provider\nmetadata: {name: lonely}\nspec: {type: gitlab, address: https://gitlab.com/g/p, secretRef: {name: nope}}\n",
    );
    let d = dir.path().to_str().unwrap();
    let (code, out, _) = run(&["validate", "--manifests", d]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("bad.yaml (document 0): Alert/default/a: spec.eventSources[0].kind"),
        "{out}"
    );
    assert!(out.contains("spec.inclusionList[0]"), "{out}");
    assert!(
        out.contains("Provider/default/lonely: failed to get secret 'default/nope'"),
        "{out}"
    );
    let (code, out, _) = run(&["validate", "--manifests", d, "--output=json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], false);
    std::fs::remove_file(dir.path().join("bad.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("orphan.yaml")).unwrap();
    let (code, out, _) = run(&["validate", "--manifests", d]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn validate_takes_our_api_group_as_it_takes_fluxs() {
    // The README's one-line conversion to our group, then the same checks as Flux's group.
    let ours = |text: &str| {
        text.replace(
            "notification.toolkit.fluxcd.io/",
            "notification.commit-status-controller.dev/",
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let good = forge_manifests(
        Provider::forge("github", "https://github.com/o/r"),
        &[("token", "t")],
    );
    assert!(good.contains("notification.toolkit.fluxcd.io/"), "{good}");
    write(dir.path(), "good.yaml", &ours(&good));
    let d = dir.path().to_str().unwrap();
    let (code, out, _) = run(&["validate", "--manifests", d]);
    assert_eq!(code, 0, "{out}");
    write(
        dir.path(),
        "bad.yaml",
        &ours(
            "apiVersion: notification.toolkit.fluxcd.io/v1beta3\nkind: Alert\nmetadata: {name: a}\nspec:\n  providerRef: {name: p}\n  eventSources: [{kind: Pod, name: x}]\n",
        ),
    );
    let (code, out, _) = run(&["validate", "--manifests", d]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("bad.yaml (document 0): Alert/default/a: spec.eventSources[0].kind"),
        "{out}"
    );
}

#[tokio::test]
async fn explain_dry_run_then_send() {
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    Manifests::routed(
        Provider::forge("github", &format!("{}/o/r", stub.base_url())),
        &[("token", "ghp_explain_secret")],
    )
    .write(dir.path(), "m.yaml");
    write(
        dir.path(),
        "other.yaml",
        "apiVersion: notification.toolkit.fluxcd.io/v1beta3\nkind: Alert\nmetadata: {name: other, namespace: flux-system}\nspec: {providerRef: {name: github}, eventSources: [{kind: HelmRelease, name: '*'}]}\n",
    );
    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        serde_json::to_vec(&success_event("flux-system", SHA)).unwrap(),
    )
    .unwrap();
    let (d, e) = (
        dir.path().to_str().unwrap().to_string(),
        event.to_str().unwrap().to_string(),
    );
    let (code, out, _) = tokio::task::spawn_blocking({
        let (d, e) = (d.clone(), e.clone());
        move || run(&["explain", "--manifests", &d, "--event", &e])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Alert flux-system/other: does not match: eventSources[0]: kind \"Kustomization\" is not \"HelmRelease\""), "{out}");
    assert!(out.contains("Alert flux-system/github: matches"), "{out}");
    assert!(
        out.contains(&format!(
            "POST {}/api/v3/repos/o/r/statuses/{SHA}",
            stub.base_url()
        )),
        "{out}"
    );
    assert!(out.contains(r#"{"state":"success","description":"reconciliation succeeded","context":"kustomization/flux-system/0c9c2e41"}"#), "{out}");
    assert!(
        !out.contains("ghp_explain_secret"),
        "secret in explain output"
    );
    assert!(stub.requests().is_empty(), "a dry run sends nothing");

    let (code, out, _) = tokio::task::spawn_blocking(move || {
        run(&["explain", "--manifests", &d, "--event", &e, "--send"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("sent: Posted"), "{out}");
    assert_eq!(stub.statuses("o/r", SHA).len(), 1);
}

#[tokio::test]
async fn send_event_reaches_a_running_controller() {
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    github(&stub).write(dir.path(), "m.yaml");
    let c = Controller::start(dir.path(), &[], &[]).await;
    let url = c.events_url.clone();
    let rev = format!("main@sha1:{SHA}");
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run(&["send-event", "--address", &url, "--revision", &rev])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("202"), "{out}");
    stub.wait_for(1, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        stub.statuses("o/r", SHA)[0]["context"],
        "kustomization/flux-system/0c9c2e41"
    );
}
