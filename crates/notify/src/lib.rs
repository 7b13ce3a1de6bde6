//! Forge protocol knowledge and the one transport that speaks it: from a commit status to the
//! exact HTTP exchange each Git forge expects, and the outcome of sending it.
//!
//! The split follows `reference/design.md` §7.2: everything under [`forge`] is sans-I/O (it
//! builds [`ForgeRequest`]s and reads response bodies), and [`Forge::execute`] is the only code
//! that touches the network. Nothing here knows about Kubernetes or manifests; the controller
//! hands in a [`ForgeConfig`] and a [`StatusEvent`].

pub mod address;
mod credentials;
pub mod describe;
mod error;
mod exchange;
pub mod forge;
mod request;
pub mod revision;
mod secret;
pub mod token_cache;
mod transport;

pub use credentials::{ClientCache, Credentials, GitHubApp};
pub use error::{Class, ConfigError, DeliveryError, PlanError, Retry};
pub use exchange::{Exchange, MAX_VALIDATED_BYTES, RateLimit, Validator};
pub use forge::{
    Forge, ForgeConfig, ForgeKind, Outcome, Plan, ProgressingMode, Status, StatusEvent,
};
pub use request::ForgeRequest;
pub use secret::Secret;
pub use transport::{NetworkConfig, PROXY_SCHEMES, ProxyConfig, TlsConfig, error_chain};
