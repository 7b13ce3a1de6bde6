//! Gitea and Forgejo (`spec.type: gitea`) against testkit's stubs: exact exchanges, the
//! duplicate rule over the stored statuses, overrides, TLS, proxy and the failure answers.

use std::time::Duration;

use notify::{
    ClientCache, ForgeKind, NetworkConfig, Outcome, ProgressingMode, ProxyConfig, Retry,
    StatusEvent, TlsConfig,
};
use serde_json::json;
use testkit::{
    ForgeKind as Stub, ForwardProxy, Matcher, ProxyOptions, ScriptedResponse, StubForge,
    StubOptions, TestPki,
};

use crate::support::{
    ID, SHA, assert_contract, assert_secret_free, event, forge, forge_with, metadata, plan, token,
};

const BOTH: [Stub; 2] = [Stub::Gitea, Stub::Forgejo];

#[tokio::test]
async fn posts_then_recognises_its_own_status() {
    for kind in BOTH {
        let stub = StubForge::start(kind, StubOptions::default()).await;
        let f = forge(
            ForgeKind::Gitea,
            format!("{}/foo/bar", stub.base_url()),
            token("gitea-token"),
        );
        let m = metadata();
        let p = plan(&f, &event(&m));
        assert_eq!(f.execute(&p).await.unwrap(), Outcome::Posted, "{kind:?}");
        assert_eq!(
            f.execute(&p).await.unwrap(),
            Outcome::AlreadySet,
            "{kind:?}"
        );

        let requests = stub.requests();
        assert_eq!(requests.len(), 3, "no version probe: {requests:#?}");
        assert_eq!(requests[0].method, "GET");
        assert_eq!(
            requests[0].path,
            format!("/api/v1/repos/foo/bar/commits/{SHA}/statuses")
        );
        assert_eq!(requests[0].query, "limit=50&page=1");
        assert_eq!(requests[1].method, "POST");
        assert_eq!(
            requests[1].path,
            format!("/api/v1/repos/foo/bar/statuses/{SHA}")
        );
        assert_eq!(
            requests[1].body_text(),
            format!(
                "{{\"state\":\"success\",\"target_url\":\"\",\"description\":\"reconciliation succeeded\",\"context\":\"{ID}\"}}"
            )
        );
        for r in &requests {
            assert_eq!(r.header("authorization"), Some("token gitea-token"));
            assert_eq!(r.header("content-type"), Some("application/json"));
        }
        assert_eq!(
            stub.statuses("foo/bar", SHA),
            [
                json!({"state": "success", "target_url": "", "description": "reconciliation succeeded", "context": ID})
            ]
        );
        assert_contract(&stub);

        // A failure replaces it: the newest status with our context is what counts.
        let ev = StatusEvent {
            severity: "error",
            reason: "HealthCheckFailed",
            ..event(&m)
        };
        let failed = plan(&f, &ev);
        assert_eq!(f.execute(&failed).await.unwrap(), Outcome::Posted);
        assert_eq!(f.execute(&failed).await.unwrap(), Outcome::AlreadySet);
        assert_eq!(f.execute(&p).await.unwrap(), Outcome::Posted);
        assert_contract(&stub);
    }
}

#[tokio::test]
async fn progressing_overrides_and_another_status_context() {
    for kind in BOTH {
        let stub = StubForge::start(kind, StubOptions::default()).await;
        stub.insert_status(
            "foo/bar",
            SHA,
            json!({"state": "success", "context": "other/ci", "description": "progressing"}),
        );
        let f = forge(
            ForgeKind::Gitea,
            format!("{}/foo/bar", stub.base_url()),
            token("t"),
        );
        let m = metadata();
        let ev = StatusEvent {
            reason: "Progressing",
            target_url: Some("https://flux.example.com/kustomization/flux-system"),
            description: Some("deploying <v2> & more"),
            ..event(&m)
        };
        assert!(f.plan(&ev, ProgressingMode::Skip).unwrap().is_none());
        let p = plan(&f, &ev);
        assert_eq!(f.execute(&p).await.unwrap(), Outcome::Posted);
        assert_eq!(f.execute(&p).await.unwrap(), Outcome::AlreadySet);
        let posted = stub.statuses("foo/bar", SHA);
        assert_eq!(
            posted.last().unwrap(),
            &json!({
                "state": "pending",
                "target_url": "https://flux.example.com/kustomization/flux-system",
                "description": "deploying <v2> & more",
                "context": ID,
            })
        );
        assert!(
            stub.requests()[1]
                .body_text()
                .contains("\"description\":\"deploying \\u003cv2\\u003e \\u0026 more\"")
        );
        assert_contract(&stub);
    }
}

