//! The GitHub stub's App API over real loopback HTTP: JWTs checked against the App's key and
//! GitHub's claim rules, installation lookups by owner, numbered tokens with their lifetime,
//! and nothing of it served until a test asks for it.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::call;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use testkit::github_app::{APP_CLIENT_ID, APP_ID, APP_KEY};
use testkit::stub::{ForgeKind, Matcher, ScriptedResponse, StubForge, StubOptions};

fn jwt(issuer: &str, key: &str, iat_ago: u64, lifetime: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let iat = now - iat_ago;
    let claims = json!({"iat": iat, "exp": iat + lifetime, "iss": issuer});
    let key = EncodingKey::from_rsa_pem(key.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn app_stub() -> StubForge {
    let stub = StubForge::start(ForgeKind::GitHub, StubOptions::default()).await;
    stub.serve_github_app(&[("acme", 11)], &[("octocat", 22)]);
    stub
}

#[tokio::test]
async fn lookups_and_tokens_for_a_valid_jwt() {
    let stub = app_stub().await;
    let auth = bearer(&jwt(APP_ID, APP_KEY, 30, 120));
    let headers = [
        ("authorization", auth.as_str()),
        ("accept", "application/vnd.github+json"),
    ];
    let org = call(
        stub.addr(),
        "GET",
        "/orgs/acme/installation",
        &headers,
        None,
    )
    .await;
    assert_eq!(org.status, 200);
    assert_eq!(org.json()["id"], 11);
    let user = call(
        stub.addr(),
        "GET",
        "/users/octocat/installation",
        &headers,
        None,
    )
    .await;
    assert_eq!(user.json()["id"], 22);
    let nobody = call(
        stub.addr(),
        "GET",
        "/orgs/octocat/installation",
        &headers,
        None,
    )
    .await;
    assert_eq!(nobody.status, 404);
    assert_eq!(nobody.json()["message"], "Not Found");

    stub.set_token_lifetime(Duration::from_secs(600));
    let path = "/app/installations/11/access_tokens";
    let first = call(stub.addr(), "POST", path, &headers, None).await;
    assert_eq!(first.status, 201);
    let body = first.json();
    assert_eq!(body["token"], "ghs_installation1");
    let expires = body["expires_at"].as_str().unwrap();
    assert_eq!(expires.len(), 20, "{expires}");
    assert!(expires.ends_with('Z'), "{expires}");
    let second = call(stub.addr(), "POST", path, &headers, None).await;
    assert_eq!(second.json()["token"], "ghs_installation2");
    assert_eq!(stub.tokens_issued(), 2);

    let calls = stub.app_calls();
    assert_eq!(calls.len(), 5, "{calls:?}");
    assert!(calls.iter().all(|c| c.jwt_valid));
    assert_eq!(calls[3].path, path);
    assert_eq!(
        calls[0].accept.as_deref(),
        Some("application/vnd.github+json")
    );
    // App calls are outside the commit-status contract, and not held against it.
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
    assert_eq!(stub.requests().len(), 5);
}

#[tokio::test]
async fn bad_jwts_are_refused() {
    let stub = app_stub().await;
    let other_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
        .unwrap()
        .serialize_pem();
    let path = "/app/installations/11/access_tokens";
    for auth in [
        None,
        Some(bearer(&jwt(APP_ID, &other_key, 30, 120))),
        Some(bearer(&jwt("999", APP_KEY, 30, 120))),
        // Longer than GitHub's ten minutes.
        Some(bearer(&jwt(APP_ID, APP_KEY, 30, 3600))),
        // Already expired.
        Some(bearer(&jwt(APP_ID, APP_KEY, 600, 120))),
    ] {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let answer = call(stub.addr(), "POST", path, &headers, None).await;
        assert_eq!(answer.status, 401, "{auth:?}");
        assert_eq!(
            answer.json()["message"],
            "A JSON web token could not be decoded"
        );
    }
    // The client ID is an issuer GitHub accepts too.
    let auth = bearer(&jwt(APP_CLIENT_ID, APP_KEY, 30, 120));
    let ok = call(
        stub.addr(),
        "POST",
        path,
        &[("authorization", auth.as_str())],
        None,
    )
    .await;
    assert_eq!(ok.status, 201);
    assert_eq!(stub.tokens_issued(), 1);
    let valid: Vec<bool> = stub.app_calls().iter().map(|c| c.jwt_valid).collect();
    assert_eq!(valid, [false, false, false, false, false, true]);
}

#[tokio::test]
async fn scripted_answers_come_first_and_nothing_is_served_unasked() {
    let plain = StubForge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let auth = bearer(&jwt(APP_ID, APP_KEY, 30, 120));
    let headers = [("authorization", auth.as_str())];
    let answer = call(
        plain.addr(),
        "GET",
        "/orgs/acme/installation",
        &headers,
        None,
    )
    .await;
    assert_eq!(answer.status, 404);
    assert_eq!(plain.tokens_issued(), 0);
    assert!(plain.app_calls().is_empty());
    assert!(!plain.violations().is_empty(), "not a commit-status call");

    let stub = app_stub().await;
    stub.push_response(
        Matcher::post("/access_tokens$"),
        ScriptedResponse::json(500, &json!({"message": "Server Error"})),
    );
    let path = "/app/installations/11/access_tokens";
    let failed = call(stub.addr(), "POST", path, &headers, None).await;
    assert_eq!(failed.status, 500);
    let next = call(stub.addr(), "POST", path, &headers, None).await;
    assert_eq!(next.json()["token"], "ghs_installation1");
}
