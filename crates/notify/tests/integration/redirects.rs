//! Redirects from a forge: writes never follow one, reads follow only HTTPS hops on their own
//! origin, and no credential header (`Authorization`, GitLab's `PRIVATE-TOKEN`) ever reaches a
//! recording server on another origin.

use notify::{ClientCache, ForgeKind, NetworkConfig, Outcome, Retry, TlsConfig};
use testkit::{ForgeKind as Stub, Matcher, ScriptedResponse, StubForge, StubOptions, TestPki};

use crate::support::{assert_secret_free, event, forge, forge_with, metadata, plan, token};

const TOKEN: &str = "glpat-RedirectMustNotLeak";

/// The forge (one of ours) and the server on another origin it points to.
async fn pair(kind: Stub) -> (StubForge, StubForge) {
    (
        StubForge::start(kind, StubOptions::default()).await,
        StubForge::start(kind, StubOptions::default()).await,
    )
}

/// Nothing at all reached the other origin, so no credential either.
fn assert_untouched(other: &StubForge) {
    let seen = other.requests();
    assert!(seen.is_empty(), "the other origin was called: {seen:?}");
}

fn methods(stub: &StubForge) -> Vec<String> {
    stub.requests().iter().map(|r| r.method.clone()).collect()
}

#[tokio::test]
async fn a_write_answered_with_a_redirect_fails_and_is_not_replayed() {
    for (forge_kind, stub_kind) in [
        (ForgeKind::GitLab, Stub::GitLab),
        (ForgeKind::GitHub, Stub::GitHub),
    ] {
        for status in [301, 302, 303, 307, 308] {
            let (stub, other) = pair(stub_kind).await;
            let location = format!("{}/elsewhere?private_token={TOKEN}", other.base_url());
            stub.push_response(
                Matcher::post(".*"),
                ScriptedResponse::status(status).with_header("location", &location),
            );
            let f = forge(forge_kind, format!("{}/o/r", stub.base_url()), token(TOKEN));
            let m = metadata();
            let err = f.execute(&plan(&f, &event(&m))).await.unwrap_err();
            assert_eq!(err.status(), Some(status), "{err}");
            assert_eq!(err.retry(), Retry::No, "{err}");
            let text = err.to_string();
            assert!(
                text.contains(&format!(
                    "redirect to {}/elsewhere not followed (a write never follows a redirect)",
                    other.base_url()
                )),
                "{text}"
            );
            assert_secret_free(&err, &[TOKEN]);
            assert_untouched(&other);
            // One read, one write: a 302 on a POST is not turned into a GET.
            assert_eq!(methods(&stub), ["GET", "POST"], "{forge_kind} {status}");
            assert!(stub.statuses("o/r", crate::support::SHA).is_empty());
        }
    }
}

#[tokio::test]
async fn a_read_redirected_to_another_origin_is_not_followed() {
    for status in [301, 302, 307, 308] {
        let (stub, other) = pair(Stub::GitLab).await;
        stub.push_response(
            Matcher::get(".*"),
            ScriptedResponse::status(status).with_header(
                "location",
                &format!("{}/api/v4/projects/o%2Fr", other.base_url()),
            ),
        );
        let f = forge(
            ForgeKind::GitLab,
            format!("{}/o/r", stub.base_url()),
            token(TOKEN),
        );
        let m = metadata();
        let err = f.execute(&plan(&f, &event(&m))).await.unwrap_err();
        assert_eq!(
            (err.status(), err.retry()),
            (Some(status), Retry::No),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("not followed (only redirects to HTTPS on the same origin are followed)"),
            "{err}"
        );
        assert_untouched(&other);
        assert_eq!(
            methods(&stub),
            ["GET"],
            "nothing is written after a failed read"
        );
    }
}

#[tokio::test]
async fn reads_follow_https_redirects_on_their_own_origin_only() {
    let pki = TestPki::new();
    let tls = |pki: &TestPki| StubOptions {
        tls: Some(pki.server_tls()),
        ..StubOptions::default()
    };
    let stub = StubForge::start(Stub::GitLab, tls(&pki)).await;
    let other = StubForge::start(Stub::GitLab, tls(&pki)).await;
    let network = NetworkConfig {
        tls: Some(TlsConfig {
            ca_pem: Some(pki.ca_cert_pem.clone().into_bytes()),
            ..TlsConfig::default()
        }),
        ..NetworkConfig::default()
    };
    let clients = ClientCache::new();
    let f = forge_with(
        ForgeKind::GitLab,
        format!("{}/o/r", stub.base_url()),
        token(TOKEN),
        network,
        &clients,
    );
    let m = metadata();
    let p = plan(&f, &event(&m));
    let read_url = p.read.as_ref().unwrap().url.clone();
    let path = read_url.trim_start_matches(&stub.base_url()).to_owned();

    // Same origin, relative and absolute Location: followed with the credential.
    stub.push_response(
        Matcher::get(".*"),
        ScriptedResponse::status(301).with_header("location", &path),
    );
    stub.push_response(
        Matcher::get(".*"),
        ScriptedResponse::status(307).with_header("location", &read_url),
    );
    assert_eq!(f.execute(&p).await.unwrap(), Outcome::Posted);
    let seen = stub.requests();
    assert_eq!(methods(&stub), ["GET", "GET", "GET", "POST"]);
    assert!(
        seen.iter()
            .all(|r| r.header("private-token") == Some(TOKEN)),
        "{seen:?}"
    );

    // Another HTTPS origin, even one trusted by the same CA: not followed.
    stub.clear_requests();
    stub.push_response(
        Matcher::get(".*"),
        ScriptedResponse::status(302).with_header(
            "location",
            &read_url.replace(&stub.base_url(), &other.base_url()),
        ),
    );
    let err = f.execute(&p).await.unwrap_err();
    assert_eq!(err.status(), Some(302), "{err}");
    assert_untouched(&other);

    // The same host over plain HTTP is another origin too.
    let downgrade = read_url.replacen("https://", "http://", 1);
    stub.push_response(
        Matcher::get(".*"),
        ScriptedResponse::status(302).with_header("location", &downgrade),
    );
    assert_eq!(f.execute(&p).await.unwrap_err().status(), Some(302));

    // A loop ends after a bounded number of hops, as a failure.
    stub.clear_requests();
    for _ in 0..20 {
        stub.push_response(
            Matcher::get(".*"),
            ScriptedResponse::status(302).with_header("location", &path),
        );
    }
    let err = f.execute(&p).await.unwrap_err();
    assert_eq!(err.status(), Some(302), "{err}");
    assert_eq!(stub.requests().len(), 6, "the request and five redirects");
    stub.clear_scripted();
}
