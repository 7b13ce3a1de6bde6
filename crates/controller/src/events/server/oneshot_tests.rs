//! `Router::oneshot` tests of the event API ([`events_router`]), no sockets: Flux's answers
//! (202, 400, 413, the rate-limited duplicate's 429 with its exact body and headers) and ours
//! (415 for form bodies, 503 while the body budget or the store cannot take an event), and
//! that a 202 means stored and scheduled.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use api::fixtures::Manifests;
use api::{Event, Provider};
use axum::body::Body;
use axum::http::{HeaderMap, Request};
use futures::future::BoxFuture;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use super::*;
use crate::delivery::policy::Policy;
use crate::delivery::record::{Entry, Pending};
use crate::delivery::scheduler::{self, Attempter, Budgets, Clock, Next};
use crate::delivery::store::HistoryFilter;
use crate::events::budget::MAX_BODY;

/// Takes what the scheduler is handed, and attempts nothing.
#[derive(Default)]
struct Scheduled(Mutex<Vec<Entry>>);

impl Attempter for Scheduled {
    type Entry = Entry;

    fn budget(&self, _: &Entry) -> Option<scheduler::Budget> {
        None
    }

    fn attempt(self: Arc<Self>, entry: Entry, _: Arc<Budgets>) -> BoxFuture<'static, Next> {
        self.0.lock().unwrap().push(entry);
        // Stays pending: the tests look at what was stored and scheduled, not at a forge.
        Box::pin(std::future::pending())
    }
}

/// The event API on one GitHub Provider and an Alert for every Kustomization in
/// `flux-system`, with an in-memory store.
struct Api {
    state: EventState,
    scheduled: Arc<Scheduled>,
    _stop: tokio_util::sync::CancellationToken,
}

impl Api {
    fn new() -> Api {
        Api::with(|_| {})
    }

    fn with(change: impl FnOnce(&mut EventState)) -> Api {
        let manifests = Manifests::routed(
            Provider::forge("github", "https://github.com/o/r"),
            &[("token", "ghp_RouterTestToken")],
        );
        let load = crate::config::files::load_text("m.yaml", &manifests.yaml());
        assert!(load.problems.is_empty(), "{:?}", load.problems);
        let catalog = Catalog::build(load.objects, &notify::ClientCache::new());
        let (outbox, _) = Outbox::open(None, Arc::new(|_: &_| {})).unwrap();
        let scheduled = Arc::new(Scheduled::default());
        let stop = tokio_util::sync::CancellationToken::new();
        let policy = Policy {
            min_retry_delay: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
        };
        let (scheduler, run) = scheduler::start(
            scheduled.clone(),
            Clock::system(),
            policy,
            Vec::new(),
            stop.clone(),
            Duration::ZERO,
        );
        tokio::spawn(run);
        let mut state = EventState {
            catalog: Arc::new(RwLock::new(Arc::new(catalog))),
            limiter: Arc::new(Limiter::new(Duration::from_secs(600))),
            body_budget: BodyBudget::new(budget::MIN_BUDGET),
            outbox,
            scheduler,
            settings: RouteSettings::default(),
            max_pending: 100,
            max_pending_per_provider: 100,
            notices: Arc::new(crate::config::hooks::LogOnly),
            labels: None,
            forwarder: None,
        };
        change(&mut state);
        Api {
            state,
            scheduled,
            _stop: stop,
        }
    }

    fn router(&self) -> Router {
        events_router(self.state.clone())
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
        answer(self.router().oneshot(req).await.unwrap()).await
    }

    async fn post(&self, event: &Event) -> (StatusCode, HeaderMap, String) {
        self.send(json_request(
            "POST",
            "/",
            serde_json::to_vec(&event.to_json()).unwrap(),
        ))
        .await
    }

    fn stored(&self) -> Vec<Pending> {
        let all = HistoryFilter {
            limit: 1000,
            ..HistoryFilter::default()
        };
        self.state.outbox.pending(&all).unwrap()
    }

