//! Gitea (§3.3, §7.7): construction, Flux's vectors, the worked example, Progressing, duplicates,
//! and `execute` against the Gitea stub.

use super::*;

const GITEA_SHA: &str = "69b59063470310ebbd88a9156325322a124e55a3";

const GITEA_ORIGIN_SHA: &str = "8a9156325322a124e55a369b59063470310ebbd8";

#[test]
fn gitea_construction() {
    let m = revision_meta();
    let ev = event(&m);
    let p = plan(
        &forge(
            ForgeKind::Gitea,
            "https://gitea.example.com/foo/bar",
            "foobar",
        ),
        &ev,
    );
    assert_eq!(
        p.write.url,
        format!("https://gitea.example.com/api/v1/repos/foo/bar/statuses/{SHA}")
    );
    assert_eq!(
        new_err(
            ForgeKind::Gitea,
            "https://gitea.example.com/foo/bar/baz",
            creds("t")
        ),
        "invalid repository id \"foo/bar/baz\""
    );
    // A sub-path install is not supported, as in Flux.
    assert_eq!(
        new_err(
            ForgeKind::Gitea,
            "https://example.com/gitea/foo/bar",
            creds("t")
        ),
        "invalid repository id \"gitea/foo/bar\""
    );
    for none in [Credentials::default(), creds(" \n")] {
        assert_eq!(
            new_err(ForgeKind::Gitea, "https://gitea.example.com/foo/bar", none),
            "gitea token cannot be empty"
        );
    }
    let password = Credentials {
        password: Some(Secret::new("pw")),
        ..Credentials::default()
    };
    let f = Forge::new_with_env(
        config(
            ForgeKind::Gitea,
            "git@gitea.example.com:foo/bar.git",
            password,
        ),
        &ClientCache::new(),
        no_env,
    )
    .unwrap();
    let p = plan(&f, &ev);
    assert_eq!(p.write.header_value("authorization"), Some("token pw"));
    assert!(
        p.write
            .url
            .starts_with("https://gitea.example.com/api/v1/repos/foo/bar/")
    );
    // `invalid proxy URL` (§7.7), from the shared transport.
    let mut bad_proxy = config(ForgeKind::Gitea, "/foo/bar", creds("t"));
    bad_proxy.address = "https://gitea.example.com/foo/bar".into();
    bad_proxy.network.proxy = Some(ProxyConfig {
        url: "wrong\nURL".into(),
        username: None,
        password: None,
    });
    let err = Forge::new_with_env(bad_proxy, &ClientCache::new(), no_env).unwrap_err();
    assert!(err.to_string().starts_with("invalid proxy URL"), "{err}");
    // Empty ID (§7.7).
    let f = forge(ForgeKind::Gitea, "https://gitea.example.com/foo/bar", "t");
    let ev = StatusEvent {
        status_id: "",
        ..event(&m)
    };
    assert_eq!(
        f.plan(&ev, ProgressingMode::Pending)
            .unwrap_err()
            .to_string(),
        "commit status cannot be empty"
    );
}

#[test]
fn gitea_post_vectors() {
    // TestGitea_Post (§7.7): the revision's SHA, or the originRevision's when present.
    let f = forge(
        ForgeKind::Gitea,
        "https://gitea.example.com/foo/bar",
        "foobar",
    );
    let only_revision = meta(&[("revision", &format!("main@sha1:{GITEA_SHA}"))]);
    let ev = StatusEvent {
        status_id: "kustomization/gitops-system/0c9c2e41",
        kind: "Kustomization",
        name: "podinfo-repo",
        reason: "ApplySucceeded",
        severity: "info",
        metadata: &only_revision,
        ..StatusEvent::default()
    };
    let p = plan(&f, &ev);
    assert_eq!(p.sha, GITEA_SHA);
    assert_eq!(
        p.read.as_ref().unwrap().url,
        format!(
            "https://gitea.example.com/api/v1/repos/foo/bar/commits/{GITEA_SHA}/statuses?limit=50&page=1"
        )
    );
    let both = meta(&[
        ("revision", &format!("main@sha1:{GITEA_SHA}")),
        ("originRevision", &format!("main@sha1:{GITEA_ORIGIN_SHA}")),
    ]);
    let p = plan(
        &f,
        &StatusEvent {
            metadata: &both,
            ..ev
        },
    );
    assert_eq!(p.sha, GITEA_ORIGIN_SHA);
    assert_eq!(
        p.write.url,
        format!("https://gitea.example.com/api/v1/repos/foo/bar/statuses/{GITEA_ORIGIN_SHA}")
    );
}

