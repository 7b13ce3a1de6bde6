//! The event API: the listeners with bounded resources ([`listener`]), the request-body budget
//! ([`budget`]), duplicate suppression ([`ratelimit`]), the handler that stores what an event
//! causes ([`server`]), forwarding of accepted events (`--forward-events-to`, [`forward`]), and
//! why an event is refused ([`refusal`]).
//!
//! May use: [`crate::route`], [`crate::delivery`], [`crate::config`], [`crate::metrics`].

pub mod budget;
pub mod forward;
pub mod listener;
pub mod ratelimit;
pub mod refusal;
pub mod server;
