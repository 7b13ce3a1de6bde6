//! End to end through the real binary: Flux-shaped events in, the exact requests each forge
//! stub receives out, every request validated against the forge's contract.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use testkit::{ForgeKind, StubOptions};

const WAIT: Duration = Duration::from_secs(10);

struct Case {
    controller: Controller,
    stub: Forge,
}

async fn setup(
    kind: ForgeKind,
    type_: &str,
    address: impl Fn(&str) -> String,
    secret: &[(&str, &str)],
    args: &[&str],
) -> Case {
    let stub = Forge::start(kind, StubOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    Manifests::routed(Provider::forge(type_, &address(&stub.base_url())), secret)
        .write(dir.path(), "forge.yaml");
    let env = [("BITBUCKET_API_BASE_URL", format!("{}/2.0", stub.base_url()))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let controller = Controller::start(dir.path(), args, &env)
        .await
        .keep_dir(dir);
    Case { controller, stub }
}

fn header<'a>(r: &'a testkit::RecordedRequest, name: &str) -> &'a str {
    r.header(name).unwrap_or_default()
}

#[tokio::test]
async fn github_enterprise_exchange() {
    let c = setup(
        ForgeKind::GitHub,
        "github",
        |b| format!("{b}/my-org/my-repo"),
        &[("token", "ghp_secret_value")],
        &[],
    )
    .await;
    assert_eq!(
        c.controller
            .post(&success_event("flux-system", SHA))
            .await
            .status(),
        202
    );
    let reqs = c
        .stub
        .wait_for(1, WAIT)
        .await
        .unwrap_or_else(|r| panic!("got {r:?}\n{}", c.controller.logs()));
    // A new status is one write, without Flux's read before it.
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(
        reqs[0].path,
        format!("/api/v3/repos/my-org/my-repo/statuses/{SHA}")
    );
    for r in &reqs {
        assert_eq!(header(r, "authorization"), "Bearer ghp_secret_value");
        assert_eq!(header(r, "accept"), "application/vnd.github.v3+json");
        assert_eq!(header(r, "x-github-api-version"), "2022-11-28");
    }
    assert_eq!(header(&reqs[0], "content-type"), "application/json");
    assert_eq!(
        reqs[0].body_text(),
        "{\"state\":\"success\",\"description\":\"reconciliation succeeded\",\"context\":\"kustomization/flux-system/0c9c2e41\"}\n"
    );
    assert!(c.stub.violations().is_empty(), "{:?}", c.stub.violations());

    // A failure for the same commit replaces the state under the same context.
    let failed = Event::test("flux-system", "flux-system")
        .failed("HealthCheckFailed", "Health check failed after 30s")
        .only_meta(&[(REVISION_KEY, &format!("main@sha1:{SHA}"))])
        .to_json();
    assert_eq!(c.controller.post(&failed).await.status(), 202);
    c.stub.wait_for(2, WAIT).await.unwrap();
    let statuses = c.stub.statuses("my-org/my-repo", SHA);
    assert_eq!(statuses.len(), 2);
    assert_eq!(statuses[1]["state"], "failure");
    assert_eq!(statuses[1]["description"], "health check failed");

    // The same event again, after the rate-limit window, costs no API call: we remember what
    // we posted. (A different message makes it a new event for the limiter.)
    let mut again = failed.clone();
    again["message"] = json!("Health check failed after 31s");
    assert_eq!(c.controller.post(&again).await.status(), 202);
    assert!(
        c.controller
            .wait_log("commit status already posted", WAIT)
            .await,
        "{}",
        c.controller.logs()
    );
    assert_eq!(c.stub.requests().len(), 2);
    assert!(
        !c.controller.logs().contains("ghp_secret_value"),
        "token leaked into logs"
    );
}

