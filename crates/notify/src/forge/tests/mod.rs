//! Tests of the shared flow (plan, states, limits, fingerprints, overrides) and the helpers
//! every forge's tests use; each forge's own tests (Flux's test vectors, the worked example of
//! the reference, `execute` against testkit's contract-checking stub of that forge) live in
//! the file named after it, and `network` tests what any forge's exchange does on the wire.

mod azure_devops;
mod bitbucket;
mod bitbucket_server;
mod gitea;
mod github;
mod gitlab;
mod network;

use std::collections::BTreeMap;
use std::time::Duration;

use testkit::{
    ForgeKind as StubKind, Matcher, RecordedRequest, ScriptedResponse, StubForge, StubOptions,
};

use super::*;
use crate::{Credentials, NetworkConfig, ProxyConfig, Secret, TlsConfig};

const SHA: &str = "5394cb7f48332b2de7c17dd8b8384bbc84b7e738";
const ID: &str = "kustomization/flux-system/0c9c2e41";
/// A Bitbucket Server repository address, as Flux's tests write it.
const BBS_ADDRESS: &str = "https://example.com:7990/scm/projectfoo/repobar.git";

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

fn network(timeout: Duration) -> NetworkConfig {
    NetworkConfig {
        timeout,
        ..NetworkConfig::default()
    }
}

/// A GitHub Enterprise Server forge on the GitHub stub (API under `/api/v3`).
fn ghe(stub: &StubForge, token: &str, network: NetworkConfig) -> Forge {
    let config = ForgeConfig {
        kind: ForgeKind::GitHub,
        address: format!("{}/o/r", stub.base_url()),
        credentials: creds(token),
        network,
    };
    Forge::new_with_env(config, &ClientCache::new(), no_env).unwrap()
}

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

// === stubs ===

/// A contract-checking stub of `kind` on loopback.
async fn stub(kind: StubKind) -> StubForge {
    StubForge::start(kind, StubOptions::default()).await
}

/// The request target as sent: the raw path and query.
fn target(r: &RecordedRequest) -> String {
    if r.query.is_empty() {
        r.path.clone()
    } else {
        format!("{}?{}", r.path, r.query)
    }
}

/// Every request the stub saw followed the forge's published contract.
fn assert_contract(stub: &StubForge) {
    let violations = stub.violations();
    assert!(violations.is_empty(), "{violations:#?}");
}

/// A scripted JSON answer from a JSON text.
fn json(status: u16, body: &str) -> ScriptedResponse {
    ScriptedResponse::status(status)
        .with_header("content-type", "application/json")
        .with_body(body)
}

/// A loopback port nothing listens on (any more).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The next request, whatever its method and path, gets `response`.
fn answer_next(stub: &StubForge, response: ScriptedResponse) {
    stub.push_response(Matcher::any_method(".*"), response);
}