#[test]
fn worked_example_gitea() {
    let m = revision_meta();
    let f = forge(
        ForgeKind::Gitea,
        "https://gitea.example.com/my-org/my-repo",
        "gtok",
    );
    let p = plan(&f, &event(&m));
    let read = p.read.as_ref().unwrap();
    assert_eq!(read.method, http::Method::GET);
    assert_eq!(
        read.url,
        format!(
            "https://gitea.example.com/api/v1/repos/my-org/my-repo/commits/{SHA}/statuses?limit=50&page=1"
        )
    );
    assert_eq!(
        headers(read),
        [
            ("Authorization", "token gtok"),
            ("User-Agent", transport::USER_AGENT),
            ("Content-Type", "application/json"),
        ]
    );
    assert_eq!(read.body, None);
    assert_eq!(p.write.method, http::Method::POST);
    assert_eq!(
        p.write.url,
        format!("https://gitea.example.com/api/v1/repos/my-org/my-repo/statuses/{SHA}")
    );
    assert_eq!(
        headers(&p.write),
        [
            ("Authorization", "token gtok"),
            ("User-Agent", transport::USER_AGENT),
            ("Content-Type", "application/json"),
        ]
    );
    assert_eq!(
        p.write.body_text(),
        "{\"state\":\"success\",\"target_url\":\"\",\"description\":\"reconciliation succeeded\",\"context\":\"kustomization/flux-system/0c9c2e41\"}"
    );
    // The SDK's json.Marshal escapes HTML characters.
    let ev = StatusEvent {
        status_id: "a<b>&c",
        ..event(&m)
    };
    assert!(
        plan(&f, &ev)
            .write
            .body_text()
            .contains("\"context\":\"a\\u003cb\\u003e\\u0026c\"")
    );
}

#[test]
fn gitea_progressing() {
    let m = revision_meta();
    let f = forge(ForgeKind::Gitea, "https://gitea.example.com/o/r", "t");
    let ev = StatusEvent {
        reason: "Progressing",
        severity: "info",
        ..event(&m)
    };
    let p = f.plan(&ev, ProgressingMode::Pending).unwrap().unwrap();
    assert_eq!(
        (p.state.as_str(), p.description.as_str()),
        ("pending", "progressing")
    );
    // Flux posts `pending` on Gitea whatever the mode; ours skips it like every forge.
    assert!(f.plan(&ev, ProgressingMode::Skip).unwrap().is_none());
}

#[test]
fn duplicate_gitea_status() {
    // GitHub's rule, with the state read from `status`.
    let s = |status: &str, context: &str, description: &str| crate::forge::gitea::CommitStatus {
        status: Some(status.into()),
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
        (
            vec![s("failure", "foo", "bar"), s("success", "foo", "bar")],
            wanted("success", "foo", "bar"),
            false,
        ),
        // Empty fields are skipped, not decisive.
        (
            vec![s("", "foo", "bar"), s("success", "foo", "bar")],
            wanted("success", "foo", "bar"),
            true,
        ),
        (vec![], wanted("success", "foo", "bar"), false),
    ];
    for (existing, w, want) in cases {
        assert_eq!(
            crate::forge::gitea::duplicate(&existing, &w),
            want,
            "{existing:?} {w:?}"
        );
    }
    // The answer's state field is `status`; a `state` field is not read.
    let f = crate::forge::gitea::Gitea::new("https://g.example.com/o/r", &creds("t")).unwrap();
    let w = wanted("success", "foo", "bar");
    assert!(
        f.is_duplicate(
            &w,
            br#"[{"id":1,"status":"success","context":"foo","description":"bar","target_url":""}]"#
        )
        .unwrap()
    );
    assert!(
        !f.is_duplicate(
            &w,
            br#"[{"state":"success","context":"foo","description":"bar"}]"#
        )
        .unwrap()
    );
}

#[tokio::test]
async fn gitea_execute_against_the_flux_stub() {
    let s = stub(StubKind::Gitea).await;
    let f = forge(
        ForgeKind::Gitea,
        &format!("{}/foo/bar", s.base_url()),
        "foobar",
    );
    for metadata in [
        meta(&[("revision", &format!("main@sha1:{GITEA_SHA}"))]),
        meta(&[
            ("revision", &format!("main@sha1:{GITEA_SHA}")),
            ("originRevision", &format!("main@sha1:{GITEA_ORIGIN_SHA}")),
        ]),
    ] {
        let p = plan(&f, &event(&metadata));
        assert_eq!(f.execute(&p).await.unwrap(), Outcome::Posted);
    }
    let requests = s.requests();
    assert_eq!(requests.len(), 4, "no version probe: {requests:?}");
    assert_eq!(
        target(&requests[3]),
        format!("/api/v1/repos/foo/bar/statuses/{GITEA_ORIGIN_SHA}")
    );
    for r in &requests {
        assert_eq!(r.header("authorization"), Some("token foobar"));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(s.statuses("foo/bar", GITEA_SHA).len(), 1);
    assert_eq!(s.statuses("foo/bar", GITEA_ORIGIN_SHA).len(), 1);
    assert_contract(&s);
}
