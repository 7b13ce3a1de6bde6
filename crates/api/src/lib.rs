//! Wire and manifest types shared by every part of the controller: the event Flux controllers
//! POST, and the `Provider`, `Alert` and `Secret` objects that route it, with the validation
//! Flux's CRDs apply. No I/O happens here.

pub mod crd;
pub mod event;
#[cfg(any(test, feature = "test-fixtures"))]
pub mod fixtures;
pub mod manifest;

pub use event::{DecodeError, Event, ObjectReference};
pub use manifest::{
    Alert, AlertSpec, COMMIT_STATUS_PROVIDER_TYPES, CrossNamespaceObjectReference, FieldError,
    LocalObjectReference, ObjectMeta, PROVIDER_TYPES, Provider, ProviderSpec, Secret,
};
pub use manifest::{AlertResource, OwnAlertResource, OwnProviderResource, ProviderResource};

/// The API group of Flux's notification objects.
pub const NOTIFICATION_GROUP: &str = "notification.toolkit.fluxcd.io";

/// Our own API group for the same `Provider` and `Alert` kinds (same versions, schema and
/// validation), for running beside Flux's notification-controller, which does not watch it.
pub const OWN_GROUP: &str = "notification.commit-status-controller.dev";

/// The API groups whose `Provider` and `Alert` objects we understand.
pub const GROUPS: [&str; 2] = [NOTIFICATION_GROUP, OWN_GROUP];

/// Metadata keys carrying this prefix are event-level annotations (RFC-0008), kept whatever the
/// emitting object's group.
pub const EVENT_METADATA_PREFIX: &str = "event.toolkit.fluxcd.io/";
