//! GitLab: construction, the worked example, Flux's duplicate vectors, and `execute` against
//! the GitLab stub.

use super::*;

#[test]
fn gitlab_construction() {
    // §7.6
    let m = revision_meta();
    let ev = event(&m);
    for (address, token, url) in [
        (
            "https://gitlab.com/foo/bar",
            "foobar",
            "https://gitlab.com/api/v4/projects/foo%2Fbar/",
        ),
        (
            "https://gitlab.com/foo/bar/baz",
            "foobar",
            "https://gitlab.com/api/v4/projects/foo%2Fbar%2Fbaz/",
        ),
        (
            "https://example.com/foo/bar",
            "foo:bar",
            "https://example.com/api/v4/projects/foo%2Fbar/",
        ),
        (
            "https://gitlab.com/1234",
            "t",
            "https://gitlab.com/api/v4/projects/1234/",
        ),
        (
            "https://gitlab.com/g/my.repo.git",
            "t",
            "https://gitlab.com/api/v4/projects/g%2Fmy%2Erepo/",
        ),
    ] {
        let p = plan(&forge(ForgeKind::GitLab, address, token), &ev);
        assert!(p.write.url.starts_with(url), "{address}: {}", p.write.url);
        assert_eq!(p.write.header_value("PRIVATE-TOKEN"), Some(token));
    }
    assert_eq!(
        new_err(
            ForgeKind::GitLab,
            "https://gitlab.com/foo/bar",
            Credentials::default()
        ),
        "gitlab token cannot be empty"
    );
    assert_eq!(
        new_err(
            ForgeKind::GitLab,
            "https://gitlab.com/foo/bar",
            creds("  \n")
        ),
        "gitlab token cannot be empty"
    );
    // Empty ID (§7.6): found when planning, before the event is looked at.
    let f = forge(ForgeKind::GitLab, "https://gitlab.com/foo/bar", "t");
    let ev = StatusEvent {
        status_id: "",
        ..ev
    };
    assert_eq!(
        f.plan(&ev, ProgressingMode::Skip).unwrap_err(),
        PlanError::EmptyStatusId
    );
}

#[test]
fn worked_example_gitlab() {
    let m = revision_meta();
    let f = forge(
        ForgeKind::GitLab,
        "https://gitlab.com/my-group/sub/my-repo",
        "glpat",
    );
    let p = plan(&f, &event(&m));
    let read = p.read.as_ref().unwrap();
    assert_eq!(
        read.url,
        format!(
            "https://gitlab.com/api/v4/projects/my-group%2Fsub%2Fmy-repo/repository/commits/{SHA}/statuses?name=kustomization%2Fflux-system%2F0c9c2e41"
        )
    );
    let common = [
        ("PRIVATE-TOKEN", "glpat"),
        ("Accept", "application/json"),
        ("User-Agent", transport::USER_AGENT),
    ];
    assert_eq!(headers(read), common);
    assert_eq!(
        p.write.url,
        format!("https://gitlab.com/api/v4/projects/my-group%2Fsub%2Fmy-repo/statuses/{SHA}")
    );
    let mut with_type = common.to_vec();
    with_type.push(("Content-Type", "application/json"));
    assert_eq!(headers(&p.write), with_type);
    assert_eq!(
        p.write.body_text(),
        "{\"state\":\"success\",\"name\":\"kustomization/flux-system/0c9c2e41\",\"description\":\"reconciliation succeeded\"}"
    );
}

#[test]
fn duplicate_gitlab_status() {
    let s = |sha: &str, status: &str, name: &str, description: Option<&str>| {
        crate::forge::gitlab::CommitStatus {
            sha: Some(sha.into()),
            status: Some(status.into()),
            name: Some(name.into()),
            description: description.map(Into::into),
        }
    };
    let w = wanted("success", "foo", "bar");
    assert!(crate::forge::gitlab::duplicate(
        &[s(SHA, "success", "foo", Some("bar"))],
        &w
    ));
    // Any match counts, not only the first with our name.
    assert!(crate::forge::gitlab::duplicate(
        &[
            s(SHA, "failed", "foo", Some("bar")),
            s(SHA, "success", "foo", Some("bar"))
        ],
        &w
    ));
    assert!(!crate::forge::gitlab::duplicate(
        &[s("other", "success", "foo", Some("bar"))],
        &w
    ));
    assert!(!crate::forge::gitlab::duplicate(
        &[s(SHA, "success", "foo", None)],
        &w
    ));
    assert!(crate::forge::gitlab::duplicate(
        &[s(SHA, "success", "foo", None)],
        &wanted("success", "foo", "")
    ));
}

#[tokio::test]
async fn gitlab_transition_conflict_is_already_set() {
    let s = stub(StubKind::GitLab).await;
    let conflict = json(
        400,
        "{\"message\":\"Cannot transition status via :run from :running (Reason(s): Status cannot transition via \\\"run\\\")\"}",
    );
    for _ in 0..2 {
        s.push_response(Matcher::post("/statuses/"), conflict.clone());
    }
    let f = forge(ForgeKind::GitLab, &format!("{}/g/p", s.base_url()), "glpat");
    let m = revision_meta();
    let ev = StatusEvent {
        reason: "Progressing",
        ..event(&m)
    };
    let p = f.plan(&ev, ProgressingMode::Pending).unwrap().unwrap();
    assert_eq!(f.execute(&p).await.unwrap(), Outcome::AlreadyInState);
    assert_eq!(s.requests()[1].header("private-token"), Some("glpat"));
    // Without the read: one request, the same answer.
    let (result, exchange) = f.execute_with(&p.without_read(), None).await;
    assert_eq!(result.unwrap(), Outcome::AlreadyInState);
    assert_eq!((exchange.reads, exchange.writes), (0, 1));
    assert_eq!(s.requests().len(), 3);
    assert_contract(&s);
}
