//! Bitbucket Cloud: construction and token kinds, the worked example, status names, and
//! `execute` against the Bitbucket Cloud stub.

use super::*;

#[test]
fn bitbucket_construction() {
    // §7.8
    let m = revision_meta();
    let ev = event(&m);
    let p = plan(
        &forge(
            ForgeKind::Bitbucket,
            "https://bitbucket.org/foo/bar",
            "foo:bar",
        ),
        &ev,
    );
    assert!(
        p.write
            .url
            .starts_with("https://api.bitbucket.org/2.0/repositories/foo/bar/")
    );
    assert_eq!(p.status_id, ID);
    assert_eq!(
        new_err(
            ForgeKind::Bitbucket,
            "https://bitbucket.org/foo/bar/baz",
            creds("foo:bar")
        ),
        "invalid repository id \"foo/bar/baz\""
    );
    assert_eq!(
        new_err(
            ForgeKind::Bitbucket,
            "https://bitbucket.org/foo/bar",
            creds(":bar")
        ),
        BITBUCKET_FORMAT
    );
    assert_eq!(
        new_err(
            ForgeKind::Bitbucket,
            "https://bitbucket.org/foo/bar",
            creds("a:b:c")
        ),
        BITBUCKET_FORMAT
    );
    // No `password` fallback for Bitbucket.
    let password = Credentials {
        password: Some(Secret::new("u:p")),
        ..Credentials::default()
    };
    assert_eq!(
        new_err(
            ForgeKind::Bitbucket,
            "https://bitbucket.org/foo/bar",
            password
        ),
        "bitbucket token cannot be empty"
    );
    // The host is ignored; the API base comes from the environment when set.
    let env = |name: &str| {
        (name == "BITBUCKET_API_BASE_URL").then(|| "http://127.0.0.1:9/api/".to_owned())
    };
    let f = Forge::new_with_env(
        config(
            ForgeKind::Bitbucket,
            "git@elsewhere.example:ws/repo.git",
            creds("u:p"),
        ),
        &ClientCache::new(),
        env,
    )
    .unwrap();
    assert!(
        plan(&f, &ev)
            .write
            .url
            .starts_with("http://127.0.0.1:9/api/repositories/ws/repo/")
    );
}

#[test]
fn worked_example_bitbucket() {
    let m = revision_meta();
    let f = forge(
        ForgeKind::Bitbucket,
        "https://bitbucket.org/my-ws/my-repo",
        "user:app-pass",
    );
    let p = plan(&f, &event(&m));
    let key = "776b17bcc91fd6eb5d0ce2a027da584c8ea81eed";
    assert_eq!(sha1_hex(ID), key);
    assert_eq!(
        sha1_hex("kustomization/gitops-system/0c9c2e41"),
        "c99410a43c260fddd152a40c296bddfa0b8fd879"
    );
    assert_eq!(
        sha1_hex("kustomization/namespace-foo-and-service-bar"),
        "12ea142172e98435e16336acbbed8919610922c3"
    );
    let read = p.read.as_ref().unwrap();
    assert_eq!(
        read.url,
        format!(
            "https://api.bitbucket.org/2.0/repositories/my-ws/my-repo/commit/{SHA}/statuses/build/{key}"
        )
    );
    let auth = basic_auth("user", "app-pass");
    assert_eq!(
        headers(read),
        [
            ("Authorization", auth.as_str()),
            ("User-Agent", transport::USER_AGENT)
        ]
    );
    assert_eq!(
        p.write.url,
        format!(
            "https://api.bitbucket.org/2.0/repositories/my-ws/my-repo/commit/{SHA}/statuses/build"
        )
    );
    assert_eq!(
        headers(&p.write),
        [
            ("Authorization", auth.as_str()),
            ("User-Agent", transport::USER_AGENT),
            ("Content-Type", "application/json")
        ]
    );
    assert_eq!(
        p.write.body_text(),
        format!(
            "{{\"key\":\"{key}\",\"url\":\"https://bitbucket.org\",\"state\":\"SUCCESSFUL\",\"name\":\"kustomization/flux-system\",\"description\":\"reconciliation succeeded\"}}"
        )
    );
    // TestUtil_BasicAuth (§7.4).
    assert_eq!(basic_auth("user", "password"), "Basic dXNlcjpwYXNzd29yZA==");
}

/// A Bitbucket Cloud forge whose API (`BITBUCKET_API_BASE_URL`) is the stub's.
fn bitbucket_on(stub: &StubForge, credentials: Credentials) -> Forge {
    let api = format!("{}/2.0", stub.base_url());
    Forge::new_with_env(
        config(
            ForgeKind::Bitbucket,
            "https://bitbucket.org/ws/repo",
            credentials,
        ),
        &ClientCache::new(),
        move |name| (name == "BITBUCKET_API_BASE_URL").then(|| api.clone()),
    )
    .unwrap()
}

#[tokio::test]
async fn bitbucket_not_found_means_none() {
    let s = stub(StubKind::BitbucketCloud).await;
    let f = bitbucket_on(&s, creds("u:p"));
    let m = revision_meta();
    let p = plan(&f, &event(&m));
    assert_eq!(f.execute(&p).await.unwrap(), Outcome::Posted);
    let requests = s.requests();
    let key = sha1_hex(ID);
    assert_eq!(
        target(&requests[0]),
        format!("/2.0/repositories/ws/repo/commit/{SHA}/statuses/build/{key}")
    );
    assert_eq!(
        target(&requests[1]),
        format!("/2.0/repositories/ws/repo/commit/{SHA}/statuses/build")
    );
    assert_eq!(
        requests[1].header("authorization"),
        Some(basic_auth("u", "p").as_str())
    );
    assert_eq!(requests.len(), 2);
    assert_contract(&s);
}

