//! Why the event API cannot take an event now: a bound is reached or a store cannot write.
//! Every refusal is answered 503 with `Retry-After` (Flux's recorder retries 5xx); `Display`
//! is the text of the log line, `name()` its fixed label.

use crate::delivery::store::StoreError;
use crate::events::forward::Refused;

#[derive(Clone, Debug, thiserror::Error)]
pub enum Refusal {
    #[error("too many pending deliveries (--max-pending)")]
    MaxPending,
    #[error("too many pending deliveries for one Provider (--max-pending-per-provider)")]
    MaxPendingPerProvider,
    #[error("too many events waiting to be forwarded (--max-pending-forwards)")]
    MaxPendingForwards,
    #[error(
        "the events waiting to be forwarded use their byte budget (--max-pending-forward-bytes)"
    )]
    MaxPendingForwardBytes,
    #[error("the delivery store is unavailable")]
    Store(#[source] StoreError),
    #[error("the forwarding store is unavailable")]
    ForwardStore(#[source] StoreError),
}

impl Refusal {
    /// Whether the same event may be taken later: bounds free up as deliveries end; a store
    /// says for itself (it heals after a disk fault, but not after shutting down).
    pub fn retry(&self) -> bool {
        match self {
            Refusal::Store(e) | Refusal::ForwardStore(e) => e.retry(),
            Refusal::MaxPending
            | Refusal::MaxPendingPerProvider
            | Refusal::MaxPendingForwards
            | Refusal::MaxPendingForwardBytes => true,
        }
    }

    /// A short, fixed name for metric labels and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Refusal::MaxPending => "max_pending",
            Refusal::MaxPendingPerProvider => "max_pending_per_provider",
            Refusal::MaxPendingForwards => "max_pending_forwards",
            Refusal::MaxPendingForwardBytes => "max_pending_forward_bytes",
            Refusal::Store(_) => "store",
            Refusal::ForwardStore(_) => "forward_store",
        }
    }
}

impl From<Refused> for Refusal {
    fn from(e: Refused) -> Refusal {
        match e {
            Refused::Full => Refusal::MaxPendingForwards,
            Refused::FullBytes => Refusal::MaxPendingForwardBytes,
            Refused::Store(e) => Refusal::ForwardStore(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_names_itself_and_says_whether_to_retry() {
        let cases: Vec<(Refusal, bool, &str, &str)> = vec![
            (
                Refusal::MaxPending,
                true,
                "max_pending",
                "too many pending deliveries (--max-pending)",
            ),
            (
                Refusal::MaxPendingPerProvider,
                true,
                "max_pending_per_provider",
                "too many pending deliveries for one Provider (--max-pending-per-provider)",
            ),
            (
                Refused::Full.into(),
                true,
                "max_pending_forwards",
                "too many events waiting to be forwarded (--max-pending-forwards)",
            ),
            (
                Refused::FullBytes.into(),
                true,
                "max_pending_forward_bytes",
                "the events waiting to be forwarded use their byte budget (--max-pending-forward-bytes)",
            ),
            (
                Refusal::Store(StoreError::Unavailable),
                true,
                "store",
                "the delivery store is unavailable",
            ),
            (
                Refusal::Store(StoreError::Closed),
                false,
                "store",
                "the delivery store is unavailable",
            ),
            (
                Refused::Store(StoreError::Unavailable).into(),
                true,
                "forward_store",
                "the forwarding store is unavailable",
            ),
        ];
        for (refusal, retry, name, text) in cases {
            assert_eq!(refusal.retry(), retry, "{refusal}");
            assert_eq!(refusal.name(), name);
            assert_eq!(refusal.to_string(), text);
        }
    }
}
