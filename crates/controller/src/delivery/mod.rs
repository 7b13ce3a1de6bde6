//! Delivery: sends what the store holds: the scheduler ([`crate::delivery::scheduler`]) says when, an attempt
//! ([`crate::delivery::attempt`]) sends one delivery with the forge named by the current configuration,
//! and the policy ([`crate::delivery::policy`]) says what its answer means for the delivery. This module
//! wires them and holds what they share: the settings and the ways a delivery can fail.
//!
//! Limits: one attempt at a time per status (so states keep their order), a bounded number of
//! attempts in flight per forge host and in all (the host's slot is taken first, so one slow
//! forge cannot hold the slots every other forge needs), and a shared rate-limit budget per
//! (forge host, credential): once a forge says the budget is spent, every delivery on that
//! credential waits for the reset instead of each failing against it.
//!
//! Its parts: the stored values ([`record`]), the durable store ([`store`], with conditional-read
//! validators), the due queue ([`scheduler`]), the retry decision ([`policy`]), forge request
//! pacing ([`pacing`]) and one attempt ([`attempt`]).
//!
//! May use: [`crate::config`] (the current Providers and credentials, at send time) and
//! [`crate::metrics`]; never routing or the event API above it.

pub mod attempt;
pub mod pacing;
pub mod plan;
pub mod policy;
pub mod record;
pub mod scheduler;
pub mod store;
mod validators;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use notify::{Class, ProgressingMode};

use crate::config::catalog::SharedCatalog;
use crate::config::hooks::Stage;
use crate::delivery::attempt::Deliverer;
use crate::delivery::policy::Policy;
use crate::delivery::scheduler::Clock;
use crate::delivery::store::{Entry, Outbox, StoreError};

pub use crate::delivery::scheduler::Scheduler;

/// Tunables of delivery.
#[derive(Clone)]
pub struct Settings {
    /// First retry waits up to this long; each further retry doubles it.
    pub min_retry_delay: Duration,
    /// Cap of every retry wait: the backoff (before jitter) and what a forge asks for.
    pub max_retry_delay: Duration,
    /// Deliveries older than this are recorded as expired.
    pub max_age: Duration,
    /// Attempts in flight at once, in all.
    pub max_in_flight: usize,
    /// Attempts in flight at once against one forge host.
    pub max_in_flight_per_host: usize,
    pub progressing: ProgressingMode,
    /// Where warnings about an Alert go (Kubernetes Events on the Alert).
    pub notices: Arc<dyn crate::config::hooks::Notices>,
    /// `--public-url`: statuses link to this controller's delivery page unless the Provider
    /// has its own link template.
    pub public_url: Option<String>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where the time comes from.
    pub clock: Clock,
    /// `--read-before-write` (issue 12): read the forge's statuses before each write, as Flux
    /// does, instead of writing straight away.
    pub read_before_write: bool,
}

impl Settings {
    pub fn policy(&self) -> Policy {
        Policy {
            min_retry_delay: self.min_retry_delay,
            max_retry_delay: self.max_retry_delay,
            max_age: self.max_age,
        }
    }
}

/// Why a delivery failed, or one attempt of it. Answers "retry?" and has a fixed name for
/// metric labels; `Display` is the text Warning events and the history carry.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Not delivered within `--delivery-max-age`.
    #[error("not delivered within {max_age:?} (last error: {})", last_error.as_deref().unwrap_or("none"))]
    Expired {
        max_age: Duration,
        last_error: Option<String>,
    },
    /// The Provider's configuration cannot make a forge (Flux's wording).
    #[error("failed to initialize notifier for provider '{name}': {reason}")]
    Provider {
        name: String,
        reason: crate::config::error::ConfigError,
    },
    /// The event cannot become a status on this forge.
    #[error(transparent)]
    Plan(#[from] notify::PlanError),
    /// The forge refused or could not be reached.
    #[error(transparent)]
    Forge(#[from] notify::DeliveryError),
    /// The store could not read or write the delivery.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DeliveryError {
    /// Whether trying again may succeed.
    pub fn retry(&self) -> bool {
        match self {
            DeliveryError::Forge(e) => e.class() != Class::Permanent,
            DeliveryError::Store(e) => e.retry(),
            DeliveryError::Expired { .. } | DeliveryError::Plan(_) => false,
            DeliveryError::Provider { reason, .. } => reason.retry(),
        }
    }

    /// A short, fixed name for metric labels and logs.
    pub fn name(&self) -> &'static str {
        match self {
            DeliveryError::Expired { .. } => "expired",
            DeliveryError::Provider { .. } => "provider_invalid",
            DeliveryError::Plan(_) => "plan",
            DeliveryError::Forge(e) => Self::forge_error_name(e.class()),
            DeliveryError::Store(_) => "store",
        }
    }

    /// The name of a forge error of this class.
    pub fn forge_error_name(class: Class) -> &'static str {
        match class {
            Class::Permanent => "forge_permanent",
            Class::Transient { .. } => "forge_transient",
            Class::RateLimited { .. } => "forge_rate_limited",
        }
    }

    /// The HTTP status the forge answered with, if it answered.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            DeliveryError::Forge(e) => e.status(),
            _ => None,
        }
    }

    /// Flux's message for a failure to send to `object` (its Warning event text).
    pub fn notice(&self, object: &str) -> String {
        crate::config::hooks::failure_message(object, Stage::Send, &self.to_string())
    }

    /// What the history keeps: a forge's answer in Flux's words, anything else as it is.
    pub fn history_message(&self, object: &str) -> String {
        match self {
            DeliveryError::Forge(_) => self.notice(object),
            _ => self.to_string(),
        }
    }
}

