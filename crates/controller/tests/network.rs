//! Network settings applied to every forge: forwarding proxy, custom CA, mTLS, attempt
//! timeout.

mod common;

use std::time::Duration;

use common::*;
use testkit::{
    ForgeKind, ForwardProxy, Matcher, ProxyOptions, ScriptedResponse, StubOptions, TestPki,
};

const WAIT: Duration = Duration::from_secs(10);

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

#[tokio::test]
async fn all_requests_go_through_the_provider_proxy() {
    let stub = Forge::start(ForgeKind::GitLab, StubOptions::default()).await;
    let proxy = ForwardProxy::start(ProxyOptions {
        require_basic_auth: Some(("pu".into(), "proxy-pass-xyz".into())),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::forge("gitlab", &format!("{}/g/p", stub.base_url())).with_spec(|s| {
        s.proxy_secret_ref = Some(api::LocalObjectReference {
            name: "proxy".into(),
        })
    });
    let manifests = forge_manifests(provider, &[("token", "t")]);
    let proxy_secret = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: proxy\n  namespace: flux-system\nstringData:\n  address: {}\n  username: pu\n  password: proxy-pass-xyz\n",
        proxy.url()
    );
    write(dir.path(), "m.yaml", &(manifests + &proxy_secret));
    let c = Controller::start(dir.path(), &[], &[]).await;
    c.post(&success_event("flux-system", SHA)).await;
    stub.wait_for(1, WAIT)
        .await
        .unwrap_or_else(|r| panic!("{r:?}\n{}", c.logs()));
    let forwarded = proxy.forwarded();
    assert_eq!(forwarded.len(), 1, "{forwarded:?}");
    assert!(
        forwarded
            .iter()
            .all(|u| u.contains("/api/v4/projects/g%2Fp/")),
        "{forwarded:?}"
    );
    assert!(stub.violations().is_empty());
    assert!(
        !c.logs().contains("proxy-pass-xyz"),
        "proxy password in logs"
    );
}

#[tokio::test]
async fn https_forge_with_custom_ca_and_mtls() {
    let pki = TestPki::new();
    let stub = Forge::start(
        ForgeKind::GitHub,
        StubOptions {
            tls: Some(pki.server_tls_with_client_auth()),
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::forge("github", &format!("{}/o/r", stub.base_url()))
        .with_spec(|s| s.cert_secret_ref = Some(api::LocalObjectReference { name: "tls".into() }));
    let manifests = forge_manifests(provider, &[("token", "t")]);
    let tls_secret = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: tls\n  namespace: flux-system\ntype: kubernetes.io/tls\nstringData:\n  ca.crt: |\n{}  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&pki.ca_cert_pem),
        indent(&pki.client.cert_pem),
        indent(&pki.client.key_pem)
    );
    write(dir.path(), "m.yaml", &(manifests + &tls_secret));
    let c = Controller::start(dir.path(), &[], &[]).await;
    c.post(&success_event("flux-system", SHA)).await;
    stub.wait_for(1, WAIT)
        .await
        .unwrap_or_else(|r| panic!("{r:?}\n{}", c.logs()));
    assert_eq!(stub.statuses("o/r", SHA).len(), 1);
    assert!(!c.logs().contains("PRIVATE KEY"), "client key in logs");
}

#[tokio::test]
async fn unknown_authority_is_refused() {
    let pki = TestPki::new();
    let stub = Forge::start(
        ForgeKind::GitHub,
        StubOptions {
            tls: Some(pki.server_tls()),
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::forge("github", &format!("{}/o/r", stub.base_url()))
        .with_spec(|s| s.cert_secret_ref = Some(api::LocalObjectReference { name: "tls".into() }));
    let manifests = forge_manifests(provider, &[("token", "t")]);
    let tls_secret = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: tls\n  namespace: flux-system\nstringData:\n  ca.crt: |\n{}",
        indent(&pki.other_ca_cert_pem)
    );
    write(dir.path(), "m.yaml", &(manifests + &tls_secret));
    let c = Controller::start(dir.path(), &[], &[]).await;
    c.post(&success_event("flux-system", SHA)).await;
    assert!(
        c.wait_log("failed to send notification", WAIT).await,
        "{}",
        c.logs()
    );
    assert!(stub.requests().is_empty());
}

#[tokio::test]
async fn each_attempt_is_bounded_by_the_provider_timeout() {
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    stub.push_response(
        Matcher::post(".*"),
        ScriptedResponse::status(201)
            .with_body("{}")
            .with_delay(Duration::from_secs(5)),
    );
    let dir = tempfile::tempdir().unwrap();
    let manifests = forge_manifests(
        Provider::forge("github", &format!("{}/o/r", stub.base_url()))
            .with_spec(|s| s.timeout = Some("500ms".into())),
        &[("token", "t")],
    );
    write(dir.path(), "m.yaml", &manifests);
    let c = Controller::start(dir.path(), &[], &[]).await;
    let started = std::time::Instant::now();
    c.post(&success_event("flux-system", SHA)).await;
    assert!(
        c.wait_log("failed to send notification", WAIT).await,
        "{}",
        c.logs()
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "timeout not applied: {:?}",
        started.elapsed()
    );
    assert!(c.logs().contains("timed out"), "{}", c.logs());
}
