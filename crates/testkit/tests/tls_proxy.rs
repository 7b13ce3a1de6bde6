//! HTTPS, mTLS and the forwarding proxy, end to end over loopback.

mod common;

use common::{call_tls, request, send_on, tls_connect};
use serde_json::json;
use testkit::pki::TestPki;
use testkit::proxy::{ForwardProxy, ProxyOptions};
use testkit::stub::{ForgeKind, StubForge, StubOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SHA: &str = "5394cb7f48332b2de7c17dd8b8384bbc84b7e738";

fn list_path() -> String {
    format!("/api/v1/repos/o/r/commits/{SHA}/statuses")
}

#[tokio::test]
async fn https_stub_is_trusted_only_with_the_test_ca() {
    let pki = TestPki::new();
    let stub = StubForge::start(
        ForgeKind::Gitea,
        StubOptions {
            tls: Some(pki.server_tls()),
            ..StubOptions::default()
        },
    )
    .await;
    assert!(stub.base_url().starts_with("https://127.0.0.1:"));
    let auth = [("authorization", "token t")];

    let ok = call_tls(stub.addr(), pki.client_config(), "GET", &list_path(), &auth)
        .await
        .expect("trusted handshake");
    assert_eq!(ok.status, 200);

    let err = call_tls(
        stub.addr(),
        pki.client_config_untrusting(),
        "GET",
        &list_path(),
        &auth,
    )
    .await
    .expect_err("unknown authority must fail");
    assert!(
        err.to_lowercase().contains("unknown") || err.contains("UnknownIssuer"),
        "{err}"
    );
    assert_eq!(stub.requests().len(), 1);
}

#[tokio::test]
async fn mtls_stub_requires_the_client_certificate() {
    let pki = TestPki::new();
    let stub = StubForge::start(
        ForgeKind::GitHub,
        StubOptions {
            tls: Some(pki.server_tls_with_client_auth()),
            ..StubOptions::default()
        },
    )
    .await;
    let path = format!("/repos/o/r/commits/{SHA}/statuses");
    let auth = [("authorization", "Bearer t")];

    let ok = call_tls(
        stub.addr(),
        pki.client_config_with_identity(),
        "GET",
        &path,
        &auth,
    )
    .await;
    assert_eq!(ok.expect("client cert accepted").status, 200);

    // TLS 1.3 reports a missing client certificate only after the handshake, so the failure
    // may surface on the request instead.
    let without = call_tls(stub.addr(), pki.client_config(), "GET", &path, &auth).await;
    assert!(
        without.is_err(),
        "request without client certificate succeeded"
    );

    let rogue = rustls::ClientConfig::builder_with_provider(testkit::pki::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            roots.add(pki.ca_cert_der.clone().into()).unwrap();
            roots
        })
        .with_client_auth_cert(
            pki.rogue_client.cert_chain(),
            pki.rogue_client.private_key(),
        )
        .unwrap();
    let rogue = call_tls(stub.addr(), std::sync::Arc::new(rogue), "GET", &path, &auth).await;
    assert!(
        rogue.is_err(),
        "client certificate from an unknown CA was accepted"
    );
    assert_eq!(stub.requests().len(), 1);
}

/// Opens a CONNECT tunnel through `proxy` to `target`; returns the stream and the status line.
async fn connect_tunnel(
    proxy: &ForwardProxy,
    target: &str,
    auth: Option<&str>,
) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(a) = auth {
        head.push_str(&format!("Proxy-Authorization: {a}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tcp.read(&mut byte).await.unwrap();
        assert_eq!(
            n,
            1,
            "proxy closed during the CONNECT answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    (tcp, head)
}

#[tokio::test]
async fn connect_tunnel_carries_tls_to_the_stub() {
    let pki = TestPki::new();
    let stub = StubForge::start(
        ForgeKind::Gitea,
        StubOptions {
            tls: Some(pki.server_tls()),
            ..StubOptions::default()
        },
    )
    .await;
    let proxy = ForwardProxy::start(ProxyOptions::default()).await;
    let target = stub.addr().to_string();

    let (tcp, head) = connect_tunnel(&proxy, &target, None).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let tls = tls_connect(tcp, pki.client_config())
        .await
        .expect("TLS through the tunnel");
    let a = send_on(
        tls,
        request(
            "GET",
            &list_path(),
            &target,
            &[("authorization", "token t")],
            None,
        ),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(proxy.connects(), vec![target]);
    assert!(proxy.forwarded().is_empty());
    assert_eq!(stub.requests().len(), 1);
}

#[tokio::test]
async fn proxy_forwards_plain_http_and_enforces_basic_auth() {
    let stub = StubForge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let proxy = ForwardProxy::start(ProxyOptions {
        require_basic_auth: Some(("proxyuser".into(), "s3cret".into())),
    })
    .await;
    assert!(
        proxy
            .url_with_credentials()
            .starts_with("http://proxyuser:s3cret@127.0.0.1:")
    );
    let url = format!("{}/repos/o/r/statuses/{SHA}", stub.base_url());
    let body = json!({"state": "success", "context": "c"});

    // No credentials: 407 with a challenge, nothing reaches the stub.
    let tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    let a = send_on(
        tcp,
        request(
            "POST",
            &url,
            &stub.addr().to_string(),
            &[("authorization", "Bearer t")],
            Some(&body),
        ),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 407);
    assert_eq!(
        a.header("proxy-authenticate").as_deref(),
        Some("Basic realm=\"csc-testkit\"")
    );
    assert_eq!(proxy.rejected(), 1);
    let (_, head) = connect_tunnel(
        &proxy,
        &stub.addr().to_string(),
        Some("Basic d3Jvbmc6d3Jvbmc="),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");

    // With credentials the request is forwarded and the answer streamed back.
    let tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    let creds = "Basic cHJveHl1c2VyOnMzY3JldA==";
    let a = send_on(
        tcp,
        request(
            "POST",
            &url,
            &stub.addr().to_string(),
            &[
                ("authorization", "Bearer t"),
                ("proxy-authorization", creds),
            ],
            Some(&body),
        ),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 201, "{:?}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["state"], "success");
    assert_eq!(proxy.forwarded(), vec![url]);
    assert_eq!(stub.statuses("o/r", SHA), vec![body]);
    let seen = &stub.requests()[0];
    assert_eq!(seen.path, format!("/repos/o/r/statuses/{SHA}"));
    assert_eq!(
        seen.header("proxy-authorization"),
        None,
        "proxy credentials leaked upstream"
    );
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
}

#[tokio::test]
async fn connect_to_a_closed_port_is_502() {
    let proxy = ForwardProxy::start(ProxyOptions::default()).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (_, head) = connect_tunnel(&proxy, &closed.to_string(), None).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(proxy.connects().is_empty());
}
