//! Sans-I/O tests of the shared flow and every forge's requests (Flux's test vectors and the
//! worked example of the reference), plus real-socket tests of `execute` against a tiny stub.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::{Credentials, NetworkConfig, ProxyConfig, Secret, TlsConfig};

const SHA: &str = "5394cb7f48332b2de7c17dd8b8384bbc84b7e738";
const ID: &str = "kustomization/flux-system/0c9c2e41";

fn creds(token: &str) -> Credentials {
    Credentials {
        token: Some(Secret::new(token)),
        ..Credentials::default()
    }
}

fn config(kind: ForgeKind, address: &str, credentials: Credentials) -> ForgeConfig {
    ForgeConfig {
        kind,
        address: address.to_owned(),
        credentials,
        network: NetworkConfig::default(),
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn forge(kind: ForgeKind, address: &str, token: &str) -> Forge {
    Forge::new_with_env(
        config(kind, address, creds(token)),
        &ClientCache::new(),
        no_env,
    )
    .unwrap()
}

fn new_err(kind: ForgeKind, address: &str, credentials: Credentials) -> String {
    Forge::new_with_env(
        config(kind, address, credentials),
        &ClientCache::new(),
        no_env,
    )
    .unwrap_err()
    .to_string()
}

fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn revision_meta() -> BTreeMap<String, String> {
    meta(&[
        ("revision", &format!("main@sha1:{SHA}")),
        ("commit_status", "update"),
    ])
}

fn event<'a>(metadata: &'a BTreeMap<String, String>) -> StatusEvent<'a> {
    StatusEvent {
        status_id: ID,
        kind: "Kustomization",
        name: "flux-system",
        reason: "ReconciliationSucceeded",
        severity: "info",
        metadata,
    }
}

fn plan(forge: &Forge, ev: &StatusEvent<'_>) -> Plan {
    forge.plan(ev, ProgressingMode::Pending).unwrap().unwrap()
}

fn headers(req: &ForgeRequest) -> Vec<(&str, &str)> {
    req.headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}

// === kinds and construction ===

#[test]
fn kinds_round_trip() {
    for kind in ForgeKind::ALL {
        assert_eq!(ForgeKind::from_provider_type(kind.as_str()), Some(kind));
        assert_eq!(kind.to_string(), kind.as_str());
    }
    assert_eq!(ForgeKind::from_provider_type("slack"), None);
    assert_eq!(ForgeKind::from_provider_type("GitHub"), None);
}

