//! The event API on `--events-addr`: every path and method is an event, as in Flux. It decodes
//! the body within the request-body budget, suppresses duplicates, routes the event and answers
//! once its deliveries (and forwards) are stored. Uses routing, delivery and configuration.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use api::{DecodeError, Event};

use crate::config::catalog::{Catalog, SharedCatalog};
use crate::config::hooks::{LabelSource, Notices, reason};
use crate::delivery::Scheduler;
use crate::delivery::store::Outbox;
use crate::events::budget::{self, BodyBudget, BodyError};
use crate::events::forward::Forwarder;
use crate::events::listener::plain;
use crate::events::ratelimit::{Limiter, event_key, rfc1123_utc};
use crate::events::refusal::Refusal;
use crate::route::{self, RouteSettings, Routed};

/// Flux's `ReadTimeout`: the whole request, body included.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What the event handler needs.
#[derive(Clone)]
pub struct EventState {
    pub catalog: SharedCatalog,
    pub limiter: Arc<Limiter>,
    pub body_budget: BodyBudget,
    pub outbox: Outbox,
    pub scheduler: Scheduler,
    pub settings: RouteSettings,
    /// Pending deliveries above which new events are refused with 503.
    pub max_pending: usize,
    /// Pending deliveries of one Provider above which its events are refused with 503.
    pub max_pending_per_provider: usize,
    pub notices: Arc<dyn Notices>,
    /// Reads involved objects' labels for `matchLabels`; `None` without a cluster.
    pub labels: Option<Arc<dyn LabelSource>>,
    /// `--forward-events-to`: where accepted events are sent on; `None` without it.
    pub forwarder: Option<Forwarder>,
}

/// The event API: every path and method is an event, as in Flux (a GET has an empty body,
/// which Flux answers 400 too). The delivery pages are on their own listener
/// (`ops::history_api`), so exposing them never exposes this API.
pub fn events_router(state: EventState) -> Router {
    Router::new().fallback(handle_event).with_state(state)
}

/// The media types an HTML form (or a script without a CORS preflight) can send: any web page
/// a cluster user opens could post those to the event API, so they are refused unread.
const FORM_TYPES: [&str; 3] = [
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "text/plain",
];

fn is_form_type(headers: &header::HeaderMap) -> bool {
    headers.get_all(header::CONTENT_TYPE).iter().any(|v| {
        let bytes = v.as_bytes();
        let essence = bytes
            .split(|b| *b == b';')
            .next()
            .unwrap_or(bytes)
            .trim_ascii();
        FORM_TYPES
            .iter()
            .any(|t| essence.eq_ignore_ascii_case(t.as_bytes()))
    })
}

