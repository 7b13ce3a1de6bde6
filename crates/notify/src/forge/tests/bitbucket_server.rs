//! Bitbucket Server (§3.5, §7.9): construction, plan errors, the worked example, limits, and
//! Flux's request-validation table against the Bitbucket Server stub.

use super::*;

const BBS_ID: &str = "kustomization/gitops-system/0c9c2e41";

fn bbs_event<'a>(metadata: &'a BTreeMap<String, String>) -> StatusEvent<'a> {
    StatusEvent {
        status_id: BBS_ID,
        kind: "Kustomization",
        name: "hello-world",
        reason: "reason",
        severity: "info",
        metadata,
        ..StatusEvent::default()
    }
}

fn user_password(user: &str, password: &str) -> Credentials {
    Credentials {
        username: Some(user.into()),
        password: Some(Secret::new(password)),
        ..Credentials::default()
    }
}

#[test]
fn bitbucket_server_construction() {
    let m = meta(&[("revision", &format!("main@sha1:{SHA}"))]);
    let ev = bbs_event(&m);
    for (address, base) in [
        (BBS_ADDRESS, "https://example.com:7990"),
        (
            "https://example.com:7990/context/scm/projectfoo/repobar.git",
            "https://example.com:7990/context",
        ),
    ] {
        let f = Forge::new_with_env(
            config(
                ForgeKind::BitbucketServer,
                address,
                user_password("dummyuser", "testpassword"),
            ),
            &ClientCache::new(),
            no_env,
        )
        .unwrap();
        let p = plan(&f, &ev);
        assert_eq!(
            p.write.url,
            format!(
                "{base}/rest/api/latest/projects/projectfoo/repos/repobar/commits/{SHA}/builds"
            )
        );
        assert_eq!(
            p.write.header_value("authorization"),
            Some(basic_auth("dummyuser", "testpassword").as_str())
        );
    }
    let token = "BBDC-ODIxODYxMzIyNzUyOttorMjO059P2rYTb6EH7mP";
    let p = plan(&forge(ForgeKind::BitbucketServer, BBS_ADDRESS, token), &ev);
    assert_eq!(
        p.write.header_value("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    for (address, credentials, error) in [
        (
            "https://example.com:7990/context1/context2/context3/projectfoo/repobar.git",
            creds("t"),
            "could not parse git address: supplied provider address is not http(s) git clone url",
        ),
        (
            "ssh://git@mybitbucket:2222/ap/fluxcd-sandbox.git",
            creds("t"),
            "could not parse git address: unsupported scheme type in address: ssh. Must be http or https",
        ),
        (
            "https://example.com:7990/scm/projectfoo/repobar/invalid.git",
            creds("t"),
            "could not parse git address: invalid repository id \"projectfoo/repobar/invalid\"",
        ),
        (
            BBS_ADDRESS,
            Credentials::default(),
            "invalid credentials, expected to be one of username/password or API Token",
        ),
        (
            BBS_ADDRESS,
            Credentials {
                password: Some(Secret::new("pw")),
                ..Credentials::default()
            },
            "invalid credentials, expected to be one of username/password or API Token",
        ),
        (
            BBS_ADDRESS,
            Credentials {
                username: Some("u".into()),
                ..Credentials::default()
            },
            "invalid credentials, expected to be one of username/password or API Token",
        ),
    ] {
        assert_eq!(
            new_err(ForgeKind::BitbucketServer, address, credentials),
            error,
            "{address}"
        );
    }
    // Empty ID.
    let f = forge(ForgeKind::BitbucketServer, BBS_ADDRESS, "t");
    assert_eq!(
        f.plan(
            &StatusEvent {
                status_id: "",
                ..ev
            },
            ProgressingMode::Pending
        )
        .unwrap_err()
        .to_string(),
        "commit status cannot be empty"
    );
}

#[test]
fn bitbucket_server_plan_errors() {
    let f = forge(ForgeKind::BitbucketServer, BBS_ADDRESS, "goodtoken");
    let err = |m: &BTreeMap<String, String>, severity: &'static str| {
        f.plan(
            &StatusEvent {
                severity,
                ..bbs_event(m)
            },
            ProgressingMode::Pending,
        )
        .unwrap_err()
        .to_string()
    };
    assert_eq!(
        err(&meta(&[("dummybadrevision", "bad")]), "info"),
        "missing revision metadata"
    );
    assert_eq!(
        err(&meta(&[("revision", "badhash")]), "info"),
        "could not parse revision: failed to extract commit hash from 'badhash' revision"
    );
    assert_eq!(
        err(
            &meta(&[("revision", &format!("main@sha1:{SHA}"))]),
            "badserveritystate"
        ),
        "couldn't convert to bitbucket server state: bitbucket server state generated on info or error events only"
    );
}

