//! `Router::oneshot` tests of the `--pages-addr` router ([`router`]), no sockets: the
//! history API (`/api/v1/deliveries` with its filters and `limit` bounds), the delivery list
//! and the delivery pages, their 404s, and HTML escaping of hostile stored values.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Request};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

use super::*;
use crate::delivery::record::{Outcome, Pending, Verdict};
use crate::delivery::store::Finish;

const HOSTILE: &str = "<script>alert('x')</script> & \"quoted\"";

/// A store holding, oldest first: a failed delivery of `ns/p` with hostile text, a posted one
/// of `ns/q`, and a pending one of `ns/p`. Returns the store and the three delivery ids.
async fn store() -> (Outbox, [u64; 3]) {
    let (outbox, _) = Outbox::open(None, Arc::new(|_: &_| {})).unwrap();
    let mut failed = Pending::test(
        "aaaa5394cb7f48332b2de7c17dd8b8384bbc84b7",
        "kustomization/app/uid",
    )
    .in_state("failure");
    failed.delivery.object = format!("Kustomization/ns/{HOSTILE}");
    failed.delivery.message = format!("health check failed: {HOSTILE}");
    let mut posted = Pending::test(
        "bbbb5394cb7f48332b2de7c17dd8b8384bbc84b7",
        "kustomization/app/uid",
    )
    .of("ns/q");
    posted.delivery.repository = "https://gitlab.example.com/g/other".into();
    // The same object and status name as the failed one: its next status.
    let mut pending = Pending::test(
        "cccc5394cb7f48332b2de7c17dd8b8384bbc84b7",
        "kustomization/app/uid",
    );
    pending.delivery.object = failed.delivery.object.clone();
    let mut ids = [0; 3];
    for (i, (record, verdict)) in [
        (failed, Some(Verdict::Failed)),
        (posted, Some(Verdict::Posted)),
        (pending, None),
    ]
    .into_iter()
    .enumerate()
    {
        let entry = outbox.accept(vec![record]).await.unwrap().remove(0);
        ids[i] = entry.seq;
        let Some(verdict) = verdict else { continue };
        let (record, _) = outbox.load(&entry.key).unwrap();
        let record = record.unwrap();
        let outcome = Outcome {
            message: Some(format!("422 {HOSTILE}")),
            ..Outcome::test(&record, verdict)
        };
        let done = Finish::Done {
            key: record.key(),
            seq: record.seq,
            fingerprint: None,
            final_state: true,
            outcome: Box::new(outcome),
        };
        outbox.finish(done).await.unwrap();
    }
    (outbox, ids)
}

