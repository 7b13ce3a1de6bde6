//! Test doubles that run for real on loopback: contract-validating forge stubs (the GitHub one
//! with GitHub's App API too), a forwarding proxy, a SOCKS5 proxy, a recording event receiver
//! (a stand-in for Flux's notification-controller) and TLS material, for the integration tests
//! of the other crates.

pub mod contract;
pub mod github_app;
pub mod pki;
pub mod proxy;
pub mod receiver;
pub mod socks;
pub mod stub;

pub use contract::{Contract, Direction, OperationMatch, RecordedRequest, RequestCheck};
pub use github_app::AppCall;
pub use pki::{ServerTls, TestPki};
pub use proxy::{ForwardProxy, ProxyOptions};
pub use receiver::{EventReceiver, Received};
pub use socks::SocksProxy;
pub use stub::{ForgeKind, Matcher, ScriptedResponse, StubForge, StubOptions};