#[test]
fn worked_example_bitbucket_server() {
    let m = revision_meta();
    let f = forge(
        ForgeKind::BitbucketServer,
        "https://bb.example.com/scm/PRJ/my-repo.git",
        "bbtok",
    );
    let p = plan(&f, &event(&m));
    let key = "776b17bcc91fd6eb5d0ce2a027da584c8ea81eed";
    let url = format!(
        "https://bb.example.com/rest/api/latest/projects/PRJ/repos/my-repo/commits/{SHA}/builds"
    );
    let read = p.read.as_ref().unwrap();
    assert_eq!(read.method, http::Method::GET);
    assert_eq!(read.url, format!("{url}?key={key}"));
    let common = [
        ("Authorization", "Bearer bbtok"),
        ("x-atlassian-token", "no-check"),
        ("x-requested-with", "XMLHttpRequest"),
        ("User-Agent", transport::USER_AGENT),
    ];
    assert_eq!(headers(read), common);
    assert_eq!(read.body, None);
    assert_eq!(
        (p.write.method.as_str(), p.write.url.as_str()),
        ("POST", url.as_str())
    );
    let mut with_type = common.to_vec();
    with_type.push(("Content-Type", "application/json"));
    assert_eq!(headers(&p.write), with_type);
    assert_eq!(
        p.write.body_text(),
        format!(
            "{{\"description\":\"reconciliation succeeded\",\"key\":\"{key}\",\"name\":\"kustomization/flux-system [reconciliation succeeded]\",\"state\":\"SUCCESSFUL\",\"url\":\"https://bb.example.com/scm/PRJ/my-repo.git\"}}\n"
        )
    );
    // HTML-escaped like Go's encoder.
    let p = plan(
        &forge(
            ForgeKind::BitbucketServer,
            "https://bb.example.com/scm/PRJ/r.git?a=1&b=<2>",
            "t",
        ),
        &event(&m),
    );
    assert!(
        p.write.body_text().ends_with(
            "\"url\":\"https://bb.example.com/scm/PRJ/r.git?a=1\\u0026b=\\u003c2\\u003e\"}\n"
        ),
        "{}",
        p.write.body_text()
    );
}

#[test]
fn bitbucket_server_limits() {
    let m = revision_meta();
    let long = "n".repeat(300);
    let f = forge(ForgeKind::BitbucketServer, BBS_ADDRESS, "t");
    let p = plan(
        &f,
        &StatusEvent {
            name: &long,
            status_id: &long,
            description: Some(&long),
            ..event(&m)
        },
    );
    let body: serde_json::Value = serde_json::from_slice(p.write.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["name"].as_str().unwrap().chars().count(), 255);
    assert_eq!(body["description"].as_str().unwrap().chars().count(), 255);
    assert_eq!(body["key"].as_str().unwrap().len(), 40);
    let long_address = format!("https://example.com/{}/scm/PRJ/r.git", "c".repeat(440));
    let err = forge(ForgeKind::BitbucketServer, &long_address, "t")
        .plan(&event(&m), ProgressingMode::Pending)
        .unwrap_err();
    assert!(
        matches!(
            err,
            PlanError::TargetUrl {
                forge: ForgeKind::BitbucketServer,
                ..
            }
        ),
        "{err}"
    );
    let long_link = format!("https://ci.example.com/{}", "x".repeat(430));
    let err = f
        .plan(
            &StatusEvent {
                target_url: Some(&long_link),
                ..event(&m)
            },
            ProgressingMode::Pending,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "target URL is not accepted by bitbucketserver: it is 453 characters long, at most 450 are allowed"
    );
}

