//! The controller: event API, routing of events to forges, manifests, and the process wiring.

pub mod app;
pub mod args;
pub mod budget;
pub mod catalog;
pub mod cli;
pub mod deliveries_cmd;
pub mod delivery;
pub mod forward;
pub mod goflags;
pub mod hooks;
pub mod kube;
pub mod listener;
pub mod manifests;
pub mod metrics;
pub mod outbox;
pub mod pacing;
pub mod pages;
pub mod ratelimit;
pub mod resolve;
pub mod route;
pub mod server;
pub mod status_expr;
pub mod telemetry;
mod validators;
