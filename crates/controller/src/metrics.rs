//! Prometheus metrics on `--metrics-addr` `/metrics`: Flux's event-server families with Flux's
//! names and labels (so its dashboards and the documented 429 query keep working), and ours
//! for deliveries. Every label set is bounded: forge type, outcome, status class, object kind;
//! never a commit, an object name or a credential.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub handler: String,
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabel {
    pub handler: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub forge: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub forge: String,
    /// `2xx`, `4xx`, `5xx`, or `none` when no answer came (timeout, connection error).
    pub status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForgeLabel {
    pub forge: String,
}

/// A credential named by the Provider using it (`namespace/name`), never by its value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    pub forge: String,
    pub provider: String,
}

// --- issue 12: forge requests and pacing per credential ---
/// A credential's requests, named by the Provider using it; `kind` is `read` or `write`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub forge: String,
    pub provider: String,
    pub kind: String,
}

/// A credential's pacing state (`unpaced`, `paced`, `blocked`), named by the Provider using it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PacingLabels {
    pub forge: String,
    pub provider: String,
    pub state: String,
}

// Issue 10: store and delivery errors, by their fixed names.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Forge type; empty when the forge is not known (a store read failed first).
    pub forge: String,
    /// The error's fixed name (`forge_transient`, `plan`, `store`, ...).
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreErrorLabel {
    /// The store error's fixed name (`io`, `unavailable`, ...).
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// Flux's token-cache event labels (`fluxcd/pkg/cache`): the Provider a token was looked up
/// for, `operation` is always `post` as in notification-controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenEventLabels {
    pub event_type: String,
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

// Issue 13: forwarding. A receiver is named by its URL without userinfo; receivers come from
// flags, so the label set stays bounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardLabels {
    pub target: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardAttemptLabels {
    pub target: String,
    pub status_class: String,
}

/// Durations in seconds as go-http-metrics buckets them (Prometheus' default buckets).
const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    pub request_duration: Family<HttpLabels, Histogram>,
    pub response_size: Family<HttpLabels, Histogram>,
    pub inflight: Family<HandlerLabel, Gauge>,
    pub deliveries: Family<OutcomeLabels, Counter>,
    pub attempts: Family<AttemptLabels, Counter>,
    pub attempt_duration: Family<ForgeLabel, Histogram>,
    pub retries: Family<ForgeLabel, Counter>,
    pub queue_depth: Gauge,
    pub oldest_pending_seconds: Gauge<f64, AtomicU64>,
    pub rate_limited: Family<ForgeLabel, Counter>,
    pub budget_remaining: Family<BudgetLabels, Gauge>,
    pub rejected_objects: Family<KindLabel, Gauge>,
    // Issue 14: healing from state.
    pub healed: Family<KindLabel, Counter>,
    pub watched_objects: Family<KindLabel, Gauge>,
    // issue 12
    pub forge_requests: Family<RequestLabels, Counter>,
    pub pacing: Family<PacingLabels, Gauge>,
    // Issue 9.
    pub duplicate_keys_evicted: Counter,
    // issue 11: Flux's `gotk_token_*` token-cache families.
    pub token_cache_events: Family<TokenEventLabels, Counter>,
    pub token_cached_items: Gauge,
    pub token_cache_requests: Family<StatusLabel, Counter>,
    pub token_cache_evictions: Counter,
    /// `--export-http-path-metrics` (issue 11): the handler label is the request path.
    export_http_path: std::sync::atomic::AtomicBool,
    // Issue 13: forwarding.
    pub forwards: Family<ForwardLabels, Counter>,
    pub forward_attempts: Family<ForwardAttemptLabels, Counter>,
    pub forward_queue_depth: Gauge,
    pub forward_pending_bytes: Gauge,
    // Issue 10.
    pub delivery_errors: Family<ErrorLabels, Counter>,
    pub store_errors: Family<StoreErrorLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let duration = || Histogram::new(DURATION_BUCKETS);
        let m = Metrics {
            request_duration: Family::new_with_constructor(duration),
            response_size: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(100.0, 10.0, 8))
            }),
            inflight: Family::default(),
            deliveries: Family::default(),
            attempts: Family::default(),
            attempt_duration: Family::new_with_constructor(duration),
            retries: Family::default(),
            queue_depth: Gauge::default(),
            oldest_pending_seconds: Gauge::default(),
            rate_limited: Family::default(),
            budget_remaining: Family::default(),
            rejected_objects: Family::default(),
            healed: Family::default(),
            watched_objects: Family::default(),
            forge_requests: Family::default(),
            pacing: Family::default(),
            duplicate_keys_evicted: Counter::default(),
            export_http_path: Default::default(),
            token_cache_events: Family::default(),
            token_cached_items: Gauge::default(),
            token_cache_requests: Family::default(),
            token_cache_evictions: Counter::default(),
            forwards: Family::default(),
            forward_attempts: Family::default(),
            forward_queue_depth: Gauge::default(),
            forward_pending_bytes: Gauge::default(),
            delivery_errors: Family::default(),
            store_errors: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "gotk_event_http_request_duration_seconds",
            "The latency of the HTTP requests.",
            m.request_duration.clone(),
        );
        registry.register(
            "gotk_event_http_response_size_bytes",
            "The size of the HTTP responses.",
            m.response_size.clone(),
        );
        registry.register(
            "gotk_event_http_requests_inflight",
            "The number of inflight requests being handled at the same time.",
            m.inflight.clone(),
        );
        registry.register(
            "gotk_token_cache_events",
            "Total number of cache retrieval events for a Gitops Toolkit resource reconciliation.",
            m.token_cache_events.clone(),
        );
        registry.register(
            "gotk_token_cached_items",
            "Total number of items in the cache.",
            m.token_cached_items.clone(),
        );
        registry.register(
            "gotk_token_cache_requests",
            "Total number of cache requests partioned by success or failure.",
            m.token_cache_requests.clone(),
        );
        registry.register(
            "gotk_token_cache_evictions",
            "Total number of cache evictions.",
            m.token_cache_evictions.clone(),
        );
        let ours = registry.sub_registry_with_prefix("commit_status");
        ours.register("deliveries", "Deliveries finished, by forge type and outcome (posted, already_set, skipped, failed, expired).", m.deliveries.clone());
        ours.register(
            "attempts",
            "Attempts at a forge, by forge type and HTTP status class.",
            m.attempts.clone(),
        );
        ours.register(
            "attempt_duration_seconds",
            "Duration of one attempt (the read and the write).",
            m.attempt_duration.clone(),
        );
        ours.register(
            "retries",
            "Attempts that will be retried.",
            m.retries.clone(),
        );
        ours.register(
            "rate_limited",
            "Answers saying a forge's rate-limit budget is spent.",
            m.rate_limited.clone(),
        );
        ours.register(
            "rate_limit_remaining",
            "Rate-limit budget left on a Provider's credential, as the forge last reported it.",
            m.budget_remaining.clone(),
        );
        ours.register(
            "queue_depth",
            "Deliveries accepted and not finished.",
            m.queue_depth.clone(),
        );
        ours.register(
            "oldest_pending_age_seconds",
            "Age of the oldest delivery not finished.",
            m.oldest_pending_seconds.clone(),
        );
        ours.register(
            "rejected_objects",
            "Manifests or objects rejected as invalid, by kind.",
            m.rejected_objects.clone(),
        );
        // Issue 14: healing from state.
        ours.register(
            "healed_from_state",
            "Deliveries made from a watched object's state rather than an event (the status it implies was not the one last posted), by object kind.",
            m.healed.clone(),
        );
        ours.register(
            "watched_objects",
            "Objects watched because a commit-status Alert selects them, by kind.",
            m.watched_objects.clone(),
        );
        // issue 12
        ours.register(
            "forge_requests",
            "Requests sent to forges per Provider credential, by kind (read, write).",
            m.forge_requests.clone(),
        );
        ours.register(
            "credential_pacing",
            "1 for the pacing state of a Provider's credential (unpaced, paced: spread to last until the rate-limit reset, blocked: spent until it), 0 for the others.",
            m.pacing.clone(),
        );
        // Issue 9.
        ours.register(
            "duplicate_keys_evicted",
            "Duplicate-suppression windows forgotten before their time because --rate-limit-max-keys was reached.",
            m.duplicate_keys_evicted.clone(),
        );
        // Issue 13: forwarding.
        ours.register(
            "forwards",
            "Forwarded events finished, by receiver and outcome (forwarded, already_received, failed, expired, skipped).",
            m.forwards.clone(),
        );
        ours.register(
            "forward_attempts",
            "Attempts at forwarding an event, by receiver and HTTP status class.",
            m.forward_attempts.clone(),
        );
        ours.register(
            "forward_queue_depth",
            "Forwards accepted and not finished (one per event and receiver).",
            m.forward_queue_depth.clone(),
        );
        ours.register(
            "forward_pending_bytes",
            "Body bytes stored for events not yet forwarded to every receiver.",
            m.forward_pending_bytes.clone(),
        );
        // Issue 10.
        ours.register(
            "delivery_errors",
            "Failed attempts, and deliveries that failed before one, by forge type and error.",
            m.delivery_errors.clone(),
        );
        ours.register(
            "store_errors",
            "Failed reads and writes of the delivery store, by error.",
            m.store_errors.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// `/metrics`.
pub async fn serve(State(metrics): State<Arc<Metrics>>) -> Response {
    let mut r = metrics.encode().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

/// The `method` label: one of the standard methods, or `other`, so that made-up methods
/// cannot create series.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    STANDARD
        .into_iter()
        .find(|m| *m == method.as_str())
        .unwrap_or("other")
}

/// The go-http-metrics middleware Flux wraps its event server in: the handler label is the
/// fixed `/`, or with `--export-http-path-metrics` the request path, as in Flux.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let method = method_label(req.method()).to_string();
    let path = if metrics
        .export_http_path
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        req.uri().path().to_owned()
    } else {
        "/".to_owned()
    };
    let handler = HandlerLabel {
        handler: path.clone(),
    };
    let inflight = metrics.inflight.get_or_create(&handler).clone();
    inflight.inc();
    let started = Instant::now();
    let response = next.run(req).await;
    inflight.dec();
    let labels = HttpLabels {
        handler: path,
        method,
        code: response.status().as_u16().to_string(),
    };
    metrics
        .request_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    let size = axum::body::HttpBody::size_hint(response.body())
        .exact()
        .unwrap_or(0);
    metrics
        .response_size
        .get_or_create(&labels)
        .observe(size as f64);
    response
}