#[tokio::test]
async fn bitbucket_same_state_is_not_posted() {
    let s = stub(StubKind::BitbucketCloud).await;
    s.insert_status(
        "ws/repo",
        SHA,
        serde_json::json!({
            "key": sha1_hex(ID),
            "state": "SUCCESSFUL",
            "name": "kustomization/flux-system",
            "description": "reconciliation succeeded",
            "url": "https://bitbucket.org",
        }),
    );
    let f = bitbucket_on(&s, creds("u:p"));
    let m = revision_meta();
    assert_eq!(
        f.execute(&plan(&f, &event(&m))).await.unwrap(),
        Outcome::AlreadySet
    );
    assert_eq!(s.requests().len(), 1);
    assert_contract(&s);
}

#[tokio::test]
async fn bitbucket_errors_never_show_the_credentials() {
    let s = stub(StubKind::BitbucketCloud).await;
    let encoded = basic_auth("user", "app-secret");
    // A forge that echoes the credential it was sent.
    answer_next(
        &s,
        json(
            401,
            &format!("{{\"type\":\"error\",\"error\":{{\"message\":\"{encoded} app-secret\"}}}}"),
        ),
    );
    let f = bitbucket_on(&s, creds("user:app-secret"));
    let m = revision_meta();
    let err = f.execute(&plan(&f, &event(&m))).await.unwrap_err();
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains("app-secret"), "{text}");
        assert!(
            !text.contains(encoded.trim_start_matches("Basic ")),
            "{text}"
        );
    }
    assert!(
        err.to_string()
            .starts_with("could not get commit status: GET "),
        "{err}"
    );
    assert_eq!(
        s.requests()[0].header("authorization"),
        Some(encoded.as_str())
    );
}

const BITBUCKET_FORMAT: &str = "invalid token format, expected an access token (repository, project or workspace; sent as Bearer) or <username or email>:<API token> (sent as Basic)";

#[test]
fn bitbucket_cloud_token_kinds() {
    let m = revision_meta();
    let ev = event(&m);
    let auth = |token: &str| {
        let p = plan(
            &forge(ForgeKind::Bitbucket, "https://bitbucket.org/ws/repo", token),
            &ev,
        );
        let h = headers(&p.write);
        h.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.to_string())
            .unwrap()
    };
    // Repository/project/workspace access tokens have no `:`.
    assert_eq!(
        auth("ATCTT3xFfGN0abc_DEF-123="),
        "Bearer ATCTT3xFfGN0abc_DEF-123="
    );
    // API tokens with the account email, and username:secret, stay Basic.
    use base64::Engine as _;
    let basic = |s: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    };
    assert_eq!(
        auth("me@example.com:ATATT3x"),
        basic("me@example.com:ATATT3x")
    );
    assert_eq!(auth("user:secret"), basic("user:secret"));
    for bad in [":secret", "user:", "a:b:c"] {
        assert_eq!(
            new_err(
                ForgeKind::Bitbucket,
                "https://bitbucket.org/ws/repo",
                creds(bad)
            ),
            BITBUCKET_FORMAT,
            "{bad}"
        );
    }
    assert_eq!(
        new_err(
            ForgeKind::Bitbucket,
            "https://bitbucket.org/ws/repo",
            creds("bad\ntoken")
        ),
        "credentials contain characters that are not allowed in an HTTP header"
    );
}

#[test]
fn bitbucket_name_is_the_commit_status_expr_result() {
    let m = revision_meta();
    let custom = "flux/apps/production";
    for (kind, address) in [
        (ForgeKind::Bitbucket, "https://bitbucket.org/ws/repo"),
        (ForgeKind::BitbucketServer, BBS_ADDRESS),
    ] {
        let f = forge(kind, address, "user:secret");
        let default = plan(&f, &event(&m));
        let body: serde_json::Value =
            serde_json::from_slice(default.write.body.as_deref().unwrap()).unwrap();
        // Without an expression: Flux's names.
        assert!(
            body["name"]
                .as_str()
                .unwrap()
                .starts_with("kustomization/flux-system"),
            "{body}"
        );
        let ev = StatusEvent {
            status_id: custom,
            status_id_from_expr: true,
            ..event(&m)
        };
        let p = plan(&f, &ev);
        let body: serde_json::Value =
            serde_json::from_slice(p.write.body.as_deref().unwrap()).unwrap();
        assert_eq!(body["name"], custom, "{kind:?}");
        // The key stays the SHA-1 of the status ID (40 characters).
        assert_eq!(body["key"], super::sha1_hex(custom));
        assert_eq!(body["key"].as_str().unwrap().len(), 40);
        // A long result is cut to the 255 characters the API takes.
        let long = "x".repeat(400);
        let ev = StatusEvent {
            status_id: &long,
            status_id_from_expr: true,
            ..event(&m)
        };
        let body: serde_json::Value =
            serde_json::from_slice(plan(&f, &ev).write.body.as_deref().unwrap()).unwrap();
        assert_eq!(body["name"].as_str().unwrap().chars().count(), 255);
    }
}
