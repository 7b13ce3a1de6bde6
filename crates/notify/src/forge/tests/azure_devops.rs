//! Azure DevOps: construction (token or workload identity), the worked example and Flux's
//! vectors, duplicates, and `execute` against the Azure DevOps stub.

use super::*;

#[test]
fn azure_devops_construction() {
    // §7.10 plus the address forms Flux does not support.
    let m = revision_meta();
    let ev = event(&m);
    let status_path = format!("/_apis/git/repositories/baz/commits/{SHA}/statuses?api-version=6.0");
    for (address, prefix) in [
        (
            "https://dev.azure.com/foo/bar/_git/baz",
            "https://dev.azure.com/foo/bar",
        ),
        (
            "https://dev.azure.com/Foo/bar/_git/baz",
            "https://dev.azure.com/foo/bar",
        ),
        (
            "https://example.com/foo/bar/_git/baz",
            "https://example.com/foo/bar",
        ),
        (
            "https://foo@dev.azure.com/foo/bar/_git/baz",
            "https://dev.azure.com/foo/bar",
        ),
        (
            "https://Foo.visualstudio.com/bar/_git/baz",
            "https://foo.visualstudio.com/bar",
        ),
        (
            "https://tfs.corp/tfs/Coll/bar/_git/baz",
            "https://tfs.corp/tfs/coll/bar",
        ),
        (
            "https://ado.corp:8443/Coll/bar/_git/baz",
            "https://ado.corp:8443/coll/bar",
        ),
        (
            "https://dev.azure.com/foo/bar/x/baz",
            "https://dev.azure.com/foo/bar",
        ),
    ] {
        let p = plan(&forge(ForgeKind::AzureDevOps, address, "foo"), &ev);
        assert_eq!(p.write.url, format!("{prefix}{status_path}"), "{address}");
    }
    let p = plan(
        &forge(
            ForgeKind::AzureDevOps,
            "https://dev.azure.com/o/My Project/_git/r",
            "t",
        ),
        &ev,
    );
    assert!(
        p.write
            .url
            .starts_with("https://dev.azure.com/o/My%20Project/_apis/git/repositories/r/")
    );
    for bad in [
        "https://dev.azure.com/foo/bar/baz",
        "https://dev.azure.com/bar/_git/baz",
        "https://dev.azure.com/foo/bar/_git/",
        "https://dev.azure.com/foo/bar/_git/baz/extra",
    ] {
        let id = GitAddress::parse(bad).id;
        assert_eq!(
            new_err(ForgeKind::AzureDevOps, bad, creds("foo")),
            format!("invalid repository id \"{id}\""),
            "{bad}"
        );
    }
    assert!(
        new_err(
            ForgeKind::AzureDevOps,
            "https://dev.azure.com/foo/bar/_git/baz",
            Credentials::default()
        )
        .starts_with("failed to acquire azure devops token")
    );
}

#[test]
fn worked_example_azure_devops() {
    let m = revision_meta();
    let f = forge(
        ForgeKind::AzureDevOps,
        "https://dev.azure.com/MyOrg/MyProj/_git/my-repo",
        "pat",
    );
    let p = plan(&f, &event(&m));
    let url = format!(
        "https://dev.azure.com/myorg/MyProj/_apis/git/repositories/my-repo/commits/{SHA}/statuses?api-version=6.0"
    );
    let auth = basic_auth("", "pat");
    let common = [
        ("Authorization", auth.as_str()),
        ("Accept", "application/json;api-version=6.0"),
        ("X-TFS-FedAuthRedirect", "Suppress"),
        ("User-Agent", transport::USER_AGENT),
    ];
    let read = p.read.as_ref().unwrap();
    assert_eq!(
        (read.method.as_str(), read.url.as_str()),
        ("GET", url.as_str())
    );
    assert_eq!(headers(read), common);
    assert_eq!(
        (p.write.method.as_str(), p.write.url.as_str()),
        ("POST", url.as_str())
    );
    let mut with_type = common.to_vec();
    with_type.push(("Content-Type", "application/json;charset=utf-8"));
    assert_eq!(headers(&p.write), with_type);
    assert_eq!(
        p.write.body_text(),
        "{\"context\":{\"genre\":\"fluxcd\",\"name\":\"kustomization/flux-system/0c9c2e41\"},\"description\":\"reconciliation succeeded\",\"state\":\"succeeded\"}"
    );
}