    /// Waits until the scheduler was handed `n` deliveries.
    async fn scheduled(&self, n: usize) -> Vec<Entry> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let seen = self.scheduled.0.lock().unwrap().clone();
            if seen.len() >= n || tokio::time::Instant::now() > deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn json_request(method: &str, uri: &str, body: Vec<u8>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap()
}

async fn answer(r: Response) -> (StatusCode, HeaderMap, String) {
    let (parts, body) = r.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn event() -> Event {
    Event::test("flux-system", "apps")
}

/// Flux's rate-limit headers, on every answer that reached the limiter.
fn assert_rate_limit_headers(h: &HeaderMap) {
    assert_eq!(h["x-ratelimit-limit"], "1");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    let reset = h["x-ratelimit-reset"].to_str().unwrap();
    assert!(
        chrono::NaiveDateTime::parse_from_str(reset, "%a, %d %b %Y %H:%M:%S UTC").is_ok(),
        "{reset}"
    );
}

#[tokio::test]
async fn a_202_means_the_delivery_is_stored_and_scheduled() {
    let api = Api::new();
    let (status, headers, body) = api.post(&event()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body, "", "Flux answers 202 with an empty body");
    assert_rate_limit_headers(&headers);
    let stored = api.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].delivery.sha, api::fixtures::SHA);
    assert_eq!(stored[0].delivery.state, "success");
    let scheduled = api.scheduled(1).await;
    assert_eq!(scheduled.len(), 1);
    assert_eq!(scheduled[0].seq, stored[0].seq);
}