#[test]
fn unsupported_kinds() {
    for (kind, text) in [
        (ForgeKind::Gitea, "provider gitea is not supported yet"),
        (
            ForgeKind::BitbucketServer,
            "provider bitbucketserver is not supported yet",
        ),
    ] {
        assert_eq!(new_err(kind, "https://example.com/a/b", creds("t")), text);
    }
}

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
            creds("bar")
        ),
        "invalid token format, expected to be <user>:<password>"
    );
    assert_eq!(
        new_err(
            ForgeKind::Bitbucket,
            "https://bitbucket.org/foo/bar",
            creds("a:b:c")
        ),
        "invalid token format, expected to be <user>:<password>"
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

// === plan ===

#[test]
fn plan_order_and_progressing() {
    let f = forge(ForgeKind::GitHub, "https://github.com/o/r", "t");
    let empty = BTreeMap::new();
    let progressing = StatusEvent {
        reason: "Progressing",
        ..event(&empty)
    };
    // Skip: nothing, not even a revision lookup.
    assert!(
        f.plan(&progressing, ProgressingMode::Skip)
            .unwrap()
            .is_none()
    );
    // Pending: the revision is needed.
    assert_eq!(
        f.plan(&progressing, ProgressingMode::Pending).unwrap_err(),
        PlanError::MissingRevision
    );
    let m = revision_meta();
    let bad_severity = StatusEvent {
        severity: "trace",
        ..event(&m)
    };
    for (kind, address, token, text) in [
        (
            ForgeKind::GitHub,
            "https://github.com/o/r",
            "t",
            "can't convert to github state",
        ),
        (
            ForgeKind::GitLab,
            "https://gitlab.com/o/r",
            "t",
            "can't convert to gitlab state",
        ),
        (
            ForgeKind::Bitbucket,
            "https://bitbucket.org/o/r",
            "u:p",
            "can't convert to bitbucket state",
        ),
        (
            ForgeKind::AzureDevOps,
            "https://dev.azure.com/o/p/_git/r",
            "t",
            "can't convert to azure devops state",
        ),
    ] {
        let f = forge(kind, address, token);
        assert_eq!(
            f.plan(&bad_severity, ProgressingMode::Pending)
                .unwrap_err()
                .to_string(),
            text
        );
        // Progressing wins over any severity.
        let ev = StatusEvent {
            reason: "Progressing",
            ..bad_severity
        };
        let p = f.plan(&ev, ProgressingMode::Pending).unwrap().unwrap();
        let want = match kind {
            ForgeKind::GitHub | ForgeKind::AzureDevOps => "pending",
            ForgeKind::GitLab => "running",
            _ => "INPROGRESS",
        };
        assert_eq!(p.state, want);
        assert_eq!(p.description, "progressing");
        assert!(f.plan(&ev, ProgressingMode::Skip).unwrap().is_none());
    }
    let bad_rev = meta(&[("revision", "main@sha1:zzzz")]);
    assert_eq!(
        f.plan(&event(&bad_rev), ProgressingMode::Pending)
            .unwrap_err()
            .to_string(),
        "failed to extract commit hash from 'main@sha1:zzzz' revision"
    );
}

#[test]
fn state_mapping() {
    let m = revision_meta();
    let info = event(&m);
    let error = StatusEvent {
        severity: "error",
        reason: "HealthCheckFailed",
        ..info
    };
    for (kind, address, token, ok, failed) in [
        (
            ForgeKind::GitHub,
            "https://github.com/o/r",
            "t",
            "success",
            "failure",
        ),
        (
            ForgeKind::GitLab,
            "https://gitlab.com/o/r",
            "t",
            "success",
            "failed",
        ),
        (
            ForgeKind::Bitbucket,
            "https://bitbucket.org/o/r",
            "u:p",
            "SUCCESSFUL",
            "FAILED",
        ),
        (
            ForgeKind::AzureDevOps,
            "https://dev.azure.com/o/p/_git/r",
            "t",
            "succeeded",
            "error",
        ),
    ] {
        let f = forge(kind, address, token);
        assert_eq!(plan(&f, &info).state, ok);
        let p = plan(&f, &error);
        assert_eq!(p.state, failed);
        assert_eq!(p.description, "health check failed");
    }
}

#[test]
fn limits() {
    let m = revision_meta();
    let long_reason = "Very".repeat(100);
    let ev = StatusEvent {
        reason: &long_reason,
        ..event(&m)
    };
    let gh = plan(
        &forge(ForgeKind::GitHub, "https://github.com/o/r", "t"),
        &ev,
    );
    assert_eq!(gh.description.chars().count(), 140);
    let gl = plan(
        &forge(ForgeKind::GitLab, "https://gitlab.com/o/r", "t"),
        &ev,
    );
    assert_eq!(gl.description.chars().count(), 255);
    let long_id = "x".repeat(256);
    let ev = StatusEvent {
        status_id: &long_id,
        ..event(&m)
    };
    assert_eq!(
        forge(ForgeKind::GitHub, "https://github.com/o/r", "t")
            .plan(&ev, ProgressingMode::Pending)
            .unwrap_err(),
        PlanError::StatusIdTooLong {
            forge: ForgeKind::GitHub,
            len: 256,
            max: 255
        }
    );
    let long_name = "n".repeat(300);
    let ev = StatusEvent {
        name: &long_name,
        ..event(&m)
    };
    let bb = plan(
        &forge(ForgeKind::Bitbucket, "https://bitbucket.org/o/r", "u:p"),
        &ev,
    );
    let body: serde_json::Value =
        serde_json::from_slice(bb.write.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["name"].as_str().unwrap().chars().count(), 255);
    assert_eq!(body["key"].as_str().unwrap().len(), 40);
}

#[test]
fn fingerprint_tracks_what_is_written() {
    let m = revision_meta();
    let f = forge(ForgeKind::GitHub, "https://github.com/o/r", "t");
    let a = plan(&f, &event(&m));
    let b = plan(
        &forge(ForgeKind::GitHub, "https://github.com/o/r", "other-token"),
        &event(&m),
    );
    assert_eq!(
        a.fingerprint(),
        b.fingerprint(),
        "credentials are not part of it"
    );
    assert_eq!(a.fingerprint().len(), 40);
    let failed = plan(
        &f,
        &StatusEvent {
            severity: "error",
            ..event(&m)
        },
    );
    assert_ne!(a.fingerprint(), failed.fingerprint());
    assert!(!format!("{a:?}").contains("Bearer t\""));
}

// === §3.8 worked example, byte for byte ===

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
fn html_characters() {
    let m = revision_meta();
    let ev = StatusEvent {
        status_id: "a<b>&c",
        ..event(&m)
    };
    let gh = plan(
        &forge(ForgeKind::GitHub, "https://github.com/o/r", "t"),
        &ev,
    );
    assert!(gh.write.body_text().contains("\"context\":\"a<b>&c\""));
    let gl = plan(
        &forge(ForgeKind::GitLab, "https://gitlab.com/o/r", "t"),
        &ev,
    );
    assert!(
        gl.write
            .body_text()
            .contains("\"name\":\"a\\u003cb\\u003e\\u0026c\"")
    );
    assert!(gl.read.unwrap().url.ends_with("?name=a%3Cb%3E%26c"));
}

// === duplicate detection vectors ===

fn wanted(state: &'static str, context: &str, description: &str) -> Wanted {
    Wanted {
        sha: SHA.to_owned(),
        state,
        description: description.to_owned(),
        context: context.to_owned(),
        genre: Some("fluxcd".to_owned()),
    }
}

#[test]
fn duplicate_github_status() {
    // TestDuplicateGithubStatus (§7.5): (state, context, description).
    let s = |state: &str, context: &str, description: &str| github::RepoStatus {
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
        assert_eq!(github::duplicate(&existing, &w), want, "{existing:?} {w:?}");
    }
    // Incomplete entries are skipped, not decisive.
    let incomplete = github::RepoStatus {
        state: None,
        context: Some("foo".into()),
        description: Some("bar".into()),
    };
    assert!(github::duplicate(
        &[incomplete, s("success", "foo", "bar")],
        &wanted("success", "foo", "bar")
    ));
}

#[test]
fn duplicate_gitlab_status() {
    let s = |sha: &str, status: &str, name: &str, description: Option<&str>| gitlab::CommitStatus {
        sha: Some(sha.into()),
        status: Some(status.into()),
        name: Some(name.into()),
        description: description.map(Into::into),
    };
    let w = wanted("success", "foo", "bar");
    assert!(gitlab::duplicate(
        &[s(SHA, "success", "foo", Some("bar"))],
        &w
    ));
    // Any match counts, not only the first with our name.
    assert!(gitlab::duplicate(
        &[
            s(SHA, "failed", "foo", Some("bar")),
            s(SHA, "success", "foo", Some("bar"))
        ],
        &w
    ));
    assert!(!gitlab::duplicate(
        &[s("other", "success", "foo", Some("bar"))],
        &w
    ));
    assert!(!gitlab::duplicate(&[s(SHA, "success", "foo", None)], &w));
    assert!(gitlab::duplicate(
        &[s(SHA, "success", "foo", None)],
        &wanted("success", "foo", "")
    ));
}

#[test]
fn duplicate_azure_devops_status() {
    // TestDuplicateAzureDevOpsStatus (§7.10): (state, name, description), genre fluxcd.
    let s = |state: &str, name: &str, description: &str| azure_devops::GitStatus {
        state: Some(state.into()),
        description: Some(description.into()),
        context: Some(azure_devops::StatusContext {
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
            azure_devops::duplicate(&existing, &w),
            want,
            "{existing:?} {w:?}"
        );
    }
    let other_genre = Wanted {
        genre: Some("fluxcd:summary".into()),
        ..wanted("succeeded", "foo", "bar")
    };
    assert!(!azure_devops::duplicate(
        &[s("succeeded", "foo", "bar")],
        &other_genre
    ));
}

// === real sockets ===

#[derive(Clone, Debug)]
struct Recorded {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `None` = never answer (for timeouts).
type Reply = Option<(u16, Vec<(&'static str, String)>, String)>;
type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

struct Stub {
    base: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Stub {
    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn stub(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Stub {
    stub_with(handler, None).await
}

async fn stub_with(
    handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Stub {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let handler: Handler = Arc::new(handler);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let log = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let (handler, log, tls) = (handler.clone(), log.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(socket).await {
                            serve(stream, handler, log).await;
                        }
                    }
                    None => serve(socket, handler, log).await,
                }
            });
        }
    });
    Stub {
        base: format!("{scheme}://127.0.0.1:{port}"),
        requests,
    }
}

async fn serve(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    handler: Handler,
    log: Arc<Mutex<Vec<Recorded>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let recorded = Recorded {
        method,
        target,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    log.lock().unwrap().push(recorded.clone());
    let Some((status, extra, body)) = handler(&recorded) else {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return;
    };
    let reason = http::StatusCode::from_u16(status)
        .unwrap()
        .canonical_reason()
        .unwrap_or("");
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(&body);
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn json(status: u16, body: &str) -> Reply {
    Some((
        status,
        vec![("Content-Type", "application/json".to_owned())],
        body.to_owned(),
    ))
}

fn network(timeout: Duration) -> NetworkConfig {
    NetworkConfig {
        timeout,
        ..NetworkConfig::default()
    }
}

fn ghe(stub: &Stub, token: &str, network: NetworkConfig) -> Forge {
    let config = ForgeConfig {
        kind: ForgeKind::GitHub,
        address: format!("{}/o/r", stub.base),
        credentials: creds(token),
        network,
    };
    Forge::new_with_env(config, &ClientCache::new(), no_env).unwrap()
}

#[tokio::test]
async fn github_duplicate_is_not_posted() {
    let existing = format!(
        "[{{\"context\":\"other\",\"state\":\"failure\",\"description\":\"x\"}},\
         {{\"context\":\"{ID}\",\"state\":\"success\",\"description\":\"reconciliation succeeded\"}}]"
    );
    let s = stub(move |r| match r.method.as_str() {
        "GET" => json(200, &existing),
        _ => json(401, "{\"message\":\"must not be called\"}"),
    })
    .await;
    let f = ghe(&s, "ghp_x", NetworkConfig::default());
    let m = revision_meta();
    let p = plan(&f, &event(&m));
    assert_eq!(f.execute(&p).await.unwrap(), Outcome::AlreadySet);
    let requests = s.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        requests[0].target,
        format!("/api/v3/repos/o/r/commits/{SHA}/statuses?per_page=50")
    );
    assert_eq!(requests[0].header("authorization"), Some("Bearer ghp_x"));
    assert_eq!(
        requests[0].header("user-agent"),
        Some(transport::USER_AGENT)
    );
}

#[tokio::test]
async fn github_posts_when_different() {
    let s = stub(|r| match r.method.as_str() {
        "GET" => json(200, "[]"),
        _ => json(201, "{}"),
    })
    .await;
    let f = ghe(&s, "ghp_x", NetworkConfig::default());
    let m = revision_meta();
    let p = plan(&f, &event(&m));
    assert_eq!(f.execute(&p).await.unwrap(), Outcome::Posted);
    let requests = s.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].method, "POST");
    assert_eq!(
        requests[1].target,
        format!("/api/v3/repos/o/r/statuses/{SHA}")
    );
    assert_eq!(requests[1].body, p.write.body_text());
    assert_eq!(requests[1].header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn bitbucket_not_found_means_none() {
    let s = stub(|r| match r.method.as_str() {
        "GET" => json(
            404,
            "{\"type\":\"error\",\"error\":{\"message\":\"Not found\"}}",
        ),
        _ => json(201, "{}"),
    })
    .await;
    let api = format!("{}/2.0", s.base);
    let f = Forge::new_with_env(
        config(
            ForgeKind::Bitbucket,
            "https://bitbucket.org/ws/repo",
            creds("u:p"),
        ),
        &ClientCache::new(),
        move |name| (name == "BITBUCKET_API_BASE_URL").then(|| api.clone()),
    )
    .unwrap();
    let m = revision_meta();
    let p = plan(&f, &event(&m));
    assert_eq!(f.execute(&p).await.unwrap(), Outcome::Posted);
    let requests = s.requests();
    let key = sha1_hex(ID);
    assert_eq!(
        requests[0].target,
        format!("/2.0/repositories/ws/repo/commit/{SHA}/statuses/build/{key}")
    );
    assert_eq!(
        requests[1].target,
        format!("/2.0/repositories/ws/repo/commit/{SHA}/statuses/build")
    );
    assert_eq!(
        requests[1].header("authorization"),
        Some(basic_auth("u", "p").as_str())
    );
}

#[tokio::test]
async fn bitbucket_same_state_is_not_posted() {
    let s = stub(|r| match r.method.as_str() {
        "GET" => json(
            200,
            "{\"state\":\"SUCCESSFUL\",\"description\":\"reconciliation succeeded\",\"key\":\"x\"}",
        ),
        _ => json(401, ""),
    })
    .await;
    let api = format!("{}/2.0", s.base);
    let f = Forge::new_with_env(
        config(
            ForgeKind::Bitbucket,
            "https://bitbucket.org/ws/repo",
            creds("u:p"),
        ),
        &ClientCache::new(),
        move |_| Some(api.clone()),
    )
    .unwrap();
    let m = revision_meta();
    assert_eq!(
        f.execute(&plan(&f, &event(&m))).await.unwrap(),
        Outcome::AlreadySet
    );
    assert_eq!(s.requests().len(), 1);
}

#[tokio::test]
async fn timeout_is_retryable_and_says_so() {
    let s = stub(|_| None).await;
    let f = ghe(&s, "ghp_x", network(Duration::from_millis(200)));
    let m = revision_meta();
    let err = f.execute(&plan(&f, &event(&m))).await.unwrap_err();
    assert!(err.is_timeout());
    assert_eq!(err.retry(), Retry::Backoff);
    assert_eq!(err.status(), None);
    let text = err.to_string();
    assert!(
        text.starts_with("could not list commit statuses: GET "),
        "{text}"
    );
    assert!(text.ends_with("request timed out after 200ms"), "{text}");
}

#[tokio::test]
async fn errors_never_show_the_token() {
    let token = "ghp_SuperSecretToken";
    let s = stub(move |r| {
        let echoed = r.header("authorization").unwrap_or_default().to_owned();
        json(
            401,
            &format!("{{\"message\":\"Bad credentials for {echoed}\"}}"),
        )
    })
    .await;
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
            s.base
        )
    );
}

#[tokio::test]
async fn write_errors_and_rate_limits() {
    let s = stub(|r| match r.method.as_str() {
        "GET" => json(200, "[]"),
        _ => Some((
            429,
            vec![("Retry-After", "30".to_owned())],
            "{\"message\":\"slow down\"}".to_owned(),
        )),
    })
    .await;
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
}

#[tokio::test]
async fn azure_203_is_an_auth_failure() {
    let s = stub(|_| {
        Some((
            203,
            vec![("Content-Type", "text/html".to_owned())],
            "<html>sign in</html>".to_owned(),
        ))
    })
    .await;
    let f = forge(
        ForgeKind::AzureDevOps,
        &format!("{}/org/proj/_git/repo", s.base),
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
        s.requests()[0].target,
        format!("/org/proj/_apis/git/repositories/repo/commits/{SHA}/statuses?api-version=6.0")
    );
}

#[tokio::test]
async fn gitlab_transition_conflict_is_already_set() {
    let s = stub(|r| match r.method.as_str() {
        "GET" => json(200, "[]"),
        _ => json(400, "{\"message\":\"Cannot transition status via :run from :running (Reason(s): Status cannot transition via \\\"run\\\")\"}"),
    })
    .await;
    let f = forge(ForgeKind::GitLab, &format!("{}/g/p", s.base), "glpat");
    let m = revision_meta();
    let ev = StatusEvent {
        reason: "Progressing",
        ..event(&m)
    };
    let p = f.plan(&ev, ProgressingMode::Pending).unwrap().unwrap();
    assert_eq!(f.execute(&p).await.unwrap(), Outcome::AlreadySet);
    assert_eq!(s.requests()[1].header("private-token"), Some("glpat"));
}

#[tokio::test]
async fn decode_error_is_permanent() {
    let s = stub(|_| json(200, "not json")).await;
    let f = ghe(&s, "t", NetworkConfig::default());
    let m = revision_meta();
    let err = f.execute(&plan(&f, &event(&m))).await.unwrap_err();
    assert_eq!(err.retry(), Retry::No);
    assert!(
        err.to_string().contains("could not decode the response"),
        "{err}"
    );
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let f = forge(
        ForgeKind::GitHub,
        &format!("http://127.0.0.1:{port}/o/r"),
        "t",
    );
    let m = revision_meta();
    let err = f.execute(&plan(&f, &event(&m))).await.unwrap_err();
    assert_eq!(err.retry(), Retry::Backoff);
    assert!(
        err.to_string()
            .starts_with("could not list commit statuses: GET http://127.0.0.1:"),
        "{err}"
    );
}

#[tokio::test]
async fn proxy_carries_every_request() {
    let proxy = stub(|r| match r.method.as_str() {
        "GET" => json(200, "[]"),
        _ => json(201, "{}"),
    })
    .await;
    let network = NetworkConfig {
        proxy: Some(ProxyConfig {
            url: proxy.base.clone(),
            username: Some("puser".into()),
            password: Some(Secret::new("ppass")),
        }),
        ..NetworkConfig::default()
    };
    let config = ForgeConfig {
        kind: ForgeKind::GitHub,
        address: "http://ghe.invalid/o/r".into(),
        credentials: creds("t"),
        network,
    };
    let f = Forge::new_with_env(config, &ClientCache::new(), no_env).unwrap();
    let m = revision_meta();
    assert_eq!(
        f.execute(&plan(&f, &event(&m))).await.unwrap(),
        Outcome::Posted
    );
    let requests = proxy.requests();
    assert_eq!(requests.len(), 2);
    assert!(
        requests[0]
            .target
            .starts_with("http://ghe.invalid/api/v3/repos/o/r/commits/")
    );
    assert_eq!(
        requests[1].target,
        format!("http://ghe.invalid/api/v3/repos/o/r/statuses/{SHA}")
    );
    for r in &requests {
        assert_eq!(
            r.header("proxy-authorization"),
            Some(basic_auth("puser", "ppass").as_str())
        );
    }
}

fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, Vec<u8>) {
    let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let cert_pem = generated.cert.pem().into_bytes();
    let cert = generated.cert.der().clone();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(generated.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), cert_pem)
}

