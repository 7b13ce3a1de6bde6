//! The `--pages-addr` listener: the delivery history as JSON (`/api/v1/deliveries`) beside the
//! HTML pages of [`crate::ops::pages`], with a bound on the history queries run at once. Reads
//! the delivery store and the forward history; takes no events.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::delivery::store::{HistoryFilter, Outbox};
use crate::events::listener::plain;

/// History queries run at once; more wait up to [`QUERY_WAIT`] for a turn, then get 503.
const MAX_HISTORY_QUERIES: usize = 4;
const QUERY_WAIT: Duration = Duration::from_secs(5);
/// Rows a history query may ask for at most.
pub const MAX_LIMIT: usize = 1000;

/// The `--pages-addr` listener: `GET /api/v1/deliveries` and the delivery pages
/// (`GET /deliveries`, `GET /deliveries/{id}`). It takes no events.
pub fn router(outbox: Outbox) -> Router {
    let queries = Arc::new(tokio::sync::Semaphore::new(MAX_HISTORY_QUERIES));
    Router::new()
        .route("/api/v1/deliveries", get(list_deliveries))
        .with_state(outbox.clone())
        .merge(crate::ops::pages::router(outbox))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: axum::middleware::Next| {
                let queries = queries.clone();
                async move {
                    match tokio::time::timeout(QUERY_WAIT, queries.acquire_owned()).await {
                        Ok(Ok(_turn)) => next.run(req).await,
                        _ => {
                            let mut r = plain(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "Too many history queries at once\n",
                            );
                            r.headers_mut()
                                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                            r
                        }
                    }
                }
            },
        ))
}

/// The delivery history, newest first, with `?provider=ns/name&repository=…&commit=…&limit=N`
/// (at most [`MAX_LIMIT`]); `&pending=true` lists the deliveries still queued instead.
/// Forwarded events are listed beside deliveries (`"type": "forward"`); `?target=…` or
/// `?type=forward|delivery` selects.
async fn list_deliveries(
    State(outbox): State<Outbox>,
    axum::extract::Query(params): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let filter = HistoryFilter {
        provider: params.get("provider").cloned(),
        repository: params.get("repository").cloned(),
        commit: params.get("commit").cloned(),
        limit: params
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(100usize)
            .clamp(1, MAX_LIMIT),
    };
    let pending = params.get("pending").is_some_and(|p| p == "true");
    let query = crate::events::forward::ListQuery {
        target: params.get("target").cloned(),
        type_: params.get("type").cloned(),
    };
    let result = tokio::task::spawn_blocking(move || {
        let to_values = |v: serde_json::Value| match v {
            serde_json::Value::Array(items) => items,
            _ => Vec::new(),
        };
        let deliveries = match (query.deliveries(), pending) {
            (false, _) => Vec::new(),
            (true, true) => {
                to_values(serde_json::to_value(outbox.pending(&filter)?).unwrap_or_default())
            }
            (true, false) => {
                to_values(serde_json::to_value(outbox.history(&filter)?).unwrap_or_default())
            }
        };
        query
            .merge(&outbox, &filter, pending, deliveries)
            .map(serde_json::Value::Array)
    })
    .await;
    match result {
        Ok(Ok(v)) => axum::Json(v).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod oneshot_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn the_pages_router_takes_no_events_and_clamps_limit() {
        let (outbox, _) = Outbox::open(
            None,
            std::sync::Arc::new(|_: &crate::delivery::store::StoreError| {}),
        )
        .unwrap();
        let pages = router(outbox);
        let send = |method: &str, uri: &str| {
            Request::builder()
                .method(method)
                .uri(uri)
                .body(axum::body::Body::from("{}"))
                .unwrap()
        };
        let r = pages.clone().oneshot(send("POST", "/")).await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = pages
            .clone()
            .oneshot(send("POST", "/deliveries"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        for limit in ["0", "99999999999", "x"] {
            let uri = format!("/api/v1/deliveries?limit={limit}");
            let r = pages.clone().oneshot(send("GET", &uri)).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{uri}");
        }
    }
}
