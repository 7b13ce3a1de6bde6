//! The operator's surfaces: the flags ([`args`], with Go's flag syntax in [`goflags`]), the
//! subcommands ([`cli`], [`history`]), the delivery pages and history API on `--pages-addr`
//! ([`pages`], [`history_api`]), the health probes ([`health`]) and logging ([`telemetry`]).
//! Metrics are [`crate::metrics`], one floor down, since every layer records them.
//!
//! May use: every floor below: [`crate::kube`], [`crate::events`], [`crate::route`],
//! [`crate::delivery`], [`crate::config`], [`crate::metrics`].

pub mod args;
pub mod cli;
pub mod goflags;
pub mod health;
pub mod history;
pub mod history_api;
pub mod pages;
pub mod telemetry;