#[tokio::test]
async fn any_path_and_method_is_the_event_api_and_unmatched_events_are_accepted() {
    let api = Api::new();
    let elsewhere = Event::test("other-namespace", "apps");
    let body = serde_json::to_vec(&elsewhere.to_json()).unwrap();
    let (status, _, body) = api.send(json_request("PUT", "/some/path", body)).await;
    assert_eq!((status, body.as_str()), (StatusCode::ACCEPTED, ""));
    assert!(api.stored().is_empty(), "no Alert selects it");
    // A GET has no body, which is not an event.
    let get = Request::get("/").body(Body::empty()).unwrap();
    assert_eq!(api.send(get).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn malformed_bodies_get_400_with_a_reason_and_store_nothing() {
    let api = Api::new();
    for body in [
        &b"{not json"[..],
        br#"{"timestamp":""}"#,
        br#"{"involvedObject": 5}"#,
        br#"{"metadata": {"a": 1}}"#,
        b"[]",
        b"",
    ] {
        let (status, headers, text) = api.send(json_request("POST", "/", body.to_vec())).await;
        let shown = String::from_utf8_lossy(body);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{shown}");
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert!(!text.trim().is_empty(), "a reason for {shown}");
    }
    assert!(api.stored().is_empty());
    assert_eq!(api.state.limiter.len(), 0, "refused before the limiter");
}

#[tokio::test]
async fn the_same_event_again_is_a_duplicate_with_fluxs_exact_answer() {
    let api = Api::new();
    assert_eq!(api.post(&event()).await.0, StatusCode::ACCEPTED);
    let (status, headers, body) = api.post(&event()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body, "Too Many Requests\n");
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_rate_limit_headers(&headers);
    assert_eq!(headers[header::RETRY_AFTER], headers["x-ratelimit-reset"]);
    assert_eq!(api.stored().len(), 1, "the duplicate is not stored");
    // Another message is another event.
    let other = event().message("Reconciliation finished in 3.0s");
    assert_eq!(api.post(&other).await.0, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_thousand_concurrent_copies_are_one_delivery() {
    let api = Api::new();
    let body = serde_json::to_vec(&event().to_json()).unwrap();
    let mut copies = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let (router, body) = (api.router(), body.clone());
        copies.spawn(async move {
            let r = router.oneshot(json_request("POST", "/", body)).await;
            r.unwrap().status()
        });
    }
    let mut counts = std::collections::BTreeMap::new();
    while let Some(status) = copies.join_next().await {
        *counts.entry(status.unwrap().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(counts, [(202, 1), (429, 999)].into());
    assert_eq!(api.stored().len(), 1);
}

#[tokio::test]
async fn form_bodies_are_refused_unread_with_415() {
    let api = Api::new();
    let body = serde_json::to_vec(&event().to_json()).unwrap();
    for content_type in [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "Text/Plain; charset=utf-8",
    ] {
        let req = Request::post("/")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body.clone()))
            .unwrap();
        let (status, headers, text) = api.send(req).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type}");
        assert_eq!(
            text,
            "Unsupported Media Type: events are JSON (Content-Type: application/json)\n"
        );
        assert_eq!(headers[header::ACCEPT], "application/json");
    }
    assert!(api.stored().is_empty());
    assert_eq!(api.state.limiter.len(), 0, "not even rate-limited");
}

/// A JSON event body of exactly `len` bytes (its message padded).
fn event_of_len(len: usize) -> Vec<u8> {
    let mut e = event();
    e.message.clear();
    let empty = serde_json::to_vec(&e.to_json()).unwrap().len();
    e.message = "a".repeat(len - empty);
    let body = serde_json::to_vec(&e.to_json()).unwrap();
    assert_eq!(body.len(), len);
    body
}

#[tokio::test]
async fn bodies_over_3_mib_get_413_and_exactly_3_mib_is_an_event() {
    let api = Api::new();
    let (status, _, body) = api
        .send(json_request("POST", "/", event_of_len(MAX_BODY + 1)))
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::PAYLOAD_TOO_LARGE, ""));
    // Without a Content-Length, the cap holds while reading.
    let chunks = vec![
        Ok::<_, std::io::Error>(vec![b' '; MAX_BODY]),
        Ok(b"{}".to_vec()),
    ];
    let streamed = Request::post("/")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    assert_eq!(api.send(streamed).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(api.stored().is_empty());

    let (status, _, _) = api
        .send(json_request("POST", "/", event_of_len(MAX_BODY)))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let stored = api.stored();
    assert_eq!(stored.len(), 1);
    assert!(
        stored[0].delivery.message.len() < MAX_BODY,
        "the stored message is bounded"
    );
}

#[tokio::test]
async fn bodies_beyond_the_budget_in_flight_get_503_and_small_ones_still_pass() {
    let api = Api::new();
    // A large body that arrives slowly holds its charge while it is read.
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
    let slow = Request::post("/")
        .header(header::CONTENT_LENGTH, MAX_BODY.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(rx))
        .unwrap();
    let held = tokio::spawn(api.router().oneshot(slow));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while api.state.body_budget.available() > budget::MIN_BUDGET - MAX_BODY {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow body is not charged"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, headers, body) = api
        .send(json_request("POST", "/", event_of_len(MAX_BODY)))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "Service Unavailable\n");
    assert_eq!(headers[header::RETRY_AFTER], "1");
    // An ordinary event still gets through.
    assert_eq!(api.post(&event()).await.0, StatusCode::ACCEPTED);
    drop(tx);
    assert_eq!(
        held.await.unwrap().unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.state.body_budget.available(),
        budget::MIN_BUDGET,
        "all given back"
    );
}

#[tokio::test]
async fn a_full_store_answers_503_and_gives_the_token_back() {
    let full = Api::with(|s| s.max_pending = 0);
    let (status, headers, body) = full.post(&event()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "Service Unavailable\n");
    assert_eq!(headers[header::RETRY_AFTER], "10");
    assert_rate_limit_headers(&headers);
    assert!(full.stored().is_empty());
    // Flux's recorder retries a 503: the retry is not taken for a duplicate, and once there is
    // room it is accepted.
    assert_eq!(full.post(&event()).await.0, StatusCode::SERVICE_UNAVAILABLE);
    let mut roomy = full.state.clone();
    roomy.max_pending = 1;
    let r = events_router(roomy).oneshot(json_request(
        "POST",
        "/",
        serde_json::to_vec(&event().to_json()).unwrap(),
    ));
    assert_eq!(r.await.unwrap().status(), StatusCode::ACCEPTED);
    let stored = full.stored();
    assert_eq!(stored.len(), 1);
    // Only what was stored was scheduled.
    let scheduled = full.scheduled(1).await;
    assert_eq!(scheduled.len(), 1);
    assert_eq!(scheduled[0].seq, stored[0].seq);
}

#[tokio::test]
async fn one_providers_share_of_the_store_is_its_own() {
    let api = Api::with(|s| s.max_pending_per_provider = 1);
    assert_eq!(api.post(&event()).await.0, StatusCode::ACCEPTED);
    let other = event().commit("0b5a2f3c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a");
    let (status, headers, _) = api.post(&other).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "10");
    assert_eq!(api.stored().len(), 1);
}

#[tokio::test]
async fn a_token_in_the_event_is_neither_stored_nor_scheduled() {
    let api = Api::new();
    let carrying = event().meta("kustomize.toolkit.fluxcd.io/token", "tok-RouterS3cret");
    assert_eq!(api.post(&carrying).await.0, StatusCode::ACCEPTED);
    let stored = serde_json::to_string(&api.stored()).unwrap();
    assert!(!stored.contains("tok-RouterS3cret"), "{stored}");
    assert!(!stored.contains("ghp_RouterTestToken"), "{stored}");
}
