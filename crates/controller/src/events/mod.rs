//! The event API: the listeners with bounded resources ([`listener`]), the request-body budget
//! ([`budget`]), duplicate suppression ([`ratelimit`]), the handler that stores what an event
//! causes ([`server`]) and forwarding of accepted events (`--forward-events-to`, [`forward`]).
//!
//! May use: [`crate::route`], [`crate::delivery`], [`crate::config`], [`crate::metrics`].

pub mod budget;
pub mod forward;
pub mod listener;
pub mod ratelimit;
pub mod server;
