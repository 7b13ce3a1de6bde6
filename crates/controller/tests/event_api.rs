//! The event API as Flux controllers meet it: status codes, limits and rate-limit headers.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

async fn controller() -> Controller {
    let dir = tempfile::tempdir().unwrap();
    Manifests::routed(
        Provider::forge("github", "http://127.0.0.1:9/o/r"),
        &[("token", "t")],
    )
    .write(dir.path(), "m.yaml");
    Controller::start(dir.path(), &["--rate-limit-interval=10m"], &[])
        .await
        .keep_dir(dir)
}

#[tokio::test]
async fn status_codes_and_limits() {
    let c = controller().await;
    // Any path and any method reach the handler.
    let ok = serde_json::to_vec(
        &json!({"involvedObject": {"kind": "Bucket", "name": "a", "namespace": "x"}}),
    )
    .unwrap();
    assert_eq!(c.post_raw("PUT", "/some/path", ok).await.status(), 202);
    assert_eq!(c.post_raw("GET", "/", Vec::new()).await.status(), 400);
    let bad = c.post_raw("POST", "/", b"{not json".to_vec()).await;
    assert_eq!(bad.status(), 400);
    assert!(
        !bad.text().await.unwrap().is_empty(),
        "a short reason is given"
    );
    assert_eq!(
        c.post_raw("POST", "/", br#"{"timestamp":""}"#.to_vec())
            .await
            .status(),
        400
    );
    assert_eq!(
        c.post_raw("POST", "/", b"null".to_vec()).await.status(),
        202
    );

    // Exactly 3 MiB is accepted, one byte more is not.
    let limit = 3 * 1024 * 1024;
    let mut body = br#"{"message":""#.to_vec();
    body.resize(limit - 2, b'a');
    body.extend_from_slice(b"\"}");
    assert_eq!(body.len(), limit);
    assert_eq!(c.post_raw("POST", "/", body.clone()).await.status(), 202);
    body.insert(13, b'a');
    assert_eq!(c.post_raw("POST", "/", body).await.status(), 413);
}

#[tokio::test]
async fn duplicates_get_429_with_flux_headers() {
    let c = controller().await;
    let ev = success_event("no-alert-for-this", SHA);
    let first = c.post(&ev).await;
    assert_eq!(first.status(), 202);
    assert_eq!(first.headers()["x-ratelimit-limit"], "1");
    assert_eq!(first.headers()["x-ratelimit-remaining"], "0");
    let reset = first.headers()["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(reset.ends_with(" UTC"), "{reset}");

    let dup = c.post(&ev).await;
    assert_eq!(dup.status(), 429);
    assert_eq!(dup.headers()["retry-after"].to_str().unwrap(), reset);
    assert_eq!(dup.headers()["x-ratelimit-reset"].to_str().unwrap(), reset);
    assert_eq!(dup.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(dup.headers()["x-content-type-options"], "nosniff");
    assert_eq!(dup.text().await.unwrap(), "Too Many Requests\n");

    // Severity and reason are not part of the key; the revision is.
    let mut other_severity = ev.clone();
    other_severity["severity"] = json!("error");
    assert_eq!(c.post(&other_severity).await.status(), 429);
    let other_rev = success_event(
        "no-alert-for-this",
        "a1afe267b54f38b46b487f6e938a6fd508278c07",
    );
    assert_eq!(c.post(&other_rev).await.status(), 202);
}

#[tokio::test]
async fn health_and_shutdown() {
    let mut c = controller().await;
    let r = reqwest::get(format!("{}/healthz", c.health_url))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let status = c.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(c.wait_log("shutting down", Duration::from_secs(1)).await);
}
