//! Fuzz target: Git address parsing (`notify::address`), building a `notify::Forge` of every kind
//! on the fuzzed address, and planning a fixed status event with each forge that builds. No
//! network I/O: only `Forge::new` and `Forge::plan` (both sans-I/O) are called.
#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use notify::address::GitAddress;
use notify::{
    ClientCache, Credentials, Forge, ForgeConfig, ForgeKind, NetworkConfig, ProgressingMode,
    Secret, StatusEvent,
};

/// Built once: the reqwest client for the default network settings is cached in it.
static CLIENTS: LazyLock<ClientCache> = LazyLock::new(ClientCache::new);

static METADATA: LazyLock<BTreeMap<String, String>> = LazyLock::new(|| {
    BTreeMap::from([(
        "revision".to_owned(),
        "main@sha1:5394cb7f48332b2de7c17dd8b8384bbc84b7e738".to_owned(),
    )])
});

fuzz_target!(|data: &[u8]| {
    let address = String::from_utf8_lossy(data);

    let parsed = GitAddress::parse(&address);
    let _ = parsed.hostname();
    let _ = parsed.segments();
    assert_eq!(
        parsed.host,
        format!("{}://{}", parsed.scheme, parsed.authority)
    );
    assert!(!parsed.id.starts_with('/'), "id {:?}", parsed.id);

    let events = [
        ("info", "ReconciliationSucceeded", None, None),
        (
            "error",
            "ReconciliationFailed",
            Some("https://ci.example.com/runs/1"),
            Some("apply failed"),
        ),
        ("info", "Progressing", None, None),
    ]
    .map(|(severity, reason, target_url, description)| StatusEvent {
        status_id: "kustomization/apps/0c9c2e41",
        kind: "Kustomization",
        name: "apps",
        reason,
        severity,
        metadata: &METADATA,
        target_url,
        description,
        status_id_from_expr: false,
    });

    for kind in ForgeKind::ALL {
        let config = ForgeConfig {
            kind,
            address: address.clone().into_owned(),
            credentials: Credentials {
                token: Some(Secret::new("fuzz-user:fuzz-token")),
                ..Credentials::default()
            },
            network: NetworkConfig::default(),
        };
        let Ok(forge) = Forge::new(config, &CLIENTS) else {
            continue;
        };
        assert_eq!(forge.kind(), kind);
        let _ = forge.credential_fingerprint();
        for event in &events {
            if let Ok(Some(plan)) = forge.plan(event, ProgressingMode::Pending) {
                let _ = plan.fingerprint();
            }
        }
    }
});
