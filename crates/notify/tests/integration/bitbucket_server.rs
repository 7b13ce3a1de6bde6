//! Bitbucket Server / Data Center against testkit's stub: the build-status exchange with and
//! without a context path, Bearer and Basic auth, the duplicate rule over the stored status,
//! overrides, and the failure answers in Flux's wording.

use std::time::Duration;

use notify::{Credentials, ForgeKind, Outcome, Retry, Secret, StatusEvent};
use serde_json::json;
use testkit::{ForgeKind as Stub, Matcher, ScriptedResponse, StubForge, StubOptions};

use crate::support::{
    ID, SHA, assert_contract, assert_secret_free, event, forge, metadata, plan, token,
};

/// SHA-1 of [`ID`].
const KEY: &str = "776b17bcc91fd6eb5d0ce2a027da584c8ea81eed";

fn builds(context: &str, sha: &str) -> String {
    format!("{context}/rest/api/latest/projects/PRJ/repos/my-repo/commits/{sha}/builds")
}

#[tokio::test]
async fn posts_then_recognises_its_own_status() {
    for context in ["", "/bitbucket", "/a/scm/b"] {
        let stub = StubForge::start(Stub::BitbucketServer, StubOptions::default()).await;
        let address = format!("{}{context}/scm/PRJ/my-repo.git", stub.base_url());
        let f = forge(
            ForgeKind::BitbucketServer,
            address.clone(),
            token("bb-token"),
        );
        let m = metadata();
        let p = plan(&f, &event(&m));
        assert_eq!(f.execute(&p).await.unwrap(), Outcome::Posted, "{context}");
        assert_eq!(
            f.execute(&p).await.unwrap(),
            Outcome::AlreadySet,
            "{context}"
        );

        let requests = stub.requests();
        assert_eq!(requests.len(), 3, "{requests:#?}");
        assert_eq!(
            (
                requests[0].method.as_str(),
                requests[0].path.as_str(),
                requests[0].query.as_str()
            ),
            (
                "GET",
                builds(context, SHA).as_str(),
                format!("key={KEY}").as_str()
            )
        );
        assert!(requests[0].body.is_empty());
        assert_eq!(
            (
                requests[1].method.as_str(),
                requests[1].path.as_str(),
                requests[1].query.as_str()
            ),
            ("POST", builds(context, SHA).as_str(), "")
        );
        assert_eq!(
            requests[1].body_text(),
            format!(
                "{{\"description\":\"reconciliation succeeded\",\"key\":\"{KEY}\",\"name\":\"kustomization/flux-system [reconciliation succeeded]\",\"state\":\"SUCCESSFUL\",\"url\":\"{address}\"}}\n"
            )
        );
        for r in &requests {
            assert_eq!(r.header("authorization"), Some("Bearer bb-token"));
            assert_eq!(r.header("x-atlassian-token"), Some("no-check"));
            assert_eq!(r.header("x-requested-with"), Some("XMLHttpRequest"));
        }
        assert_eq!(stub.statuses("PRJ/my-repo", SHA).len(), 1);
        assert_contract(&stub);

        // A different state is written over the same key.
        let ev = StatusEvent {
            severity: "error",
            reason: "HealthCheckFailed",
            ..event(&m)
        };
        assert_eq!(f.execute(&plan(&f, &ev)).await.unwrap(), Outcome::Posted);
        let stored = stub.stored("PRJ/my-repo", SHA);
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0]["state"], "FAILED");
        assert_eq!(
            stored[0]["name"],
            "kustomization/flux-system [health check failed]"
        );
        assert_contract(&stub);
    }
}

#[tokio::test]
async fn basic_auth_with_the_username_from_the_provider() {
    let stub = StubForge::start(Stub::BitbucketServer, StubOptions::default()).await;
    // `spec.username` plus `password` from the secret: what the controller hands over, and
    // what Flux 1.7+ refuses.
    let credentials = Credentials {
        username: Some("hello".into()),
        password: Some(Secret::new("password")),
        ..Credentials::default()
    };
    stub.require_auth("Basic aGVsbG86cGFzc3dvcmQ=");
    let f = forge(
        ForgeKind::BitbucketServer,
        format!("{}/scm/PRJ/my-repo.git", stub.base_url()),
        credentials,
    );
    let m = metadata();
    assert_eq!(
        f.execute(&plan(&f, &event(&m))).await.unwrap(),
        Outcome::Posted
    );
    assert_contract(&stub);
}