/// Why a delivery ended without anything to send. Not a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("the provider was deleted or replaced")]
    ProviderGone,
    #[error("the provider is suspended")]
    ProviderSuspended,
    #[error("the provider is no longer a commit-status type")]
    NotCommitStatus,
    #[error("progressing event")]
    Progressing,
    /// An in-progress state for a commit that already has its final one (issue 11).
    #[error("the commit already has its final state; in-progress not posted again")]
    SupersededProgressing,
}

/// Starts delivery with what the store held at start-up. The returned future ends after
/// `shutdown`, once in-flight attempts finished or `grace` passed.
pub fn start(
    outbox: Outbox,
    catalog: SharedCatalog,
    settings: Settings,
    initial: Vec<Entry>,
    shutdown: CancellationToken,
    grace: Duration,
) -> (Scheduler, impl std::future::Future<Output = ()>) {
    let (clock, policy) = (settings.clock, settings.policy());
    let deliverer = Arc::new(Deliverer::new(outbox.clone(), catalog, settings));
    let (scheduler, run) =
        crate::delivery::scheduler::start(deliverer, clock, policy, initial, shutdown, grace);
    (scheduler, async move {
        run.await;
        outbox.flush().await;
    })
}

/// A `Progressing` delivery for a (Provider, commit, status name) that already had success or
/// failure posted: kustomize-controller sends one on every drift correction, and posting it
/// would turn a finished commit back to pending and spend the forge's per-commit status cap.
/// (The attempt checks the same on the record it loads; healing asks before storing one.)
pub fn superseded_progressing(outbox: &Outbox, record: &crate::delivery::store::Pending) -> bool {
    record.reason == crate::delivery::plan::PROGRESSING
        && outbox.final_posted(&record.key()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_answer_retry_and_have_fixed_names() {
        let expired = DeliveryError::Expired {
            max_age: Duration::from_secs(1),
            last_error: None,
        };
        assert!(!expired.retry());
        assert_eq!(expired.name(), "expired");
        assert_eq!(
            expired.to_string(),
            "not delivered within 1s (last error: none)"
        );
        assert_eq!(
            expired.notice("Kustomization/ns/app"),
            "failed to send notification for Kustomization/ns/app: not delivered within 1s (last error: none)"
        );
        assert_eq!(
            expired.history_message("Kustomization/ns/app"),
            "not delivered within 1s (last error: none)"
        );
        assert_eq!(Skip::Progressing.to_string(), "progressing event");
    }

    #[test]
    fn retry_and_name_table() {
        use crate::config::error::ConfigError;
        let provider = DeliveryError::Provider {
            name: "p".into(),
            reason: ConfigError::SecretNotFound {
                namespace: "ns".into(),
                name: "s".into(),
            },
        };
        assert_eq!(
            provider.to_string(),
            "failed to initialize notifier for provider 'p': failed to get secret 'ns/s': secrets \"s\" not found"
        );
        let cases: Vec<(DeliveryError, bool, &str)> = vec![
            (provider, false, "provider_invalid"),
            (notify::PlanError::MissingRevision.into(), false, "plan"),
            (StoreError::Unavailable.into(), true, "store"),
            (StoreError::Storage("disk".into()).into(), true, "store"),
            (StoreError::Closed.into(), false, "store"),
        ];
        for (error, retry, name) in cases {
            assert_eq!(error.retry(), retry, "{error}");
            assert_eq!(error.name(), name, "{error}");
            assert_eq!(error.http_status(), None);
        }
        // A forge's answer is named after the class the forge layer gave it, never its status.
        let after = Some(Duration::from_secs(1));
        for (class, name) in [
            (Class::Permanent, "forge_permanent"),
            (Class::Transient { after: None }, "forge_transient"),
            (Class::RateLimited { after }, "forge_rate_limited"),
        ] {
            assert_eq!(DeliveryError::forge_error_name(class), name);
        }
    }
}