#[tokio::test]
async fn with_read_before_write_github_skips_a_status_the_forge_already_has() {
    let c = setup(
        ForgeKind::GitHub,
        "github",
        |b| format!("{b}/o/r"),
        &[("token", "t")],
        &["--read-before-write"],
    )
    .await;
    c.stub.insert_status(
        "o/r",
        SHA,
        json!({"state":"success","description":"reconciliation succeeded","context":"kustomization/flux-system/0c9c2e41"}),
    );
    c.controller.post(&success_event("flux-system", SHA)).await;
    assert!(
        c.controller.wait_log("already_set", WAIT).await,
        "{}",
        c.controller.logs()
    );
    let reqs = c.stub.requests();
    assert_eq!(reqs.len(), 1, "only the list call: {reqs:?}");
    assert_eq!(reqs[0].method, "GET");
}

#[tokio::test]
async fn gitlab_subgroup_exchange() {
    let c = setup(
        ForgeKind::GitLab,
        "gitlab",
        |b| format!("{b}/my-group/sub/my-repo.git"),
        &[("token", "glpat-secret")],
        &[],
    )
    .await;
    c.controller.post(&success_event("flux-system", SHA)).await;
    let reqs = c
        .stub
        .wait_for(1, WAIT)
        .await
        .unwrap_or_else(|r| panic!("got {r:?}\n{}", c.controller.logs()));
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(
        reqs[0].path,
        format!("/api/v4/projects/my-group%2Fsub%2Fmy-repo/statuses/{SHA}")
    );
    assert_eq!(header(&reqs[0], "private-token"), "glpat-secret");
    let body = reqs[0].json().unwrap();
    assert_eq!(
        body,
        json!({"state":"success","name":"kustomization/flux-system/0c9c2e41","description":"reconciliation succeeded"})
    );
    assert!(c.stub.violations().is_empty(), "{:?}", c.stub.violations());
    assert_eq!(c.stub.statuses("my-group/sub/my-repo", SHA).len(), 1);
}

#[tokio::test]
async fn gitlab_progressing_posts_running_then_success() {
    let c = setup(
        ForgeKind::GitLab,
        "gitlab",
        |b| format!("{b}/g/p"),
        &[("token", "t")],
        &[],
    )
    .await;
    let progressing = Event::test("flux-system", "flux-system")
        .progressing()
        .commit(SHA)
        .to_json();
    c.controller.post(&progressing).await;
    c.stub.wait_for(1, WAIT).await.unwrap();
    c.controller.post(&success_event("flux-system", SHA)).await;
    c.stub.wait_for(2, WAIT).await.unwrap();
    let states: Vec<_> = c
        .stub
        .statuses("g/p", SHA)
        .iter()
        .map(|s| s["state"].clone())
        .collect();
    assert_eq!(states, [json!("running"), json!("success")]);
    assert!(c.stub.violations().is_empty(), "{:?}", c.stub.violations());
}

#[tokio::test]
async fn progressing_skip_restores_flux_behaviour() {
    let c = setup(
        ForgeKind::GitHub,
        "github",
        |b| format!("{b}/o/r"),
        &[("token", "t")],
        &["--progressing-status=skip"],
    )
    .await;
    let progressing = Event::test("flux-system", "flux-system")
        .progressing()
        .commit(SHA)
        .to_json();
    c.controller.post(&progressing).await;
    assert!(
        c.controller.wait_log("progressing event", WAIT).await,
        "{}",
        c.controller.logs()
    );
    c.controller.post(&success_event("flux-system", SHA)).await;
    c.stub.wait_for(1, WAIT).await.unwrap();
    let states: Vec<_> = c
        .stub
        .statuses("o/r", SHA)
        .iter()
        .map(|s| s["state"].clone())
        .collect();
    assert_eq!(states, [json!("success")]);
}