impl Metrics {
    pub fn set_export_http_path(&self, on: bool) {
        self.export_http_path
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets the rejected-objects gauges from the kinds of what was rejected in the last load.
    pub fn set_rejected<'a>(&self, kinds: impl Iterator<Item = &'a str>) {
        let mut counts: std::collections::BTreeMap<&str, i64> =
            ["Provider", "Alert", "Secret", "Document"]
                .into_iter()
                .map(|k| (k, 0))
                .collect();
        for kind in kinds {
            let kind = match kind {
                "Provider" | "Alert" | "Secret" => kind,
                _ => "Document",
            };
            *counts.entry(kind).or_default() += 1;
        }
        for (kind, n) in counts {
            self.rejected_objects
                .get_or_create(&KindLabel { kind: kind.into() })
                .set(n);
        }
    }
}

/// `2xx`, `4xx`, `5xx` or `none`.
pub fn status_class(status: Option<u16>) -> String {
    match status {
        Some(s) => format!("{}xx", s / 100),
        None => "none".into(),
    }
}

/// Feeds the token cache's reports into Flux's `gotk_token_*` families.
pub struct TokenCacheMetrics(pub Arc<Metrics>);

impl notify::token_cache::TokenCacheObserver for TokenCacheMetrics {
    fn event(&self, hit: bool, provider: &notify::token_cache::ProviderRef) {
        self.0
            .token_cache_events
            .get_or_create(&TokenEventLabels {
                event_type: if hit { "cache_hit" } else { "cache_miss" }.into(),
                kind: "Provider".into(),
                name: provider.name.clone(),
                namespace: provider.namespace.clone(),
                operation: "post".into(),
            })
            .inc();
    }
    fn request(&self, success: bool) {
        self.0
            .token_cache_requests
            .get_or_create(&StatusLabel {
                status: if success { "success" } else { "failure" }.into(),
            })
            .inc();
    }
    fn items(&self, count: usize) {
        self.0
            .token_cached_items
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    fn eviction(&self) {
        self.0.token_cache_evictions.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_label_takes_standard_methods_or_other() {
        for m in ["GET", "POST", "PATCH", "CONNECT"] {
            assert_eq!(method_label(&m.parse().unwrap()), m);
        }
        for m in ["FOO", "get", "PROPFIND", "BREW"] {
            assert_eq!(method_label(&m.parse().unwrap()), "other");
        }
    }
}
