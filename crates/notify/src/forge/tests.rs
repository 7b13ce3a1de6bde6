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
        ..StatusEvent::default()
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
fn every_kind_is_supported() {
    let addresses = [
        (ForgeKind::GitHub, "https://github.com/o/r", "t"),
        (ForgeKind::GitLab, "https://gitlab.com/o/r", "t"),
        (ForgeKind::Gitea, "https://gitea.example.com/o/r", "t"),
        (ForgeKind::Bitbucket, "https://bitbucket.org/o/r", "u:p"),
        (
            ForgeKind::BitbucketServer,
            "https://bb.example.com/scm/PRJ/r.git",
            "t",
        ),
        (
            ForgeKind::AzureDevOps,
            "https://dev.azure.com/o/p/_git/r",
            "t",
        ),
    ];
    for kind in ForgeKind::ALL {
        let (_, address, token) = addresses.iter().find(|(k, _, _)| *k == kind).unwrap();
        assert_eq!(forge(kind, address, token).kind(), kind);
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
        (
            ForgeKind::Gitea,
            "https://gitea.example.com/o/r",
            "t",
            "can't convert to gitea state",
        ),
        (
            ForgeKind::BitbucketServer,
            "https://bb.example.com/scm/o/r.git",
            "t",
            "couldn't convert to bitbucket server state: bitbucket server state generated on info or error events only",
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
            ForgeKind::GitHub | ForgeKind::AzureDevOps | ForgeKind::Gitea => "pending",
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
        (
            ForgeKind::Gitea,
            "https://gitea.example.com/o/r",
            "t",
            "success",
            "failure",
        ),
        (
            ForgeKind::BitbucketServer,
            "https://bb.example.com/scm/o/r.git",
            "t",
            "SUCCESSFUL",
            "FAILED",
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
    // Bitbucket Cloud refuses keys over 40 characters: the SHA-1 of any ID fits.
    let long_id = "kustomization/".repeat(40);
    let bb = plan(
        &forge(ForgeKind::Bitbucket, "https://bitbucket.org/o/r", "u:p"),
        &StatusEvent {
            status_id: &long_id,
            ..event(&m)
        },
    );
    let body: serde_json::Value =
        serde_json::from_slice(bb.write.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["key"], sha1_hex(&long_id));
    assert_eq!(body["key"].as_str().unwrap().len(), 40);
    assert!(bb.read.unwrap().url.ends_with(&sha1_hex(&long_id)));
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

#[test]
fn fingerprint_without_leaves_a_volatile_link_out() {
    let m = revision_meta();
    let f = forge(ForgeKind::GitHub, "https://github.com/o/r", "t");
    let (one, two) = (
        "https://csc.example/deliveries/1",
        "https://csc.example/deliveries/2",
    );
    let a = plan(
        &f,
        &StatusEvent {
            target_url: Some(one),
            ..event(&m)
        },
    );
    let b = plan(
        &f,
        &StatusEvent {
            target_url: Some(two),
            ..event(&m)
        },
    );
    assert_ne!(a.fingerprint(), b.fingerprint());
    assert_eq!(a.fingerprint_without(one), b.fingerprint_without(two));
    let failed = plan(
        &f,
        &StatusEvent {
            severity: "error",
            target_url: Some(two),
            ..event(&m)
        },
    );
    assert_ne!(a.fingerprint_without(one), failed.fingerprint_without(two));
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
        name: None,
        target_url: None,
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
async fn conditional_read_uses_the_validated_answer_on_304() {
    let existing = "[{\"context\":\"kustomization/flux-system/0c9c2e41\",\"state\":\"success\",\"description\":\"reconciliation succeeded\"}]";
    let s = stub(
        move |r| match (r.method.as_str(), r.header("if-none-match")) {
            ("GET", Some("\"v1\"")) => Some((304, vec![("ETag", "\"v1\"".into())], String::new())),
            ("GET", _) => Some((
                200,
                vec![
                    ("Content-Type", "application/json".into()),
                    ("ETag", "\"v1\"".into()),
                    ("X-RateLimit-Remaining", "41".into()),
                ],
                "[]".into(),
            )),
            _ => json(201, "{}"),
        },
    )
    .await;
    let f = forge(ForgeKind::GitHub, &format!("{}/o/r", s.base), "t");
    let m = revision_meta();
    let p = f
        .plan(&event(&m), ProgressingMode::Pending)
        .unwrap()
        .unwrap();
    // First read: unconditional; its ETag and answer come back to be kept.
    let (result, first) = f.execute_with(&p, None).await;
    assert_eq!(result.unwrap(), Outcome::Posted);
    assert_eq!(
        (first.reads, first.writes, first.not_modified),
        (1, 1, false)
    );
    assert_eq!(first.rate_limit.unwrap().remaining, Some(41));
    let validator = first.validator.expect("an ETag was sent");
    assert_eq!(validator.etag, "\"v1\"");
    assert_eq!(validator.body, b"[]");
    assert!(s.requests()[0].header("if-none-match").is_none());
    // Conditional read: 304 means the kept answer holds, here "our status is already there".
    let kept = Validator {
        body: existing.as_bytes().to_vec(),
        ..validator.clone()
    };
    let (result, second) = f.execute_with(&p, Some(&kept)).await;
    assert_eq!(result.unwrap(), Outcome::AlreadySet);
    assert_eq!(
        (second.reads, second.writes, second.not_modified),
        (1, 0, true)
    );
    assert_eq!(s.requests()[2].header("if-none-match"), Some("\"v1\""));
    // A validator for another URL is not used.
    let elsewhere = Validator {
        url: "http://elsewhere/".into(),
        ..kept
    };
    let (_, third) = f.execute_with(&p, Some(&elsewhere)).await;
    assert!(!third.not_modified);
    assert!(s.requests()[3].header("if-none-match").is_none());
}

#[tokio::test]
async fn github_status_cap_is_permanent_and_explained() {
    let s = stub(|_| {
        json(
            422,
            "{\"message\":\"Validation Failed\",\"errors\":[{\"resource\":\"Status\",\"code\":\"custom\",\"message\":\"This SHA and context has reached the maximum number of statuses.\"}]}",
        )
    })
    .await;
    let f = forge(ForgeKind::GitHub, &format!("{}/o/r", s.base), "t");
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
    assert_eq!(f.execute(&p).await.unwrap(), Outcome::AlreadyInState);
    assert_eq!(s.requests()[1].header("private-token"), Some("glpat"));
    // Without the read: one request, the same answer.
    let (result, exchange) = f.execute_with(&p.without_read(), None).await;
    assert_eq!(result.unwrap(), Outcome::AlreadyInState);
    assert_eq!((exchange.reads, exchange.writes), (0, 1));
    assert_eq!(s.requests().len(), 3);
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

// === Gitea (§3.3, §7.7) ===

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
    let s = |status: &str, context: &str, description: &str| gitea::CommitStatus {
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
        assert_eq!(gitea::duplicate(&existing, &w), want, "{existing:?} {w:?}");
    }
    // The answer's state field is `status`; a `state` field is not read.
    let f = gitea::Gitea::new("https://g.example.com/o/r", &creds("t")).unwrap();
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
    // §7.7's stub: only the two list paths and the two create paths exist.
    let s = stub(|r| {
        let known = [GITEA_SHA, GITEA_ORIGIN_SHA];
        let path = r.target.split('?').next().unwrap_or_default();
        for sha in known {
            if path == format!("/api/v1/repos/foo/bar/commits/{sha}/statuses") {
                return json(200, "[]");
            }
            if path == format!("/api/v1/repos/foo/bar/statuses/{sha}") {
                return json(201, "{}");
            }
        }
        json(404, "{\"message\":\"The target couldn't be found.\"}")
    })
    .await;
    let f = forge(ForgeKind::Gitea, &format!("{}/foo/bar", s.base), "foobar");
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
        requests[3].target,
        format!("/api/v1/repos/foo/bar/statuses/{GITEA_ORIGIN_SHA}")
    );
    for r in &requests {
        assert_eq!(r.header("authorization"), Some("token foobar"));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
}

// === Bitbucket Server (§3.5, §7.9) ===

const BBS_ADDRESS: &str = "https://example.com:7990/scm/projectfoo/repobar.git";
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

/// §7.9's request-validation table, against a stub that answers like Flux's test server.
#[tokio::test]
async fn bitbucket_server_request_validation() {
    let key = sha1_hex(BBS_ID);
    let builds = |sha: &str| {
        format!("/rest/api/latest/projects/projectfoo/repos/repobar/commits/{sha}/builds")
    };
    let unrelated =
        "{\"key\":\"TEST2\",\"state\":\"SUCCESSFUL\",\"name\":\"x\",\"description\":\"y\"}";
    let accepting = |r: &Recorded| match r.method.as_str() {
        "GET" => json(
            200,
            "{\"key\":\"TEST2\",\"state\":\"SUCCESSFUL\",\"name\":\"x\",\"description\":\"y\"}",
        ),
        _ => Some((204, vec![], String::new())),
    };
    let check_common = |r: &Recorded| {
        assert_eq!(r.header("x-atlassian-token"), Some("no-check"));
        assert_eq!(r.header("x-requested-with"), Some("XMLHttpRequest"));
    };
    let bbs = |s: &Stub, credentials: Credentials| {
        Forge::new_with_env(
            config(
                ForgeKind::BitbucketServer,
                &format!("{}/scm/projectfoo/repobar.git", s.base),
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
    let s = stub(accepting).await;
    let f = bbs(&s, creds("goodtoken"));
    assert_eq!(
        f.execute(&plan(&f, &bbs_event(&rev))).await.unwrap(),
        Outcome::Posted
    );
    let r = s.requests();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].method, "GET");
    assert_eq!(r[0].target, format!("{}?key={key}", builds(SHA)));
    assert_eq!(r[0].body, "");
    assert_eq!(r[1].method, "POST");
    assert_eq!(r[1].target, builds(SHA));
    assert_eq!(r[1].header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&r[1].body).unwrap();
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

    // originRevision wins.
    let s = stub(accepting).await;
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
        s.requests()[1].target,
        builds("e7c17dd8b8384bbc84b7e7385394cb7f48332b2d")
    );

    // Basic auth, info then error.
    for (severity, state) in [("info", "SUCCESSFUL"), ("error", "FAILED")] {
        let s = stub(accepting).await;
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
        let body: serde_json::Value = serde_json::from_str(&r[1].body).unwrap();
        assert_eq!(body["state"], state);
        check_common(&r[0]);
    }

    // GET 200 with an empty body.
    let s = stub(|r| match r.method.as_str() {
        "GET" => Some((200, vec![], String::new())),
        _ => Some((204, vec![], String::new())),
    })
    .await;
    let f = bbs(&s, creds("goodtoken"));
    let err = f.execute(&plan(&f, &bbs_event(&rev))).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "could not get existing commit status: could not unmarshal json response body for duplicate commit status: unexpected end of JSON input"
    );
    assert_eq!(err.retry(), Retry::No);

    // GET 400.
    let s = stub(|_| json(400, "{\"errors\":[{\"message\":\"bad\"}]}")).await;
    let f = bbs(&s, creds("goodtoken"));
    let err = f.execute(&plan(&f, &bbs_event(&rev))).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "could not get existing commit status: failed api call to check duplicate commit status: 400 - Bad Request"
    );
    assert_eq!((err.status(), err.retry()), (Some(400), Retry::No));

    // POST 401.
    let s = stub(move |r| match r.method.as_str() {
        "GET" => json(200, unrelated),
        _ => json(
            401,
            "{\"errors\":[{\"message\":\"Authentication failed.\"}]}",
        ),
    })
    .await;
    let f = bbs(&s, creds("goodtoken"));
    let err = f.execute(&plan(&f, &bbs_event(&rev))).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "could not post build status: could not post build commit status: 401 - Unauthorized"
    );
    assert_eq!((err.status(), err.retry()), (Some(401), Retry::No));

    // An identical existing status: no POST (which would get a 401).
    let existing = format!(
        "{{\"name\":\"kustomization/hello-world [reason]\",\"description\":\"reason\",\"key\":\"{key}\",\"state\":\"SUCCESSFUL\"}}"
    );
    let s = stub(move |r| match r.method.as_str() {
        "GET" => json(200, &existing),
        _ => json(401, ""),
    })
    .await;
    let f = bbs(&s, creds("goodtoken"));
    assert_eq!(
        f.execute(&plan(&f, &bbs_event(&rev))).await.unwrap(),
        Outcome::AlreadySet
    );
    assert_eq!(s.requests().len(), 1);

    // 404 and a bodiless 204 both mean "none yet".
    for status in [404, 204] {
        let s = stub(move |r| match r.method.as_str() {
            "GET" => Some((status, vec![], String::new())),
            _ => Some((204, vec![], String::new())),
        })
        .await;
        let f = bbs(&s, creds("goodtoken"));
        assert_eq!(
            f.execute(&plan(&f, &bbs_event(&rev))).await.unwrap(),
            Outcome::Posted,
            "{status}"
        );
    }

    // No answer at all: a transport error in Flux's wrapper, retryable.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
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
    let s = stub(|r| {
        let echoed = r.header("authorization").unwrap_or_default().to_owned();
        json(
            500,
            &format!("{{\"errors\":[{{\"message\":\"{echoed} s3cr3t-pw\"}}]}}"),
        )
    })
    .await;
    let f = Forge::new_with_env(
        config(
            ForgeKind::BitbucketServer,
            &format!("{}/scm/P/r.git", s.base),
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
            !text.contains(basic_auth("user", "s3cr3t-pw").trim_start_matches("Basic ")),
            "{text}"
        );
    }
}

// === target URL and description overrides ===

#[test]
fn description_override() {
    let m = revision_meta();
    let custom = "Deployed to <prod> & checked";
    for (kind, address, token, field) in [
        (
            ForgeKind::GitHub,
            "https://github.com/o/r",
            "t",
            "description",
        ),
        (
            ForgeKind::GitLab,
            "https://gitlab.com/o/r",
            "t",
            "description",
        ),
        (
            ForgeKind::Gitea,
            "https://gitea.example.com/o/r",
            "t",
            "description",
        ),
        (
            ForgeKind::Bitbucket,
            "https://bitbucket.org/o/r",
            "u:p",
            "description",
        ),
        (ForgeKind::BitbucketServer, BBS_ADDRESS, "t", "description"),
        (
            ForgeKind::AzureDevOps,
            "https://dev.azure.com/o/p/_git/r",
            "t",
            "description",
        ),
    ] {
        let f = forge(kind, address, token);
        let p = plan(
            &f,
            &StatusEvent {
                description: Some(custom),
                ..event(&m)
            },
        );
        assert_eq!(p.description, custom, "{kind}");
        let body: serde_json::Value =
            serde_json::from_slice(p.write.body.as_deref().unwrap()).unwrap();
        assert_eq!(body[field], custom, "{kind}");
        // Empty means "not set".
        let p = plan(
            &f,
            &StatusEvent {
                description: Some(""),
                ..event(&m)
            },
        );
        assert_eq!(p.description, "reconciliation succeeded", "{kind}");
    }
    // Bitbucket Server's name carries the description.
    let p = plan(
        &forge(ForgeKind::BitbucketServer, BBS_ADDRESS, "t"),
        &StatusEvent {
            description: Some("deployed"),
            ..event(&m)
        },
    );
    assert!(
        p.write
            .body_text()
            .contains("\"name\":\"kustomization/flux-system [deployed]\"")
    );
    // Limits: GitHub 140, GitLab 255, Bitbucket Server 255; the others none.
    let long = "d".repeat(1000);
    for (kind, address, token, max) in [
        (ForgeKind::GitHub, "https://github.com/o/r", "t", 140),
        (ForgeKind::GitLab, "https://gitlab.com/o/r", "t", 255),
        (ForgeKind::BitbucketServer, BBS_ADDRESS, "t", 255),
        (ForgeKind::Gitea, "https://gitea.example.com/o/r", "t", 1000),
        (
            ForgeKind::Bitbucket,
            "https://bitbucket.org/o/r",
            "u:p",
            1000,
        ),
        (
            ForgeKind::AzureDevOps,
            "https://dev.azure.com/o/p/_git/r",
            "t",
            1000,
        ),
    ] {
        let p = plan(
            &forge(kind, address, token),
            &StatusEvent {
                description: Some(&long),
                ..event(&m)
            },
        );
        assert_eq!(p.description.chars().count(), max, "{kind}");
    }
}

#[test]
fn target_url_bodies() {
    let m = revision_meta();
    let link = "https://ci.example.com/run/1?a=<b>&c";
    let ev = StatusEvent {
        target_url: Some(link),
        ..event(&m)
    };
    let body = |kind, address: &str, token: &str| {
        plan(&forge(kind, address, token), &ev).write.body_text()
    };
    assert_eq!(
        body(ForgeKind::GitHub, "https://github.com/o/r", "t"),
        format!(
            "{{\"state\":\"success\",\"target_url\":\"{link}\",\"description\":\"reconciliation succeeded\",\"context\":\"{ID}\"}}\n"
        )
    );
    let escaped = "https://ci.example.com/run/1?a=\\u003cb\\u003e\\u0026c";
    assert_eq!(
        body(ForgeKind::GitLab, "https://gitlab.com/o/r", "t"),
        format!(
            "{{\"state\":\"success\",\"name\":\"{ID}\",\"target_url\":\"{escaped}\",\"description\":\"reconciliation succeeded\"}}"
        )
    );
    assert_eq!(
        body(ForgeKind::Gitea, "https://gitea.example.com/o/r", "t"),
        format!(
            "{{\"state\":\"success\",\"target_url\":\"{escaped}\",\"description\":\"reconciliation succeeded\",\"context\":\"{ID}\"}}"
        )
    );
    let key = sha1_hex(ID);
    assert_eq!(
        body(ForgeKind::Bitbucket, "https://bitbucket.org/o/r", "u:p"),
        format!(
            "{{\"key\":\"{key}\",\"url\":\"{escaped}\",\"state\":\"SUCCESSFUL\",\"name\":\"kustomization/flux-system\",\"description\":\"reconciliation succeeded\"}}"
        )
    );
    assert_eq!(
        body(ForgeKind::BitbucketServer, BBS_ADDRESS, "t"),
        format!(
            "{{\"description\":\"reconciliation succeeded\",\"key\":\"{key}\",\"name\":\"kustomization/flux-system [reconciliation succeeded]\",\"state\":\"SUCCESSFUL\",\"url\":\"{escaped}\"}}\n"
        )
    );
    assert_eq!(
        body(
            ForgeKind::AzureDevOps,
            "https://dev.azure.com/o/p/_git/r",
            "t"
        ),
        format!(
            "{{\"context\":{{\"genre\":\"fluxcd\",\"name\":\"{ID}\"}},\"description\":\"reconciliation succeeded\",\"state\":\"succeeded\",\"targetUrl\":\"{escaped}\"}}"
        )
    );
    // Blank is "not set": the body is Flux's.
    let blank = StatusEvent {
        target_url: Some("  "),
        ..event(&m)
    };
    let f = forge(ForgeKind::GitHub, "https://github.com/o/r", "t");
    assert_eq!(
        plan(&f, &blank).write.body_text(),
        plan(&f, &event(&m)).write.body_text()
    );
    // The link is part of what was written.
    assert_ne!(
        plan(&f, &ev).fingerprint(),
        plan(&f, &event(&m)).fingerprint()
    );
}

#[test]
fn target_url_rules() {
    let m = revision_meta();
    let refused = |kind, address: &str, token: &str, link: &str| {
        forge(kind, address, token)
            .plan(
                &StatusEvent {
                    target_url: Some(link),
                    ..event(&m)
                },
                ProgressingMode::Pending,
            )
            .err()
            .map(|e| e.to_string())
    };
    let gitlab = |link: &str| refused(ForgeKind::GitLab, "https://gitlab.com/o/r", "t", link);
    let at_limit = format!("https://ci.example.com/{}", "x".repeat(255 - 23));
    assert_eq!(at_limit.len(), 255);
    assert_eq!(gitlab(&at_limit), None);
    assert_eq!(
        gitlab(&format!("{at_limit}y")),
        Some("target URL is not accepted by gitlab: it is 256 characters long, at most 255 are allowed".into())
    );
    assert_eq!(
        gitlab("/relative/path"),
        Some("target URL is not accepted by gitlab: \"/relative/path\" is not an absolute http(s) URL".into())
    );
    assert!(gitlab("ftp://ci.example.com/x").is_some());
    let bitbucket = |link: &str| {
        refused(
            ForgeKind::Bitbucket,
            "https://bitbucket.org/o/r",
            "u:p",
            link,
        )
    };
    assert!(bitbucket("ci/run/1").is_some());
    assert_eq!(bitbucket("http://ci.example.com/run/1"), None);
    // Forges without rules take any text.
    assert_eq!(
        refused(ForgeKind::GitHub, "https://github.com/o/r", "t", "ci/run/1"),
        None
    );
    assert_eq!(
        refused(
            ForgeKind::Gitea,
            "https://g.example.com/o/r",
            "t",
            "ci/run/1"
        ),
        None
    );
}

// === GitHub App: construction (§7.5) ===

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
