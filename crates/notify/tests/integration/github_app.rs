//! GitHub App authentication over real HTTP: installation tokens obtained with a verified JWT,
//! cached and shared across forges, replaced before expiry and after a refusal, the owner
//! lookup (organisation, then user), and the provider proxy carrying the App calls.

use std::time::Duration;

use notify::{
    ClientCache, Credentials, Forge, ForgeKind, GitHubApp, NetworkConfig, Outcome, ProxyConfig,
    Retry, Secret, StatusEvent,
};
use testkit::{ForgeKind as Stub, ForwardProxy, ProxyOptions, StubForge, StubOptions};

use testkit::github_app::{APP_CLIENT_ID, APP_ID, APP_KEY};

use crate::support::{assert_contract, assert_secret_free, event, forge_with, metadata, plan};

/// A GitHub stub serving the App API, apart from the one the statuses go to (as
/// `githubAppBaseURL` may name another host).
async fn app_server(orgs: &[(&str, u64)], users: &[(&str, u64)]) -> StubForge {
    let server = StubForge::start(Stub::GitHub, StubOptions::default()).await;
    server.serve_github_app(orgs, users);
    server
}

fn app(server: &StubForge, installation_id: Option<&str>, owner: Option<&str>) -> Credentials {
    Credentials {
        github_app: Some(GitHubApp {
            app_id: APP_ID.into(),
            installation_id: installation_id.map(Into::into),
            installation_owner: owner.map(Into::into),
            private_key: Secret::new(APP_KEY),
            base_url: Some(server.base_url()),
        }),
        ..Credentials::default()
    }
}

fn github(stub: &StubForge, credentials: Credentials, clients: &ClientCache) -> Forge {
    forge_with(
        ForgeKind::GitHub,
        format!("{}/o/r", stub.base_url()),
        credentials,
        NetworkConfig::default(),
        clients,
    )
}

/// Posts a status with a description of its own, so every delivery writes.
async fn deliver(forge: &Forge, n: usize) -> Outcome {
    let m = metadata();
    let description = format!("delivery {n}");
    let ev = StatusEvent {
        description: Some(&description),
        ..event(&m)
    };
    forge.execute(&plan(forge, &ev)).await.unwrap()
}

