//! Bitbucket after app passwords (issue 11): access tokens go as Bearer, and with
//! `spec.commitStatusExpr` the status name users see is the expression's result (Cloud and
//! Server), while the key stays the SHA-1 of the status ID.

mod common;

use std::time::Duration;

use common::*;
use sha1::Digest as _;
use testkit::{ForgeKind, StubOptions};

const WAIT: Duration = Duration::from_secs(15);
const EXPR: &str = "'flux/' + event.involvedObject.name + '/production'";

fn sha1_hex(s: &str) -> String {
    hex::encode(sha1::Sha1::digest(s.as_bytes()))
}

async fn run(
    kind: ForgeKind,
    type_: &str,
    address: String,
    token: &str,
    expr: Option<&str>,
) -> (Forge, Vec<testkit::RecordedRequest>, String) {
    let stub = Forge::start(kind, StubOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let address = address.replace("{base}", &stub.base_url());
    let provider = Provider::forge(type_, &address)
        .with_spec(|s| s.commit_status_expr = expr.map(str::to_owned));
    Manifests::routed(provider, &[("token", token)]).write(dir.path(), "m.yaml");
    let env = [("BITBUCKET_API_BASE_URL", format!("{}/2.0", stub.base_url()))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let c = Controller::start(dir.path(), &[], &env).await.keep_dir(dir);
    c.post(&success_event("apps", SHA)).await;
    let reqs: Vec<_> = stub
        .wait_for(1, WAIT)
        .await
        .unwrap_or_else(|r| panic!("got {r:?}\n{}", c.logs()))
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    let logs = c.logs();
    (stub, reqs, logs)
}

#[tokio::test]
async fn cloud_access_token_is_bearer_and_expr_names_the_status() {
    let token = "ATCTT3xFfGN0repoAccessToken_x-1=";
    let (stub, reqs, logs) = run(
        ForgeKind::BitbucketCloud,
        "bitbucket",
        "https://bitbucket.org/ws/repo".into(),
        token,
        Some(EXPR),
    )
    .await;
    for r in &reqs {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {token}").as_str())
        );
    }
    let body: serde_json::Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(body["name"], "flux/apps/production");
    assert_eq!(body["key"], sha1_hex("flux/apps/production"));
    assert_eq!(body["state"], "SUCCESSFUL");
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
    assert!(!logs.contains(token));
}

#[tokio::test]
async fn cloud_api_token_with_email_stays_basic_and_names_stay_fluxs() {
    let (stub, reqs, _) = run(
        ForgeKind::BitbucketCloud,
        "bitbucket",
        "https://bitbucket.org/ws/repo".into(),
        "me@example.com:ATATT3xApiToken",
        None,
    )
    .await;
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("me@example.com:ATATT3xApiToken")
    );
    assert_eq!(reqs[0].header("authorization"), Some(basic.as_str()));
    let body: serde_json::Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(body["name"], "kustomization/apps");
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
}

#[tokio::test]
async fn server_expr_names_the_status() {
    let (stub, reqs, _) = run(
        ForgeKind::BitbucketServer,
        "bitbucketserver",
        "{base}/scm/PRJ/my-repo.git".into(),
        "httpAccessToken",
        Some(EXPR),
    )
    .await;
    let body: serde_json::Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(body["name"], "flux/apps/production");
    assert_eq!(body["key"], sha1_hex("flux/apps/production"));
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
}