#[tokio::test]
async fn progressing_and_overrides() {
    let stub = StubForge::start(Stub::BitbucketServer, StubOptions::default()).await;
    let f = forge(
        ForgeKind::BitbucketServer,
        format!("{}/scm/PRJ/my-repo.git", stub.base_url()),
        token("t"),
    );
    let m = metadata();
    let ev = StatusEvent {
        reason: "Progressing",
        target_url: Some("https://flux.example.com/ks/flux-system"),
        description: Some("rolling out"),
        ..event(&m)
    };
    let p = plan(&f, &ev);
    assert_eq!(f.execute(&p).await.unwrap(), Outcome::Posted);
    assert_eq!(f.execute(&p).await.unwrap(), Outcome::AlreadySet);
    assert_eq!(
        stub.statuses("PRJ/my-repo", SHA),
        [json!({
            "description": "rolling out",
            "key": KEY,
            "name": "kustomization/flux-system [rolling out]",
            "state": "INPROGRESS",
            "url": "https://flux.example.com/ks/flux-system",
        })]
    );
    assert_contract(&stub);
}

#[tokio::test]
async fn failure_answers_in_flux_wording() {
    let stub = StubForge::start(Stub::BitbucketServer, StubOptions::default()).await;
    let f = forge(
        ForgeKind::BitbucketServer,
        format!("{}/scm/PRJ/my-repo.git", stub.base_url()),
        token("bb-secret-token"),
    );
    let m = metadata();
    let p = plan(&f, &event(&m));
    let path = format!("/rest/api/latest/projects/PRJ/repos/my-repo/commits/{SHA}/builds$");

    stub.require_auth("Bearer another");
    let err = f.execute(&p).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "could not get existing commit status: failed api call to check duplicate commit status: 401 - Unauthorized"
    );
    assert_eq!((err.status(), err.retry()), (Some(401), Retry::No));
    assert_secret_free(&err, &["bb-secret-token"]);
    stub.require_auth("Bearer bb-secret-token");

    stub.push_response(
        Matcher::post(&path),
        ScriptedResponse::json(403, &json!({"errors": [{"message": "no"}]})),
    );
    let err = f.execute(&p).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "could not post build status: could not post build commit status: 403 - Forbidden"
    );
    assert_eq!(err.retry(), Retry::No);

    // A 404 to the read is "no status yet"; to the write it is an error.
    stub.push_response(
        Matcher::post(&path),
        ScriptedResponse::json(
            404,
            &json!({"errors": [{"message": "Repository PRJ/my-repo does not exist."}]}),
        ),
    );
    let err = f.execute(&p).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "could not post build status: could not post build commit status: 404 - Not Found"
    );
    assert_eq!(err.retry(), Retry::No);

    stub.push_response(
        Matcher::get(&path),
        ScriptedResponse::status(429).with_header("retry-after", "9"),
    );
    let err = f.execute(&p).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "could not get existing commit status: failed api call to check duplicate commit status: 429 - Too Many Requests"
    );
    assert_eq!(err.retry(), Retry::After(Duration::from_secs(9)));

    stub.push_response(Matcher::get(&path), ScriptedResponse::status(503));
    let err = f.execute(&p).await.unwrap_err();
    assert_eq!((err.status(), err.retry()), (Some(503), Retry::Backoff));

    stub.push_response(Matcher::get(&path), ScriptedResponse::status(200));
    let err = f.execute(&p).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "could not get existing commit status: could not unmarshal json response body for duplicate commit status: unexpected end of JSON input"
    );

    assert_eq!(f.execute(&p).await.unwrap(), Outcome::Posted);
    assert_contract(&stub);
}

#[tokio::test]
async fn long_names_are_cut_to_the_contract() {
    let stub = StubForge::start(Stub::BitbucketServer, StubOptions::default()).await;
    let f = forge(
        ForgeKind::BitbucketServer,
        format!("{}/scm/PRJ/my-repo.git", stub.base_url()),
        token("t"),
    );
    let m = metadata();
    let long = "x".repeat(400);
    let ev = StatusEvent {
        name: &long,
        status_id: &long,
        ..event(&m)
    };
    assert_eq!(f.execute(&plan(&f, &ev)).await.unwrap(), Outcome::Posted);
    let posted = stub.statuses("PRJ/my-repo", SHA);
    assert_eq!(posted[0]["name"].as_str().unwrap().chars().count(), 255);
    assert_eq!(posted[0]["key"].as_str().unwrap().len(), 40);
    assert_ne!(posted[0]["key"], ID);
    assert_contract(&stub);
}