fn bearer_tokens(stub: &StubForge) -> Vec<String> {
    stub.requests()
        .iter()
        .map(|r| r.header("authorization").unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn one_token_for_every_forge_of_the_app() {
    let server = app_server(&[], &[]).await;
    let stub = StubForge::start(Stub::GitHub, StubOptions::default()).await;
    let clients = ClientCache::new();
    let a = github(&stub, app(&server, Some("77"), None), &clients);
    let b = github(&stub, app(&server, Some("77"), None), &clients);
    assert_eq!(deliver(&a, 1).await, Outcome::Posted);
    assert_eq!(deliver(&a, 2).await, Outcome::Posted);
    assert_eq!(deliver(&b, 3).await, Outcome::Posted);
    assert_eq!(server.tokens_issued(), 1);
    let calls = server.app_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        (calls[0].method.as_str(), calls[0].path.as_str()),
        ("POST", "/app/installations/77/access_tokens")
    );
    assert!(calls[0].jwt_valid);
    assert_eq!(
        calls[0].accept.as_deref(),
        Some("application/vnd.github+json")
    );
    assert!(
        bearer_tokens(&stub)
            .iter()
            .all(|t| t == "Bearer ghs_installation1"),
        "{:?}",
        bearer_tokens(&stub)
    );
    assert_eq!(stub.requests().len(), 6);
    assert_contract(&stub);

    // Another installation of the same App is another token.
    let c = github(&stub, app(&server, Some("78"), None), &clients);
    assert_eq!(deliver(&c, 4).await, Outcome::Posted);
    assert_eq!(server.tokens_issued(), 2);
    // So is the same App in another cache (another controller).
    let d = github(&stub, app(&server, Some("77"), None), &ClientCache::new());
    assert_eq!(deliver(&d, 5).await, Outcome::Posted);
    assert_eq!(server.tokens_issued(), 3);
}

#[tokio::test]
async fn tokens_close_to_expiry_are_replaced() {
    let server = app_server(&[], &[]).await;
    let stub = StubForge::start(Stub::GitHub, StubOptions::default()).await;
    let forge = github(&stub, app(&server, Some("77"), None), &ClientCache::new());
    // Within the refresh margin: good for the delivery at hand, not kept.
    server.set_token_lifetime(Duration::from_secs(4 * 60));
    deliver(&forge, 1).await;
    deliver(&forge, 2).await;
    assert_eq!(server.tokens_issued(), 2);
    server.set_token_lifetime(Duration::from_secs(3600));
    deliver(&forge, 3).await;
    deliver(&forge, 4).await;
    assert_eq!(server.tokens_issued(), 3);
    let tokens = bearer_tokens(&stub);
    assert_eq!(
        tokens
            .iter()
            .filter(|t| *t == "Bearer ghs_installation3")
            .count(),
        4,
        "{tokens:?}"
    );
    assert_contract(&stub);
}

#[tokio::test]
async fn a_refused_token_is_replaced_once() {
    let server = app_server(&[], &[]).await;
    let stub = StubForge::start(Stub::GitHub, StubOptions::default()).await;
    let forge = github(&stub, app(&server, Some("77"), None), &ClientCache::new());
    assert_eq!(deliver(&forge, 1).await, Outcome::Posted);
    assert_eq!(server.tokens_issued(), 1);

    // The installation token is revoked: the forge now only accepts the next one.
    stub.require_auth("Bearer ghs_installation2");
    stub.clear_requests();
    assert_eq!(deliver(&forge, 2).await, Outcome::Posted);
    assert_eq!(server.tokens_issued(), 2);
    assert_eq!(
        bearer_tokens(&stub),
        [
            "Bearer ghs_installation1",
            "Bearer ghs_installation2",
            "Bearer ghs_installation2"
        ]
    );
    assert_eq!(stub.requests()[0].method, "GET");
    assert_eq!(stub.requests()[1].method, "GET");

    // Refused again after the refresh: one refresh, then the forge's answer stands.
    stub.require_auth("Bearer never-issued");
    let m = metadata();
    let err = forge.execute(&plan(&forge, &event(&m))).await.unwrap_err();
    assert_eq!(server.tokens_issued(), 3);
    assert_eq!((err.status(), err.retry()), (Some(401), Retry::No));
    assert!(
        err.to_string()
            .starts_with("could not list commit statuses: GET "),
        "{err}"
    );
    assert_secret_free(&err, &["ghs_installation", "PRIVATE KEY"]);
    assert_contract(&stub);
}

#[tokio::test]
async fn installation_found_by_owner() {
    let server = app_server(&[("acme", 11)], &[("octocat", 22)]).await;
    let stub = StubForge::start(Stub::GitHub, StubOptions::default()).await;
    let clients = ClientCache::new();

    let org = github(&stub, app(&server, None, Some("acme")), &clients);
    deliver(&org, 1).await;
    let user = github(&stub, app(&server, None, Some("octocat")), &clients);
    deliver(&user, 2).await;
    let paths: Vec<(String, String)> = server
        .app_calls()
        .into_iter()
        .inspect(|c| assert!(c.jwt_valid, "{c:?}"))
        .map(|c| (c.method, c.path))
        .collect();
    let expected = [
        ("GET", "/orgs/acme/installation"),
        ("POST", "/app/installations/11/access_tokens"),
        ("GET", "/orgs/octocat/installation"),
        ("GET", "/users/octocat/installation"),
        ("POST", "/app/installations/22/access_tokens"),
    ];
    assert_eq!(paths, expected.map(|(m, p)| (m.to_owned(), p.to_owned())));

    let nobody = github(&stub, app(&server, None, Some("nobody")), &clients);
    let m = metadata();
    let err = nobody
        .execute(&plan(&nobody, &event(&m)))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "could not get github app installation token: GET {}/users/nobody/installation: 404 Not Found",
            server.base_url()
        )
    );
    assert_eq!(err.retry(), Retry::No);
    assert_contract(&stub);
}

#[tokio::test]
async fn a_jwt_signed_with_another_key_is_refused() {
    let server = app_server(&[], &[]).await;
    let stub = StubForge::start(Stub::GitHub, StubOptions::default()).await;
    let other_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
        .unwrap()
        .serialize_pem();
    let mut credentials = app(&server, Some("77"), None);
    credentials.github_app.as_mut().unwrap().private_key = Secret::new(other_key);
    let forge = github(&stub, credentials, &ClientCache::new());
    let m = metadata();
    let err = forge.execute(&plan(&forge, &event(&m))).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "could not get github app installation token: POST {}/app/installations/77/access_tokens: 401 A JSON web token could not be decoded",
            server.base_url()
        )
    );
    assert_eq!((err.status(), err.retry()), (Some(401), Retry::No));
    assert!(!server.app_calls()[0].jwt_valid);
    assert!(stub.requests().is_empty(), "nothing reaches the forge");
}