#[tokio::test]
async fn bitbucket_cloud_exchange() {
    let c = setup(
        ForgeKind::BitbucketCloud,
        "bitbucket",
        |_| "https://bitbucket.org/my-ws/my-repo".into(),
        &[("token", "user:app-pass")],
        &[],
    )
    .await;
    c.controller.post(&success_event("flux-system", SHA)).await;
    let reqs = c
        .stub
        .wait_for(1, WAIT)
        .await
        .unwrap_or_else(|r| panic!("got {r:?}\n{}", c.controller.logs()));
    let key = "776b17bcc91fd6eb5d0ce2a027da584c8ea81eed";
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(
        reqs[0].path,
        format!("/2.0/repositories/my-ws/my-repo/commit/{SHA}/statuses/build")
    );
    assert_eq!(
        header(&reqs[0], "authorization"),
        "Basic dXNlcjphcHAtcGFzcw=="
    );
    assert_eq!(
        reqs[0].body_text(),
        format!(
            "{{\"key\":\"{key}\",\"url\":\"https://bitbucket.org\",\"state\":\"SUCCESSFUL\",\"name\":\"kustomization/flux-system\",\"description\":\"reconciliation succeeded\"}}"
        )
    );
    assert!(c.stub.violations().is_empty(), "{:?}", c.stub.violations());
}

#[tokio::test]
async fn azure_devops_exchange() {
    let c = setup(
        ForgeKind::AzureDevOps,
        "azuredevops",
        |b| format!("{b}/MyOrg/MyProj/_git/my-repo"),
        &[("token", "azure-pat")],
        &[],
    )
    .await;
    let mut ev = success_event("flux-system", SHA);
    ev["metadata"]["event.toolkit.fluxcd.io/summary"] = json!("prod-eu");
    c.controller.post(&ev).await;
    let reqs = c
        .stub
        .wait_for(1, WAIT)
        .await
        .unwrap_or_else(|r| panic!("got {r:?}\n{}", c.controller.logs()));
    let path = format!("/myorg/MyProj/_apis/git/repositories/my-repo/commits/{SHA}/statuses");
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].path.as_str()),
        ("POST", path.as_str())
    );
    for r in &reqs {
        assert_eq!(header(r, "authorization"), "Basic OmF6dXJlLXBhdA==");
        assert_eq!(header(r, "accept"), "application/json;api-version=6.0");
    }
    assert_eq!(
        reqs[0].body_text(),
        "{\"context\":{\"genre\":\"fluxcd:prod-eu\",\"name\":\"kustomization/flux-system/0c9c2e41\"},\"description\":\"reconciliation succeeded\",\"state\":\"succeeded\"}"
    );
    assert!(c.stub.violations().is_empty(), "{:?}", c.stub.violations());
}

#[tokio::test]
async fn forge_errors_are_logged_with_context_and_without_the_token() {
    let c = setup(
        ForgeKind::GitHub,
        "github",
        |b| format!("{b}/o/r"),
        &[("token", "ghp_wrong_token_123")],
        &[],
    )
    .await;
    c.stub.require_auth("Bearer ghp_right_token");
    c.controller.post(&success_event("flux-system", SHA)).await;
    assert!(
        c.controller
            .wait_log("failed to send notification", WAIT)
            .await,
        "{}",
        c.controller.logs()
    );
    let logs = c.controller.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("failed to send notification"))
        .unwrap();
    for needle in [
        "flux-system/github",
        "Kustomization/flux-system/flux-system",
        SHA,
        "401",
        "Bad credentials",
    ] {
        assert!(line.contains(needle), "{needle} missing from {line}");
    }
    assert!(
        !logs.contains("ghp_wrong_token_123"),
        "token leaked into logs"
    );
}

#[tokio::test]
async fn invalid_commit_is_an_error_the_user_sees() {
    let c = setup(
        ForgeKind::GitHub,
        "github",
        |b| format!("{b}/o/r"),
        &[("token", "t")],
        &[],
    )
    .await;
    let ev = success_event("flux-system", &"z".repeat(40));
    c.controller.post(&ev).await;
    assert!(
        c.controller
            .wait_log("failed to extract commit hash from", WAIT)
            .await,
        "{}",
        c.controller.logs()
    );
    assert!(c.stub.requests().is_empty());
}

