//! What every forge's exchange does on the wire, shown with GitHub's stub: deadlines, refused
//! connections, undecodable answers, conditional reads, the provider proxy and custom trust.

use super::*;

#[tokio::test]
async fn timeout_is_retryable_and_says_so() {
    let s = stub(StubKind::GitHub).await;
    // Answered long after the deadline.
    answer_next(&s, json(200, "[]").with_delay(Duration::from_secs(3600)));
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
    assert_eq!(s.requests().len(), 1);
}

#[tokio::test]
async fn conditional_read_uses_the_validated_answer_on_304() {
    let existing = "[{\"context\":\"kustomization/flux-system/0c9c2e41\",\"state\":\"success\",\"description\":\"reconciliation succeeded\"}]";
    let s = stub(StubKind::GitHub).await;
    let statuses = "/statuses/[0-9a-f]+$";
    let listed = "/commits/[0-9a-f]+/statuses$";
    // Each request spends one: the read leaves 42, the write 41.
    s.set_rate_limit(
        5000,
        43,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    s.push_response(
        Matcher::get(listed),
        json(200, "[]").with_header("ETag", "\"v1\""),
    );
    s.push_response(
        Matcher::get(listed),
        ScriptedResponse::status(304).with_header("ETag", "\"v1\""),
    );
    s.push_response(Matcher::get(listed), json(200, "[]"));
    // Writes leave the listed statuses as they are, so that reads are answered as scripted.
    for _ in 0..2 {
        s.push_response(Matcher::post(statuses), json(201, "{}"));
    }
    let f = forge(ForgeKind::GitHub, &format!("{}/o/r", s.base_url()), "t");
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
    assert_contract(&s);
}

#[tokio::test]
async fn decode_error_is_permanent() {
    let s = stub(StubKind::GitHub).await;
    answer_next(&s, json(200, "not json"));
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
    let port = closed_port();
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
    let s = stub(StubKind::GitHub).await;
    // Anything without `Proxy-Authorization: Basic base64(puser:ppass)` is refused (407).
    let proxy = testkit::ForwardProxy::start(testkit::ProxyOptions {
        require_basic_auth: Some(("puser".into(), "ppass".into())),
    })
    .await;
    let network = NetworkConfig {
        proxy: Some(ProxyConfig {
            url: proxy.url(),
            username: Some("puser".into()),
            password: Some(Secret::new("ppass")),
        }),
        ..NetworkConfig::default()
    };
    let f = ghe(&s, "t", network);
    let m = revision_meta();
    assert_eq!(
        f.execute(&plan(&f, &event(&m))).await.unwrap(),
        Outcome::Posted
    );
    let forwarded = proxy.forwarded();
    assert_eq!(forwarded.len(), 2, "{forwarded:?}");
    let base = s.base_url();
    assert!(
        forwarded[0].starts_with(&format!("{base}/api/v3/repos/o/r/commits/")),
        "{forwarded:?}"
    );
    assert_eq!(
        forwarded[1],
        format!("{base}/api/v3/repos/o/r/statuses/{SHA}")
    );
    assert_eq!(
        proxy.rejected(),
        0,
        "every request carried the proxy's credentials"
    );
    assert_eq!(s.requests().len(), 2);
    assert_contract(&s);
}

#[tokio::test]
async fn custom_ca_replaces_the_trust_roots() {
    let pki = testkit::TestPki::new();
    let s = StubForge::start(
        StubKind::GitHub,
        StubOptions {
            tls: Some(pki.server_tls()),
            ..StubOptions::default()
        },
    )
    .await;
    let m = revision_meta();
    let trusting = NetworkConfig {
        tls: Some(TlsConfig {
            ca_pem: Some(pki.ca_cert_pem.clone().into_bytes()),
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
