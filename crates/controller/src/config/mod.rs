//! Where configuration comes from and what it becomes: the Provider/Alert/Secret manifests read
//! from files ([`files`]; the Kubernetes source is `kube::sources`, a floor above), a Provider resolved
//! into a forge configuration ([`resolve`]), the immutable snapshot the event path reads
//! ([`catalog`]), what the event path needs from its surroundings ([`hooks`]), and why
//! configuration cannot work ([`error`]).
//!
//! May use: the `api` and `notify` crates and [`crate::metrics`]; nothing else of the crate.

pub mod catalog;
pub mod error;
pub mod files;
pub mod hooks;
pub mod resolve;
pub mod status_expr;
pub mod yaml;