#[tokio::test]
async fn app_calls_go_through_the_provider_proxy() {
    let server = app_server(&[("acme", 11)], &[]).await;
    let stub = StubForge::start(Stub::GitHub, StubOptions::default()).await;
    let proxy = ForwardProxy::start(ProxyOptions::default()).await;
    let forge = forge_with(
        ForgeKind::GitHub,
        format!("{}/o/r", stub.base_url()),
        app(&server, None, Some("acme")),
        NetworkConfig {
            proxy: Some(ProxyConfig {
                url: proxy.url(),
                username: None,
                password: None,
            }),
            ..NetworkConfig::default()
        },
        &ClientCache::new(),
    );
    assert_eq!(deliver(&forge, 1).await, Outcome::Posted);
    let forwarded = proxy.forwarded();
    let base = server.base_url();
    assert_eq!(
        forwarded[..2],
        [
            format!("{base}/orgs/acme/installation"),
            format!("{base}/app/installations/11/access_tokens"),
        ]
    );
    assert_eq!(forwarded.len(), 4, "{forwarded:?}");
    assert_contract(&stub);
}

/// Records what the token cache reports.
#[derive(Default)]
struct Seen(std::sync::Mutex<Vec<String>>);

impl notify::token_cache::TokenCacheObserver for Seen {
    fn event(&self, hit: bool, p: &notify::token_cache::ProviderRef) {
        let kind = if hit { "cache_hit" } else { "cache_miss" };
        self.0
            .lock()
            .unwrap()
            .push(format!("{kind} {}/{}", p.namespace, p.name));
    }
    fn request(&self, ok: bool) {
        self.0.lock().unwrap().push(format!("request {ok}"));
    }
    fn items(&self, n: usize) {
        self.0.lock().unwrap().push(format!("items {n}"));
    }
    fn eviction(&self) {
        self.0.lock().unwrap().push("eviction".into());
    }
}

#[tokio::test]
async fn client_id_as_issuer_and_a_bounded_observed_cache() {
    let server = app_server(&[], &[]).await;
    let stub = StubForge::start(Stub::GitHub, StubOptions::default()).await;
    let seen = std::sync::Arc::new(Seen::default());
    let clients = ClientCache::with_token_cache(
        notify::token_cache::TokenCacheSettings {
            max_size: 1,
            max_duration: Duration::from_secs(3600),
        },
        Some(seen.clone()),
    );
    let by_client_id = |installation: &str, name: &str| {
        let mut c = app(&server, Some(installation), None);
        c.github_app.as_mut().unwrap().app_id = APP_CLIENT_ID.into();
        c.provider = Some(notify::token_cache::ProviderRef {
            namespace: "flux-system".into(),
            name: name.into(),
        });
        c
    };
    let a = github(&stub, by_client_id("77", "a"), &clients);
    assert_eq!(deliver(&a, 1).await, Outcome::Posted);
    assert_eq!(deliver(&a, 2).await, Outcome::Posted);
    assert!(
        server.app_calls().iter().all(|c| c.jwt_valid),
        "{:?}",
        server.app_calls()
    );
    assert_eq!(server.tokens_issued(), 1);
    // A second installation does not fit in a cache of one: the first token is evicted.
    let b = github(&stub, by_client_id("78", "b"), &clients);
    assert_eq!(deliver(&b, 3).await, Outcome::Posted);
    assert_eq!(deliver(&a, 4).await, Outcome::Posted);
    assert_eq!(server.tokens_issued(), 3);
    let log = seen.0.lock().unwrap().join("\n");
    assert_eq!(
        log,
        [
            "cache_miss flux-system/a",
            "items 1",
            "request true",
            "cache_hit flux-system/a",
            "request true",
            "cache_miss flux-system/b",
            "eviction",
            "items 1",
            "request true",
            "cache_miss flux-system/a",
            "eviction",
            "items 1",
            "request true",
        ]
        .join("\n")
    );
    assert_contract(&stub);
    assert!(!log.contains("ghs_"), "{log}");
}