async fn get(router: &Router, uri: &str) -> (StatusCode, HeaderMap, String) {
    let req = Request::get(uri).body(Body::empty()).unwrap();
    let r = router.clone().oneshot(req).await.unwrap();
    let (parts, body) = r.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

async fn history(router: &Router, query: &str) -> Vec<Value> {
    let (status, headers, body) = get(router, &format!("/api/v1/deliveries{query}")).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    serde_json::from_str(&body).unwrap()
}

fn deliveries(items: &[Value]) -> Vec<u64> {
    items
        .iter()
        .map(|o| o["delivery"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_history_api_lists_newest_first_with_its_filters() {
    let (outbox, [failed, posted, pending]) = store().await;
    let router = router(outbox);
    let all = history(&router, "").await;
    assert_eq!(deliveries(&all), [posted, failed]);
    assert_eq!(all[0]["outcome"], "posted");
    assert_eq!(all[1]["outcome"], "failed");
    assert_eq!(all[1]["state"], "failure");
    for (query, want) in [
        ("?provider=ns/p", vec![failed]),
        ("?provider=ns/q", vec![posted]),
        ("?provider=ns/none", vec![]),
        ("?repository=gitlab.example.com", vec![posted]),
        ("?commit=aaaa", vec![failed]),
        ("?provider=ns/q&commit=aaaa", vec![]),
        ("?limit=1", vec![posted]),
    ] {
        assert_eq!(deliveries(&history(&router, query).await), want, "{query}");
    }
    let queued = history(&router, "?pending=true").await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0]["seq"], pending);
    assert!(
        history(&router, "?pending=true&provider=ns/q")
            .await
            .is_empty()
    );
    // Forwarded events are listed beside deliveries: there are none, and only they are asked.
    assert!(history(&router, "?type=forward").await.is_empty());
}

#[tokio::test]
async fn the_history_api_keeps_limit_within_bounds_and_ignores_what_it_cannot_read() {
    let (outbox, [failed, posted, _]) = store().await;
    let router = router(outbox);
    // At least one row, at most MAX_LIMIT; a limit that is no number is the default (100).
    assert_eq!(deliveries(&history(&router, "?limit=0").await), [posted]);
    for query in [
        "?limit=99999999999",
        "?limit=-1",
        "?limit=x",
        "?limit=",
        "?unknown=1",
    ] {
        let got = deliveries(&history(&router, query).await);
        assert_eq!(got, [posted, failed], "{query}");
    }
    // A value that is not UTF-8 matches nothing; it is no error.
    assert!(history(&router, "?provider=%ff%fe").await.is_empty());
    assert_eq!(MAX_LIMIT, 1000);
    // Not a JSON API for writes.
    let post = Request::post("/api/v1/deliveries")
        .body(Body::from("{}"))
        .unwrap();
    let r = router.clone().oneshot(post).await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

fn assert_page_headers(h: &HeaderMap) {
    assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
}

/// Fails if `html` carries any of the hostile text unescaped.
fn assert_escaped(html: &str) {
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("alert('x')"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;quoted&quot;"),
        "{html}"
    );
}

#[tokio::test]
async fn the_delivery_list_shows_pending_first_and_escapes_what_it_shows() {
    let (outbox, [failed, posted, pending]) = store().await;
    let router = router(outbox);
    let (status, headers, html) = get(&router, "/deliveries").await;
    assert_eq!(status, StatusCode::OK);
    assert_page_headers(&headers);
    assert_escaped(&html);
    let at = |id: u64| html.find(&format!(r#"href="deliveries/{id}""#)).unwrap();
    assert!(
        at(pending) < at(posted) && at(posted) < at(failed),
        "{html}"
    );
    assert!(html.contains("3 shown."), "{html}");

    let (_, _, html) = get(&router, "/deliveries?outcome=failed").await;
    assert!(html.contains(&format!(r#"href="deliveries/{failed}""#)));
    assert!(!html.contains(&format!(r#"href="deliveries/{posted}""#)));
    assert!(
        html.contains(r#"<option value="failed" selected>"#),
        "{html}"
    );
    let (_, _, html) = get(&router, "/deliveries?provider=ns/q").await;
    assert!(html.contains("1 shown."), "{html}");
    let (_, _, html) = get(&router, "/deliveries?commit=ffff").await;
    assert!(html.contains("No deliveries match."), "{html}");
    // What a filter echoes back is escaped too.
    let (_, _, html) = get(
        &router,
        "/deliveries?provider=%3Cscript%3Ealert('x')%3C/script%3E",
    )
    .await;
    assert!(!html.contains("<script"), "{html}");
    let post = Request::post("/deliveries").body(Body::empty()).unwrap();
    let r = router.clone().oneshot(post).await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_delivery_page_shows_one_delivery_escaped_and_unknown_ones_are_404() {
    let (outbox, [failed, _, pending]) = store().await;
    let router = router(outbox);
    let (status, headers, html) = get(&router, &format!("/deliveries/{failed}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_page_headers(&headers);
    assert_escaped(&html);
    assert!(html.contains(&format!("Delivery {failed}")), "{html}");
    assert!(
        html.contains("health check failed: &lt;script&gt;"),
        "{html}"
    );
    // The pending one of the same object and status name follows it.
    assert!(
        html.contains(&format!(r#"<a href="{pending}">Next status"#)),
        "{html}"
    );

    let (status, _, html) = get(&router, &format!("/deliveries/{pending}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("pending (not delivered yet)"), "{html}");
    assert!(
        html.contains(&format!(r#"<a href="{failed}">← Previous"#)),
        "{html}"
    );

    for (uri, why) in [
        (
            "/deliveries/999999",
            "No delivery 999999 is pending or in the history",
        ),
        ("/deliveries/abc", "A delivery id is a number."),
        ("/deliveries/-1", "A delivery id is a number."),
        ("/deliveries/%3Cscript%3E", "A delivery id is a number."),
    ] {
        let (status, headers, html) = get(&router, uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert_page_headers(&headers);
        assert!(html.contains(why), "{uri}: {html}");
        assert!(!html.contains("<script"), "{html}");
    }
    let (status, _, _) = get(&router, "/deliveries/1/more").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