#[tokio::test]
async fn custom_ca_replaces_the_trust_roots() {
    let (acceptor, ca) = tls_acceptor();
    let s = stub_with(
        |r| match r.method.as_str() {
            "GET" => json(200, "[]"),
            _ => json(201, "{}"),
        },
        Some(acceptor),
    )
    .await;
    let m = revision_meta();
    let trusting = NetworkConfig {
        tls: Some(TlsConfig {
            ca_pem: Some(ca),
            ..TlsConfig::default()
        }),
        ..NetworkConfig::default()
    };
    let f = ghe(&s, "t", trusting);
    assert_eq!(
        f.execute(&plan(&f, &event(&m))).await.unwrap(),
        Outcome::Posted
    );
    let f = ghe(&s, "t", NetworkConfig::default());
    let err = f.execute(&plan(&f, &event(&m))).await.unwrap_err();
    assert_eq!(err.status(), None, "{err}");
    assert_eq!(
        s.requests().len(),
        2,
        "the untrusted attempt never got through"
    );
}

#[tokio::test]
async fn bitbucket_errors_never_show_the_credentials() {
    let s = stub(|r| {
        let echoed = r.header("authorization").unwrap_or_default().to_owned();
        json(
            401,
            &format!("{{\"type\":\"error\",\"error\":{{\"message\":\"{echoed} app-secret\"}}}}"),
        )
    })
    .await;
    let api = format!("{}/2.0", s.base);
    let f = Forge::new_with_env(
        config(
            ForgeKind::Bitbucket,
            "https://bitbucket.org/ws/repo",
            creds("user:app-secret"),
        ),
        &ClientCache::new(),
        move |_| Some(api.clone()),
    )
    .unwrap();
    let m = revision_meta();
    let err = f.execute(&plan(&f, &event(&m))).await.unwrap_err();
    let encoded = basic_auth("user", "app-secret");
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
}