/// §7.9's request-validation table, against the Bitbucket Server stub, scripted where Flux's
/// test server answers differently from a real one.
#[tokio::test]
async fn bitbucket_server_request_validation() {
    let key = sha1_hex(BBS_ID);
    let builds = |sha: &str| {
        format!("/rest/api/latest/projects/projectfoo/repos/repobar/commits/{sha}/builds")
    };
    let unrelated =
        "{\"key\":\"TEST2\",\"state\":\"SUCCESSFUL\",\"name\":\"x\",\"description\":\"y\"}";
    // Flux's test server: the read finds somebody else's status; writes succeed (204).
    let accepting = || async {
        let s = stub(StubKind::BitbucketServer).await;
        s.push_response(Matcher::get("/builds$"), json(200, unrelated));
        s
    };
    let check_common = |r: &RecordedRequest| {
        assert_eq!(r.header("x-atlassian-token"), Some("no-check"));
        assert_eq!(r.header("x-requested-with"), Some("XMLHttpRequest"));
    };
    let bbs = |s: &StubForge, credentials: Credentials| {
        Forge::new_with_env(
            config(
                ForgeKind::BitbucketServer,
                &format!("{}/scm/projectfoo/repobar.git", s.base_url()),
                credentials,
            ),
            &ClientCache::new(),
            no_env,
        )
        .unwrap()
    };
    let rev = meta(&[(
        "revision",
        "main@sha1:5394cb7f48332b2de7c17dd8b8384bbc84b7e738",
    )]);

    // Token, info.
    let s = accepting().await;
    let f = bbs(&s, creds("goodtoken"));
    assert_eq!(
        f.execute(&plan(&f, &bbs_event(&rev))).await.unwrap(),
        Outcome::Posted
    );
    let r = s.requests();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].method, "GET");
    assert_eq!(target(&r[0]), format!("{}?key={key}", builds(SHA)));
    assert_eq!(r[0].body_text(), "");
    assert_eq!(r[1].method, "POST");
    assert_eq!(target(&r[1]), builds(SHA));
    assert_eq!(r[1].header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&r[1].body).unwrap();
    assert_eq!(body["key"], key.as_str());
    assert_eq!(body["state"], "SUCCESSFUL");
    assert_eq!(body["description"], "reason");
    assert_eq!(body["name"], "kustomization/hello-world [reason]");
    assert!(
        body["url"]
            .as_str()
            .unwrap()
            .contains("/scm/projectfoo/repobar.git")
    );
    for r in &r {
        assert_eq!(r.header("authorization"), Some("Bearer goodtoken"));
        check_common(r);
    }
    assert_contract(&s);

    // originRevision wins.
    let s = accepting().await;
    let f = bbs(&s, creds("goodtoken"));
    let both = meta(&[
        (
            "revision",
            "main@sha1:5394cb7f48332b2de7c17dd8b8384bbc84b7e738",
        ),
        (
            "originRevision",
            "main@sha1:e7c17dd8b8384bbc84b7e7385394cb7f48332b2d",
        ),
    ]);
    f.execute(&plan(&f, &bbs_event(&both))).await.unwrap();
    assert_eq!(
        target(&s.requests()[1]),
        builds("e7c17dd8b8384bbc84b7e7385394cb7f48332b2d")
    );

    // Basic auth, info then error.
    for (severity, state) in [("info", "SUCCESSFUL"), ("error", "FAILED")] {
        let s = accepting().await;
        let f = bbs(&s, user_password("hello", "password"));
        let ev = StatusEvent {
            severity,
            ..bbs_event(&rev)
        };
        f.execute(&plan(&f, &ev)).await.unwrap();
        let r = s.requests();
        assert_eq!(
            r[1].header("authorization"),
            Some("Basic aGVsbG86cGFzc3dvcmQ=")
        );
        let body: serde_json::Value = serde_json::from_slice(&r[1].body).unwrap();
        assert_eq!(body["state"], state);
        check_common(&r[0]);
        assert_contract(&s);
    }

    // GET 200 with an empty body.
    let s = stub(StubKind::BitbucketServer).await;
    s.push_response(Matcher::get("/builds$"), ScriptedResponse::status(200));
    let f = bbs(&s, creds("goodtoken"));
    let err = f.execute(&plan(&f, &bbs_event(&rev))).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "could not get existing commit status: could not unmarshal json response body for duplicate commit status: unexpected end of JSON input"
    );
    assert_eq!(err.retry(), Retry::No);

    // GET 400.
    let s = stub(StubKind::BitbucketServer).await;
    answer_next(&s, json(400, "{\"errors\":[{\"message\":\"bad\"}]}"));
    let f = bbs(&s, creds("goodtoken"));
    let err = f.execute(&plan(&f, &bbs_event(&rev))).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "could not get existing commit status: failed api call to check duplicate commit status: 400 - Bad Request"
    );
    assert_eq!((err.status(), err.retry()), (Some(400), Retry::No));

    // POST 401.
    let s = accepting().await;
    s.push_response(
        Matcher::post("/builds$"),
        json(
            401,
            "{\"errors\":[{\"message\":\"Authentication failed.\"}]}",
        ),
    );
    let f = bbs(&s, creds("goodtoken"));
    let err = f.execute(&plan(&f, &bbs_event(&rev))).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "could not post build status: could not post build commit status: 401 - Unauthorized"
    );
    assert_eq!((err.status(), err.retry()), (Some(401), Retry::No));

    // An identical existing status: no POST.
    let s = stub(StubKind::BitbucketServer).await;
    s.insert_status(
        "projectfoo/repobar",
        SHA,
        serde_json::json!({
            "name": "kustomization/hello-world [reason]",
            "description": "reason",
            "key": key,
            "state": "SUCCESSFUL",
            "url": format!("{}/scm/projectfoo/repobar.git", s.base_url()),
        }),
    );
    let f = bbs(&s, creds("goodtoken"));
    assert_eq!(
        f.execute(&plan(&f, &bbs_event(&rev))).await.unwrap(),
        Outcome::AlreadySet
    );
    assert_eq!(s.requests().len(), 1);
    assert_contract(&s);

    // 404 and a bodiless 204 both mean "none yet".
    for status in [404, 204] {
        let s = stub(StubKind::BitbucketServer).await;
        s.push_response(Matcher::get("/builds$"), ScriptedResponse::status(status));
        let f = bbs(&s, creds("goodtoken"));
        assert_eq!(
            f.execute(&plan(&f, &bbs_event(&rev))).await.unwrap(),
            Outcome::Posted,
            "{status}"
        );
        assert_eq!(s.statuses("projectfoo/repobar", SHA).len(), 1);
    }

    // No answer at all: a transport error in Flux's wrapper, retryable.
    let port = closed_port();
    let f = forge(
        ForgeKind::BitbucketServer,
        &format!("http://127.0.0.1:{port}/scm/projectfoo/repobar.git"),
        "goodtoken",
    );
    let err = f.execute(&plan(&f, &bbs_event(&rev))).await.unwrap_err();
    assert_eq!(err.retry(), Retry::Backoff);
    assert!(
        err.to_string().starts_with(
            "could not get existing commit status: failed api call to check duplicate commit status: GET http://127.0.0.1:"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn bitbucket_server_errors_never_show_the_credentials() {
    let s = stub(StubKind::BitbucketServer).await;
    let encoded = basic_auth("user", "s3cr3t-pw");
    // A forge that echoes the credential it was sent.
    answer_next(
        &s,
        json(
            500,
            &format!("{{\"errors\":[{{\"message\":\"{encoded} s3cr3t-pw\"}}]}}"),
        ),
    );
    let f = Forge::new_with_env(
        config(
            ForgeKind::BitbucketServer,
            &format!("{}/scm/P/r.git", s.base_url()),
            user_password("user", "s3cr3t-pw"),
        ),
        &ClientCache::new(),
        no_env,
    )
    .unwrap();
    let m = revision_meta();
    let err = f.execute(&plan(&f, &event(&m))).await.unwrap_err();
    assert_eq!(err.retry(), Retry::Backoff);
    for text in [err.to_string(), format!("{err:?}"), format!("{f:?}")] {
        assert!(!text.contains("s3cr3t-pw"), "{text}");
        assert!(
            !text.contains(encoded.trim_start_matches("Basic ")),
            "{text}"
        );
    }
    assert_eq!(
        s.requests()[0].header("authorization"),
        Some(encoded.as_str())
    );
}