#[test]
fn azure_devops_post_vectors() {
    // TestAzureDevOps_Post (§7.10).
    let f = forge(
        ForgeKind::AzureDevOps,
        "https://example.com/foo/bar/_git/baz",
        "foo",
    );
    let base = |sha: &str| {
        format!(
            "https://example.com/foo/bar/_apis/git/repositories/baz/commits/{sha}/statuses?api-version=6.0"
        )
    };
    let m = meta(&[(
        "revision",
        "main@sha1:69b59063470310ebbd88a9156325322a124e55a3",
    )]);
    let ev = StatusEvent {
        status_id: "kustomization/gitops-system/0c9c2e41",
        kind: "Kustomization",
        name: "gitops-system",
        reason: "ApplySucceeded",
        severity: "info",
        metadata: &m,
        ..StatusEvent::default()
    };
    let p = plan(&f, &ev);
    assert_eq!(
        p.write.url,
        base("69b59063470310ebbd88a9156325322a124e55a3")
    );
    assert_eq!(
        p.write.body_text(),
        "{\"context\":{\"genre\":\"fluxcd\",\"name\":\"kustomization/gitops-system/0c9c2e41\"},\"description\":\"apply succeeded\",\"state\":\"succeeded\"}"
    );
    let m = meta(&[
        (
            "revision",
            "main@sha1:69b59063470310ebbd88a9156325322a124e55a3",
        ),
        (
            "originRevision",
            "main@sha1:bd88a9156325322a124e55a369b59063470310eb",
        ),
    ]);
    let p = plan(&f, &StatusEvent { metadata: &m, ..ev });
    assert_eq!(p.sha, "bd88a9156325322a124e55a369b59063470310eb");
    let m = meta(&[
        (
            "revision",
            "main@sha1:69b59063470310ebbd88a9156325322a124e55a3",
        ),
        ("summary", "test summary"),
    ]);
    let p = plan(&f, &StatusEvent { metadata: &m, ..ev });
    assert!(
        p.write
            .body_text()
            .starts_with("{\"context\":{\"genre\":\"fluxcd:test summary\"")
    );
}

#[test]
fn duplicate_azure_devops_status() {
    // TestDuplicateAzureDevOpsStatus (§7.10): (state, name, description), genre fluxcd.
    let s = |state: &str, name: &str, description: &str| crate::forge::azure_devops::GitStatus {
        state: Some(state.into()),
        description: Some(description.into()),
        context: Some(crate::forge::azure_devops::StatusContext {
            name: Some(name.into()),
            genre: Some("fluxcd".into()),
        }),
    };
    let cases = [
        (
            vec![s("succeeded", "foo", "bar")],
            wanted("succeeded", "foo", "bar"),
            true,
        ),
        (
            vec![s("succeeded", "foo", "bar")],
            wanted("failed", "foo", "bar"),
            false,
        ),
        (
            vec![s("succeeded", "foo", "bar")],
            wanted("succeeded", "baz", "bar"),
            false,
        ),
        (
            vec![s("succeeded", "foo", "bar")],
            wanted("succeeded", "foo", "baz"),
            false,
        ),
        (
            vec![s("succeeded", "baz", "bar"), s("succeeded", "foo", "bar")],
            wanted("succeeded", "foo", "bar"),
            true,
        ),
    ];
    for (existing, w, want) in cases {
        assert_eq!(
            crate::forge::azure_devops::duplicate(&existing, &w),
            want,
            "{existing:?} {w:?}"
        );
    }
    let other_genre = Wanted {
        genre: Some("fluxcd:summary".into()),
        ..wanted("succeeded", "foo", "bar")
    };
    assert!(!crate::forge::azure_devops::duplicate(
        &[s("succeeded", "foo", "bar")],
        &other_genre
    ));
}

#[tokio::test]
async fn azure_203_is_an_auth_failure() {
    let s = stub(StubKind::AzureDevOps).await;
    // The sign-in page Azure DevOps answers a credential it does not take with.
    answer_next(
        &s,
        ScriptedResponse::status(203)
            .with_header("content-type", "text/html")
            .with_body("<html>sign in</html>"),
    );
    let f = forge(
        ForgeKind::AzureDevOps,
        &format!("{}/org/proj/_git/repo", s.base_url()),
        "pat",
    );
    let m = revision_meta();
    let err = f.execute(&plan(&f, &event(&m))).await.unwrap_err();
    assert_eq!(err.status(), Some(203));
    assert_eq!(err.retry(), Retry::No);
    assert!(
        err.to_string()
            .starts_with("could not list commit statuses: GET "),
        "{err}"
    );
    assert_eq!(
        target(&s.requests()[0]),
        format!("/org/proj/_apis/git/repositories/repo/commits/{SHA}/statuses?api-version=6.0")
    );
    assert_eq!(s.requests().len(), 1);
}

#[test]
fn azure_devops_without_token_needs_a_cluster() {
    // Standalone mode: no workload identity to fall back to.
    let err = new_err(
        ForgeKind::AzureDevOps,
        "https://dev.azure.com/o/p/_git/r",
        Credentials::default(),
    );
    assert_eq!(
        err,
        "failed to acquire azure devops token: the secret has no token, and workload identity needs Kubernetes mode (a ServiceAccount token from the cluster); standalone mode (--manifests) has no cluster"
    );
}
