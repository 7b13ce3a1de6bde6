//! GitHub (and GitHub Enterprise Server): construction, the worked example, Flux's duplicate
//! vectors, GitHub App settings, and `execute` against the GitHub stub.

use super::*;

#[test]
fn github_construction() {
    // §7.5
    let ev_meta = revision_meta();
    let ev = event(&ev_meta);
    let f = forge(ForgeKind::GitHub, "https://github.com/foo/bar", "foobar");
    assert_eq!(f.kind(), ForgeKind::GitHub);
    let p = plan(&f, &ev);
    assert!(
        p.write
            .url
            .starts_with("https://api.github.com/repos/foo/bar/")
    );
    assert_eq!(p.status_id, ID);
    let p = plan(
        &forge(ForgeKind::GitHub, "https://foobar.com/foo/bar", "foobar"),
        &ev,
    );
    assert!(
        p.write
            .url
            .starts_with("https://foobar.com/api/v3/repos/foo/bar/"),
        "{}",
        p.write.url
    );
    for (address, base) in [
        (
            "https://api.example.com/o/r",
            "https://api.example.com/repos/o/r/",
        ),
        (
            "https://ghe.api.example.com/o/r",
            "https://ghe.api.example.com/repos/o/r/",
        ),
        (
            "https://ghe.example.com:8443/o/r",
            "https://ghe.example.com:8443/api/v3/repos/o/r/",
        ),
        (
            "git@github.com:o/r.git",
            "https://api.github.com/repos/o/r/",
        ),
        (
            "ssh://git@github.com/o/r",
            "https://api.github.com/repos/o/r/",
        ),
    ] {
        let p = plan(&forge(ForgeKind::GitHub, address, "t"), &ev);
        assert!(p.write.url.starts_with(base), "{address}: {}", p.write.url);
    }
    assert_eq!(
        new_err(
            ForgeKind::GitHub,
            "https://github.com/foo/bar/baz",
            creds("t")
        ),
        "invalid repository id: 'foo/bar/baz'"
    );
    assert_eq!(
        new_err(ForgeKind::GitHub, "https://github.com/foo/bar/", creds("t")),
        "invalid repository id: 'foo/bar/'"
    );
    assert_eq!(
        new_err(
            ForgeKind::GitHub,
            "https://github.com/foo/bar",
            Credentials::default()
        ),
        "github token or github app details must be specified"
    );
    // `password` is the fallback for `token`.
    let password = Credentials {
        password: Some(Secret::new("pw")),
        ..Credentials::default()
    };
    let f = Forge::new_with_env(
        config(ForgeKind::GitHub, "https://github.com/foo/bar", password),
        &ClientCache::new(),
        no_env,
    )
    .unwrap();
    assert_eq!(
        plan(&f, &ev).write.header_value("authorization"),
        Some("Bearer pw")
    );
    assert_eq!(
        new_err(ForgeKind::GitHub, "git://github.com/foo/bar", creds("t")),
        "unsupported scheme type in address: git. Must be http or https"
    );
    assert_eq!(
        new_err(
            ForgeKind::GitHub,
            "https://github.com/foo/bar",
            creds("a\nb")
        ),
        "credentials contain characters that are not allowed in an HTTP header"
    );
}

#[test]
fn worked_example_github() {
    let m = revision_meta();
    let p = plan(
        &forge(
            ForgeKind::GitHub,
            "https://github.com/my-org/my-repo",
            "ghp_x",
        ),
        &event(&m),
    );
    assert_eq!((p.sha.as_str(), p.state.as_str()), (SHA, "success"));
    assert_eq!(p.description, "reconciliation succeeded");
    let read = p.read.as_ref().unwrap();
    assert_eq!(read.method, http::Method::GET);
    assert_eq!(
        read.url,
        format!("https://api.github.com/repos/my-org/my-repo/commits/{SHA}/statuses?per_page=50")
    );
    let common = [
        ("Authorization", "Bearer ghp_x"),
        ("Accept", "application/vnd.github.v3+json"),
        ("X-GitHub-Api-Version", "2022-11-28"),
        ("User-Agent", transport::USER_AGENT),
    ];
    assert_eq!(headers(read), common);
    assert_eq!(read.body, None);
    assert_eq!(p.write.method, http::Method::POST);
    assert_eq!(
        p.write.url,
        format!("https://api.github.com/repos/my-org/my-repo/statuses/{SHA}")
    );
    let mut with_type = common.to_vec();
    with_type.push(("Content-Type", "application/json"));
    assert_eq!(headers(&p.write), with_type);
    assert_eq!(
        p.write.body_text(),
        "{\"state\":\"success\",\"description\":\"reconciliation succeeded\",\"context\":\"kustomization/flux-system/0c9c2e41\"}\n"
    );
    assert!(transport::USER_AGENT.starts_with("commit-status-controller/"));
}

