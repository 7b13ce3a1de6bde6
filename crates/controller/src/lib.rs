//! The controller: where its configuration comes from, the event API, routing of events to
//! forges, durable delivery, and the operator's surfaces, wired into one process by [`app`].
//!
//! The folders read as the path of an event, top floor first; a module may use the floors
//! below its own, never one above: [`app`] → [`ops`] → [`kube`] → [`events`] → [`route`] →
//! [`delivery`] → [`config`] → [`metrics`].

pub mod app;
pub mod config;
pub mod delivery;
pub mod events;
pub mod kube;
pub mod metrics;
pub mod ops;
pub mod route;