async fn handle_event(State(state): State<EventState>, req: Request) -> Response {
    let (parts, mut body) = req.into_parts();
    if is_form_type(&parts.headers) {
        budget::discard(&parts.headers, body, READ_TIMEOUT).await;
        let mut r = plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Media Type: events are JSON (Content-Type: application/json)\n",
        );
        r.headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        return r;
    }
    // Held until the answer is sent: the decoded event counts against the budget too.
    let read = state
        .body_budget
        .read(&parts.headers, &mut body, READ_TIMEOUT)
        .await;
    let (bytes, _charge) = match read {
        Ok(read) => read,
        Err(BodyError::Unreadable) => return StatusCode::BAD_REQUEST.into_response(),
        Err(BodyError::TooLarge) => {
            budget::discard(&parts.headers, body, READ_TIMEOUT).await;
            return StatusCode::PAYLOAD_TOO_LARGE.into_response();
        }
        Err(BodyError::Busy) => {
            tracing::warn!(
                "request bodies in flight reached --max-body-bytes-in-flight: asking the sender to retry"
            );
            budget::discard(&parts.headers, body, READ_TIMEOUT).await;
            let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable\n");
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
    };
    let decoded = Event::decode_within(&bytes, budget::decode_limit(bytes.len()));
    // Kept only to be forwarded as received (still within the charge); otherwise freed now.
    let content_type = parts.headers.get(header::CONTENT_TYPE);
    let received = match &state.forwarder {
        Some(_) => Some((
            bytes::Bytes::from(bytes),
            content_type.map(|v| v.as_bytes().to_vec()),
        )),
        None => {
            drop(bytes);
            None
        }
    };
    let mut event = match decoded {
        Ok(e) => e,
        Err(e) => {
            let status = match e {
                DecodeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            // Flux answers with an empty body; a reason helps whoever is sending by hand.
            let mut r = (status, format!("{e}\n")).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return r;
        }
    };
    route::cleanup_metadata(&mut event);

    let key = event_key(&event);
    let decision = state.limiter.take(&key);
    let reset = HeaderValue::from_str(&rfc1123_utc(decision.reset)).expect("ASCII date");
    let with_limits = |mut r: Response| {
        let h = r.headers_mut();
        h.insert("x-ratelimit-limit", HeaderValue::from_static("1"));
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        h.insert("x-ratelimit-reset", reset.clone());
        r
    };
    if !decision.allowed {
        tracing::debug!(object = %event.object_ref(), "Discarding event, rate limiting duplicate events");
        let mut r = plain(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n");
        r.headers_mut().insert(header::RETRY_AFTER, reset.clone());
        return with_limits(r);
    }
    route::strip_token(&mut event);

    let catalog = state
        .catalog
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut labels = None;
    if let Some(source) = &state.labels {
        let needing = route::alerts_needing_labels(&catalog, &event);
        if !needing.is_empty() {
            match source.labels(&event).await {
                Ok(l) => labels = Some(l),
                Err(e) => {
                    tracing::warn!(object = %event.object_ref(), error = %e, kind = e.name(), "cannot read the involved object's labels for matchLabels");
                    for a in needing {
                        let key =
                            format!("{}/{}", a.alert.metadata.namespace, a.alert.metadata.name);
                        state.notices.warning(
                            &key,
                            reason::SOURCE_FETCH_FAILED,
                            format!("error getting source object {}", event.object_ref()),
                        );
                    }
                }
            }
        }
    }
    let records =
        deliveries_for(&state, &catalog, &event, labels.as_ref(), Origin::Api).unwrap_or_default();
    let object = event.object_ref();
    let refuse = |why: Refusal| {
        // Give the token back: the sender will retry (Flux's recorder retries 5xx) and that
        // retry must not be taken for a duplicate.
        state.limiter.refund(&key);
        tracing::warn!(object = %object, kind = why.name(), "{why}: asking the sender to retry");
        let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable\n");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        with_limits(r)
    };
    // The event is accepted: whatever it leads to, it is forwarded as it arrived.
    let incoming = received.map(|(body, content_type)| Incoming {
        object: object.clone(),
        reason: event.reason.clone(),
        body,
        content_type,
    });
    match store_accepted(&state, records, incoming).await {
        // Only now are the deliveries and forwards durable, so only now may the sender
        // forget the event.
        Ok(()) => with_limits(StatusCode::ACCEPTED.into_response()),
        Err(why) => refuse(why),
    }
}

/// An accepted event as it arrived, for forwarding.
struct Incoming {
    object: String,
    reason: String,
    body: bytes::Bytes,
    content_type: Option<Vec<u8>>,
}

/// Stores an accepted event's deliveries and its forwards (`--forward-events-to`); returns
/// once both are durable, or why they cannot be taken now.
async fn store_accepted(
    state: &EventState,
    records: Vec<crate::delivery::store::Pending>,
    incoming: Option<Incoming>,
) -> Result<(), Refusal> {
    let (Some(forwarder), Some(incoming)) = (&state.forwarder, incoming) else {
        return match records.is_empty() {
            true => Ok(()),
            false => store(state, records).await,
        };
    };
    // Refused deliveries must not leave a forward behind (the sender's retry brings it again).
    if !records.is_empty() && state.outbox.pending_len() + records.len() > state.max_pending {
        return Err(Refusal::MaxPending);
    }
    let forwarded = forwarder
        .accept(
            incoming.object,
            incoming.reason,
            incoming.body,
            incoming.content_type.as_deref(),
        )
        .map_err(Refusal::from)?;
    let delivered = async {
        match records.is_empty() {
            true => Ok(()),
            false => store(state, records).await,
        }
    };
    let forwarded = async {
        forwarded.await.map_err(|e| {
            tracing::error!(error = %e, kind = e.name(), "cannot store the event for forwarding");
            Refusal::ForwardStore(e)
        })
    };
    let (delivered, forwarded) = tokio::join!(delivered, forwarded);
    delivered.and(forwarded)
}

/// Where an event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Posted to the event API by a Flux controller.
    Api,
    /// Built from a watched object's state (Kubernetes mode): routed the same way, but
    /// quietly, since the same state is looked at again on every resync.
    State,
}

/// Routes an event through every Alert that selects it: the deliveries to store, or `None`
/// when no Alert selects it. Failures are logged; for events from the API they are also
/// recorded on the Alert, as Flux does.
pub fn deliveries_for(
    state: &EventState,
    catalog: &Catalog,
    event: &Event,
    labels: Option<&std::collections::BTreeMap<String, String>>,
    origin: Origin,
) -> Option<Vec<crate::delivery::store::Pending>> {
    let api = origin == Origin::Api;
    let alerts = route::matching_alerts(catalog, event, labels);
    if alerts.is_empty() {
        if api {
            tracing::debug!(object = %event.object_ref(), "discarding event, no alerts found for the involved object");
        }
        return None;
    }
    if api {
        tracing::info!(object = %event.object_ref(), reason = %event.reason, severity = %event.severity, alerts = alerts.len(), "dispatching event");
    }

    let routed: Vec<Routed> = alerts
        .iter()
        .map(|a| {
            // Numbered before planning: the status may link to the delivery's page.
            let seq = state.outbox.reserve_seq();
            route::route(
                catalog,
                event,
                a,
                &state.settings,
                state.notices.as_ref(),
                seq,
            )
        })
        .collect();
    let dropped = route::no_commit_alerts(&routed);
    if !dropped.is_empty() && api {
        tracing::info!(object = %event.object_ref(), alerts = ?dropped, "event dropped for commit status providers due to missing commit metadata key");
    }
    let object = event.object_ref();
    let mut records = Vec::new();
    for r in routed {
        match r {
            Routed::Job(record) => records.push(*record),
            Routed::Failed {
                alert,
                provider,
                stage,
                error,
            } => {
                let msg = crate::config::hooks::failure_message(&object, stage, &error);
                if !api {
                    tracing::debug!(alert = %alert, object = %object, error = %msg, "the object's state implies no commit status");
                    continue;
                }
                let what = match stage {
                    route::Stage::Dispatch => "failed to dispatch notification",
                    route::Stage::Send => "failed to send notification",
                };
                tracing::error!(alert = %alert, provider = provider.as_deref().unwrap_or(""), object = %object, error = %msg, "{what}");
                state.notices.warning(&alert, reason::DISPATCH_FAILED, msg);
            }
            Routed::Skipped { alert, reason } => {
                tracing::debug!(alert = %alert, object = %object, reason, "not sending a commit status");
            }
            Routed::NoCommit { .. } => {}
        }
    }
    Some(records)
}

/// Stores deliveries and hands them to the scheduler; returns once they are durable, or why
/// they were refused.
pub async fn store(
    state: &EventState,
    records: Vec<crate::delivery::store::Pending>,
) -> Result<(), Refusal> {
    if state.outbox.pending_len() + records.len() > state.max_pending {
        return Err(Refusal::MaxPending);
    }
    let mut per_provider = std::collections::BTreeMap::<&str, usize>::new();
    for r in &records {
        *per_provider.entry(&r.delivery.provider).or_default() += 1;
    }
    if per_provider
        .iter()
        .any(|(p, n)| state.outbox.pending_for(p) + n > state.max_pending_per_provider)
    {
        return Err(Refusal::MaxPendingPerProvider);
    }
    // Only once the deliveries are durable are they scheduled (and may the sender forget the
    // event).
    let entries = state.outbox.accept(records).await.map_err(|e| {
        tracing::error!(error = %e, kind = e.name(), "cannot store deliveries");
        Refusal::Store(e)
    })?;
    state.scheduler.accepted(entries);
    Ok(())
}

#[cfg(test)]
mod oneshot_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_types_are_recognised_in_any_case_with_parameters() {
        let of = |v: &str| {
            let mut h = header::HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            is_form_type(&h)
        };
        assert!(of("application/x-www-form-urlencoded"));
        assert!(of("Multipart/Form-Data; boundary=x"));
        assert!(of(" text/plain ;charset=utf-8"));
        assert!(!of("application/json"));
        assert!(!of("application/json; charset=utf-8"));
        assert!(!of("text/plainx"));
        assert!(!is_form_type(&header::HeaderMap::new()));
    }
}