#[test]
fn duplicate_github_status() {
    // TestDuplicateGithubStatus (§7.5): (state, context, description).
    let s = |state: &str, context: &str, description: &str| crate::forge::github::RepoStatus {
        state: Some(state.into()),
        context: Some(context.into()),
        description: Some(description.into()),
    };
    let cases = [
        (
            vec![s("success", "foo", "bar")],
            wanted("success", "foo", "bar"),
            true,
        ),
        (
            vec![s("success", "foo", "bar")],
            wanted("failure", "foo", "bar"),
            false,
        ),
        (
            vec![s("success", "foo", "bar")],
            wanted("success", "baz", "bar"),
            false,
        ),
        (
            vec![s("success", "foo", "bar")],
            wanted("success", "foo", "baz"),
            false,
        ),
        (
            vec![s("success", "baz", "bar"), s("success", "foo", "bar")],
            wanted("success", "foo", "bar"),
            true,
        ),
        // Only the first status with our context counts.
        (
            vec![s("failure", "foo", "bar"), s("success", "foo", "bar")],
            wanted("success", "foo", "bar"),
            false,
        ),
        (vec![], wanted("success", "foo", "bar"), false),
    ];
    for (existing, w, want) in cases {
        assert_eq!(
            crate::forge::github::duplicate(&existing, &w),
            want,
            "{existing:?} {w:?}"
        );
    }
    // Incomplete entries are skipped, not decisive.
    let incomplete = crate::forge::github::RepoStatus {
        state: None,
        context: Some("foo".into()),
        description: Some("bar".into()),
    };
    assert!(crate::forge::github::duplicate(
        &[incomplete, s("success", "foo", "bar")],
        &wanted("success", "foo", "bar")
    ));
}

#[tokio::test]
async fn github_duplicate_is_not_posted() {
    let s = stub(StubKind::GitHub).await;
    s.insert_status(
        "o/r",
        SHA,
        serde_json::json!({"context": ID, "state": "success", "description": "reconciliation succeeded"}),
    );
    s.insert_status(
        "o/r",
        SHA,
        serde_json::json!({"context": "other", "state": "failure", "description": "x"}),
    );
    let f = ghe(&s, "ghp_x", NetworkConfig::default());
    let m = revision_meta();
    let p = plan(&f, &event(&m));
    assert_eq!(f.execute(&p).await.unwrap(), Outcome::AlreadySet);
    let requests = s.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        target(&requests[0]),
        format!("/api/v3/repos/o/r/commits/{SHA}/statuses?per_page=50")
    );
    assert_eq!(requests[0].header("authorization"), Some("Bearer ghp_x"));
    assert_eq!(
        requests[0].header("user-agent"),
        Some(transport::USER_AGENT)
    );
    assert_contract(&s);
}

#[tokio::test]
async fn github_posts_when_different() {
    let s = stub(StubKind::GitHub).await;
    let f = ghe(&s, "ghp_x", NetworkConfig::default());
    let m = revision_meta();
    let p = plan(&f, &event(&m));
    assert_eq!(f.execute(&p).await.unwrap(), Outcome::Posted);
    let requests = s.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].method, "POST");
    assert_eq!(
        target(&requests[1]),
        format!("/api/v3/repos/o/r/statuses/{SHA}")
    );
    assert_eq!(requests[1].body_text(), p.write.body_text());
    assert_eq!(requests[1].header("content-type"), Some("application/json"));
    assert_eq!(s.statuses("o/r", SHA).len(), 1);
    assert_contract(&s);
}

