//! Shared fixtures: events, forge construction and the checks every stub test repeats.

use std::collections::BTreeMap;

use notify::{
    ClientCache, Credentials, DeliveryError, Forge, ForgeConfig, ForgeKind, NetworkConfig, Plan,
    ProgressingMode, Secret, StatusEvent,
};
use testkit::StubForge;

pub const SHA: &str = "5394cb7f48332b2de7c17dd8b8384bbc84b7e738";
pub const ID: &str = "kustomization/flux-system/0c9c2e41";

pub fn metadata() -> BTreeMap<String, String> {
    BTreeMap::from([("revision".to_owned(), format!("main@sha1:{SHA}"))])
}

pub fn event(metadata: &BTreeMap<String, String>) -> StatusEvent<'_> {
    StatusEvent {
        status_id: ID,
        kind: "Kustomization",
        name: "flux-system",
        reason: "ReconciliationSucceeded",
        severity: "info",
        metadata,
        ..StatusEvent::default()
    }
}

pub fn token(value: &str) -> Credentials {
    Credentials {
        token: Some(Secret::new(value)),
        ..Credentials::default()
    }
}

pub fn forge_with(
    kind: ForgeKind,
    address: String,
    credentials: Credentials,
    network: NetworkConfig,
    clients: &ClientCache,
) -> Forge {
    Forge::new(
        ForgeConfig {
            kind,
            address,
            credentials,
            network,
        },
        clients,
    )
    .unwrap()
}

pub fn forge(kind: ForgeKind, address: String, credentials: Credentials) -> Forge {
    forge_with(
        kind,
        address,
        credentials,
        NetworkConfig::default(),
        &ClientCache::new(),
    )
}

pub fn plan(forge: &Forge, ev: &StatusEvent<'_>) -> Plan {
    forge.plan(ev, ProgressingMode::Pending).unwrap().unwrap()
}

/// Every request the stub saw followed the forge's published contract.
pub fn assert_contract(stub: &StubForge) {
    let violations = stub.violations();
    assert!(violations.is_empty(), "{violations:#?}");
}

pub fn assert_secret_free(err: &DeliveryError, secrets: &[&str]) {
    for text in [err.to_string(), format!("{err:?}")] {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}