#[tokio::test]
async fn gitea_and_forgejo_exchange() {
    for kind in [ForgeKind::Gitea, ForgeKind::Forgejo] {
        let c = setup(
            kind,
            "gitea",
            |b| format!("{b}/my-org/my-repo"),
            &[("token", "gitea-token")],
            &[],
        )
        .await;
        c.controller.post(&success_event("flux-system", SHA)).await;
        let reqs = c
            .stub
            .wait_for(1, WAIT)
            .await
            .unwrap_or_else(|r| panic!("got {r:?}\n{}", c.controller.logs()));
        assert_eq!(reqs.len(), 1, "{reqs:?}");
        assert_eq!(
            reqs[0].path,
            format!("/api/v1/repos/my-org/my-repo/statuses/{SHA}")
        );
        assert_eq!(header(&reqs[0], "authorization"), "token gitea-token");
        assert_eq!(
            reqs[0].body_text(),
            "{\"state\":\"success\",\"target_url\":\"\",\"description\":\"reconciliation succeeded\",\"context\":\"kustomization/flux-system/0c9c2e41\"}"
        );
        assert!(
            c.stub.violations().is_empty(),
            "{kind:?}: {:?}",
            c.stub.violations()
        );
    }
}

#[tokio::test]
async fn bitbucket_server_with_spec_username_and_password_only_secret() {
    let stub = Forge::start(ForgeKind::BitbucketServer, StubOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let address = format!("{}/context/scm/PRJ/my-repo.git", stub.base_url());
    Manifests::routed(
        Provider::forge("bitbucketserver", &address)
            .with_spec(|s| s.username = Some("flux-bot".into())),
        &[("password", "s3cret")],
    )
    .write(dir.path(), "m.yaml");
    let c = Controller::start(dir.path(), &[], &[]).await;
    c.post(&success_event("flux-system", SHA)).await;
    let reqs = stub
        .wait_for(1, WAIT)
        .await
        .unwrap_or_else(|r| panic!("got {r:?}\n{}", c.logs()));
    let key = "776b17bcc91fd6eb5d0ce2a027da584c8ea81eed";
    let path = format!("/context/rest/api/latest/projects/PRJ/repos/my-repo/commits/{SHA}/builds");
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].path.as_str()),
        ("POST", path.as_str())
    );
    for r in &reqs {
        assert_eq!(header(r, "authorization"), "Basic Zmx1eC1ib3Q6czNjcmV0");
        assert_eq!(header(r, "x-atlassian-token"), "no-check");
        assert_eq!(header(r, "x-requested-with"), "XMLHttpRequest");
    }
    assert_eq!(
        reqs[0].body_text(),
        format!(
            "{{\"description\":\"reconciliation succeeded\",\"key\":\"{key}\",\"name\":\"kustomization/flux-system [reconciliation succeeded]\",\"state\":\"SUCCESSFUL\",\"url\":\"{address}\"}}\n"
        )
    );
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
    assert!(!c.logs().contains("s3cret"));
}

#[tokio::test]
async fn templated_link_and_description() {
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::forge("github", &format!("{}/o/r", stub.base_url()))
        .annotation(
            "commit-status-controller/target-url",
            "'https://grafana.example.com/d/flux?var-ks=' + event.involvedObject.name",
        )
        .annotation(
            "commit-status-controller/description",
            "'prod-eu: ' + event.reason",
        );
    Manifests::routed(provider, &[("token", "t")]).write(dir.path(), "m.yaml");
    let c = Controller::start(dir.path(), &[], &[]).await;
    c.post(&success_event("flux-system", SHA)).await;
    let reqs = stub
        .wait_for(1, WAIT)
        .await
        .unwrap_or_else(|r| panic!("got {r:?}\n{}", c.logs()));
    let body = reqs[0].json().unwrap();
    assert_eq!(
        body["target_url"],
        "https://grafana.example.com/d/flux?var-ks=flux-system"
    );
    assert_eq!(body["description"], "prod-eu: ReconciliationSucceeded");
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
}
