//! What the event path needs from its surroundings, which differ between standalone mode and
//! Kubernetes: where warnings about an Alert go, and how an object's labels are read.

use std::collections::BTreeMap;

use futures::future::BoxFuture;

use api::Event;

/// Flux's reasons for Warning events on an Alert.
pub mod reason {
    pub const DISPATCH_FAILED: &str = "NotificationDispatchFailed";
    pub const INVALID_CONFIG: &str = "InvalidConfig";
    pub const SOURCE_FETCH_FAILED: &str = "SourceFetchFailed";
    pub const METADATA_APPEND_FAILED: &str = "MetadataAppendFailed";
}

/// Receives warnings about an Alert (`namespace/name`). In Kubernetes they become Events on
/// the Alert; standalone, the log line written where the problem was found is all there is.
pub trait Notices: Send + Sync {
    fn warning(&self, alert: &str, reason: &'static str, message: String);
}

/// Standalone: nothing beyond the logs.
pub struct LogOnly;

impl Notices for LogOnly {
    fn warning(&self, _alert: &str, _reason: &'static str, _message: String) {}
}

/// Reads the labels of an event's involved object (for `matchLabels`).
pub trait LabelSource: Send + Sync {
    fn labels<'a>(
        &'a self,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, LabelError>>;
}

/// Why an object's labels could not be read: the source's own error (the cluster's answer).
/// The event is routed without the Alerts that need them; the next event asks again.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct LabelError(pub Box<dyn std::error::Error + Send + Sync>);

impl LabelError {
    /// Whether asking again may succeed: the object or the API server may be back.
    pub fn retry(&self) -> bool {
        true
    }

    /// A short, fixed name for metric labels and logs.
    pub fn name(&self) -> &'static str {
        "labels"
    }
}

/// Where in Flux's pipeline a failure happened, which decides the words it is reported with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Before anything could be sent: "failed to dispatch notification".
    Dispatch,
    /// While building what to send: "failed to send notification".
    Send,
}

/// The message Flux records for a failure (its Kubernetes event text).
pub fn failure_message(object: &str, stage: Stage, error: &str) -> String {
    match stage {
        Stage::Dispatch => format!("failed to dispatch notification for {object}: {error}"),
        Stage::Send => format!("failed to send notification for {object}: {error}"),
    }
}