#[tokio::test]
async fn failure_answers_are_classified() {
    for kind in BOTH {
        let stub = StubForge::start(kind, StubOptions::default()).await;
        let f = forge(
            ForgeKind::Gitea,
            format!("{}/foo/bar", stub.base_url()),
            token("gitea-secret-token"),
        );
        let m = metadata();
        let p = plan(&f, &event(&m));
        let list = format!("/api/v1/repos/foo/bar/commits/{SHA}/statuses$");
        let create = format!("/api/v1/repos/foo/bar/statuses/{SHA}$");

        // Wrong token: the stub's own 401.
        stub.require_auth("token something-else");
        let err = f.execute(&p).await.unwrap_err();
        assert_eq!((err.status(), err.retry()), (Some(401), Retry::No));
        assert_eq!(
            err.to_string(),
            format!(
                "could not list commit statuses: GET {}/api/v1/repos/foo/bar/commits/{SHA}/statuses?limit=50&page=1: 401 token is required",
                stub.base_url()
            )
        );
        assert_secret_free(&err, &["gitea-secret-token"]);
        stub.require_auth("token gitea-secret-token");

        stub.push_response(
            Matcher::post(&create),
            ScriptedResponse::json(
                403,
                &json!({"message": "token does not have at least one of required scope(s): [write:repository]", "url": "x"}),
            ),
        );
        let err = f.execute(&p).await.unwrap_err();
        assert_eq!((err.status(), err.retry()), (Some(403), Retry::No));
        assert!(
            err.to_string().starts_with(&format!(
                "POST {}/api/v1/repos/foo/bar/statuses/{SHA}: 403 token does not have",
                stub.base_url()
            )),
            "{err}"
        );

        stub.push_response(
            Matcher::get(&list),
            ScriptedResponse::json(
                404,
                &json!({"errors": [], "message": "The target couldn't be found.", "url": "x"}),
            ),
        );
        let err = f.execute(&p).await.unwrap_err();
        assert_eq!((err.status(), err.retry()), (Some(404), Retry::No));
        assert!(
            err.to_string()
                .ends_with("404 The target couldn't be found."),
            "{err}"
        );

        stub.push_response(
            Matcher::get(&list),
            ScriptedResponse::text(429, "Too Many Requests").with_header("retry-after", "17"),
        );
        let err = f.execute(&p).await.unwrap_err();
        assert_eq!(err.retry(), Retry::After(Duration::from_secs(17)));

        stub.push_response(Matcher::post(&create), ScriptedResponse::status(502));
        let err = f.execute(&p).await.unwrap_err();
        assert_eq!((err.status(), err.retry()), (Some(502), Retry::Backoff));

        assert_eq!(f.execute(&p).await.unwrap(), Outcome::Posted);
        assert_contract(&stub);
    }
}

#[tokio::test]
async fn tls_is_checked_on_the_first_delivery() {
    let pki = TestPki::new();
    let stub = StubForge::start(
        Stub::Gitea,
        StubOptions {
            tls: Some(pki.server_tls()),
            ..StubOptions::default()
        },
    )
    .await;
    let address = format!("{}/foo/bar", stub.base_url());
    assert!(address.starts_with("https://"));
    let m = metadata();
    // Flux fails in the constructor (its version probe); we build without I/O and fail when
    // the first request is made.
    let untrusting = forge(ForgeKind::Gitea, address.clone(), token("t"));
    let err = untrusting
        .execute(&plan(&untrusting, &event(&m)))
        .await
        .unwrap_err();
    assert_eq!(err.status(), None, "{err}");
    assert_eq!(err.retry(), Retry::Backoff);
    assert!(stub.requests().is_empty());

    let trusting = forge_with(
        ForgeKind::Gitea,
        address,
        token("t"),
        NetworkConfig {
            tls: Some(TlsConfig {
                ca_pem: Some(pki.ca_cert_pem.clone().into_bytes()),
                ..TlsConfig::default()
            }),
            ..NetworkConfig::default()
        },
        &ClientCache::new(),
    );
    assert_eq!(
        trusting
            .execute(&plan(&trusting, &event(&m)))
            .await
            .unwrap(),
        Outcome::Posted
    );
    assert_contract(&stub);
}

#[tokio::test]
async fn the_provider_proxy_carries_both_calls() {
    let stub = StubForge::start(Stub::Forgejo, StubOptions::default()).await;
    let proxy = ForwardProxy::start(ProxyOptions {
        require_basic_auth: Some(("puser".into(), "ppass".into())),
    })
    .await;
    let f = forge_with(
        ForgeKind::Gitea,
        format!("{}/foo/bar", stub.base_url()),
        token("t"),
        NetworkConfig {
            proxy: Some(ProxyConfig {
                url: proxy.url(),
                username: Some("puser".into()),
                password: Some("ppass".into()),
            }),
            ..NetworkConfig::default()
        },
        &ClientCache::new(),
    );
    let m = metadata();
    assert_eq!(
        f.execute(&plan(&f, &event(&m))).await.unwrap(),
        Outcome::Posted
    );
    let forwarded = proxy.forwarded();
    assert_eq!(forwarded.len(), 2, "{forwarded:?}");
    assert!(forwarded[1].ends_with(&format!("/api/v1/repos/foo/bar/statuses/{SHA}")));
    assert_eq!(proxy.rejected(), 0);
    assert_contract(&stub);
}
