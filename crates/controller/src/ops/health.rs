//! The health probes on `--health-addr`: liveness, and readiness that follows the delivery
//! store's ability to write. Uses the delivery store only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

use crate::delivery::store::Outbox;

/// Health probes: `/healthz` always answers; `/readyz` once `ready` is set, and while the
/// delivery store can write (it heals itself after a disk fault).
pub fn router(ready: Arc<AtomicBool>, store: Outbox) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let (ready, store) = (ready.clone(), store.clone());
                async move {
                    if ready.load(Ordering::Acquire) && store.writable() {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
}