#[tokio::test]
async fn errors_never_show_the_token() {
    let token = "ghp_SuperSecretToken";
    let s = stub(StubKind::GitHub).await;
    // A forge that echoes the credential it was sent.
    answer_next(
        &s,
        json(
            401,
            &format!("{{\"message\":\"Bad credentials for Bearer {token}\"}}"),
        ),
    );
    let f = ghe(&s, token, NetworkConfig::default());
    let m = revision_meta();
    let p = plan(&f, &event(&m));
    let err = f.execute(&p).await.unwrap_err();
    for text in [
        err.to_string(),
        format!("{err:?}"),
        format!("{f:?}"),
        format!("{p:?}"),
        p.write.redacted(),
    ] {
        assert!(!text.contains(token), "{text}");
    }
    assert_eq!(err.status(), Some(401));
    assert_eq!(err.retry(), Retry::No);
    assert_eq!(
        err.to_string(),
        format!(
            "could not list commit statuses: GET {}/api/v3/repos/o/r/commits/{SHA}/statuses?per_page=50: 401 Bad credentials for Bearer *****",
            s.base_url()
        )
    );
    assert_eq!(
        s.requests()[0].header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
}

#[tokio::test]
async fn write_errors_and_rate_limits() {
    let s = stub(StubKind::GitHub).await;
    s.push_response(
        Matcher::post("/statuses/"),
        json(429, "{\"message\":\"slow down\"}").with_header("Retry-After", "30"),
    );
    let f = ghe(&s, "t", NetworkConfig::default());
    let m = revision_meta();
    let err = f.execute(&plan(&f, &event(&m))).await.unwrap_err();
    assert_eq!(err.retry(), Retry::After(Duration::from_secs(30)));
    assert!(
        err.to_string()
            .starts_with("could not create commit status: POST "),
        "{err}"
    );
    assert!(err.to_string().ends_with(": 429 slow down"), "{err}");
    assert_eq!(s.requests().len(), 2);
    assert_contract(&s);
}

#[tokio::test]
async fn github_status_cap_is_permanent_and_explained() {
    let s = stub(StubKind::GitHub).await;
    answer_next(
        &s,
        json(
            422,
            "{\"message\":\"Validation Failed\",\"errors\":[{\"resource\":\"Status\",\"code\":\"custom\",\"message\":\"This SHA and context has reached the maximum number of statuses.\"}]}",
        ),
    );
    let f = forge(ForgeKind::GitHub, &format!("{}/o/r", s.base_url()), "t");
    let m = revision_meta();
    let p = f
        .plan(&event(&m), ProgressingMode::Pending)
        .unwrap()
        .unwrap();
    let err = f.execute(&p.without_read()).await.unwrap_err();
    assert_eq!((err.status(), err.retry()), (Some(422), Retry::No));
    let text = err.to_string();
    assert!(
        text.starts_with("could not create commit status: POST "),
        "{text}"
    );
    assert!(
        text.contains("reached the maximum number of statuses"),
        "{text}"
    );
    assert!(
        text.contains("at most 1000 statuses per commit and context"),
        "{text}"
    );
    assert_contract(&s);
}

fn app_key() -> String {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
        .unwrap()
        .serialize_pem()
}

#[test]
fn github_app_construction() {
    let pem = app_key();
    let app = |app_id: &str, installation: Option<&str>, key: &str| Credentials {
        github_app: Some(crate::GitHubApp {
            app_id: app_id.into(),
            installation_id: installation.map(Into::into),
            private_key: Secret::new(key),
            ..crate::GitHubApp::default()
        }),
        ..Credentials::default()
    };
    let address = "https://github.com/foo/bar";
    for (credentials, error) in [
        (
            Credentials::default(),
            "github token or github app details must be specified",
        ),
        (
            app("", Some("1"), &pem),
            "github token or github app details must be specified",
        ),
        (
            app("1", None, &pem),
            "app installation owner or ID must be provided to use github app authentication",
        ),
        (
            app("1", Some("1"), ""),
            "private key must be provided to use github app authentication",
        ),
    ] {
        assert_eq!(new_err(ForgeKind::GitHub, address, credentials), error);
    }
    let f = Forge::new_with_env(
        config(ForgeKind::GitHub, address, app("1", Some("2"), &pem)),
        &ClientCache::new(),
        no_env,
    )
    .unwrap();
    let m = revision_meta();
    let p = plan(&f, &event(&m));
    // The token is only known at execution.
    assert_eq!(p.write.header_value("authorization"), None);
    assert!(!format!("{f:?}").contains("PRIVATE KEY"));
    // A token wins over App settings, as in Flux.
    let both = Credentials {
        token: Some(Secret::new("ghp_x")),
        ..app("1", None, "")
    };
    let f = Forge::new_with_env(
        config(ForgeKind::GitHub, address, both),
        &ClientCache::new(),
        no_env,
    )
    .unwrap();
    assert_eq!(
        plan(&f, &event(&m)).write.header_value("authorization"),
        Some("Bearer ghp_x")
    );
}
