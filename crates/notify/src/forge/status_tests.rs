//! A planned [`Status`] kept (stored as JSON) and built into requests later gives the same
//! exchange as the plan it came from, on every forge, with the credentials current then.

use std::collections::BTreeMap;

use super::*;
use crate::{Credentials, NetworkConfig, Secret};

const SHA: &str = "5394cb7f48332b2de7c17dd8b8384bbc84b7e738";

fn forge(kind: ForgeKind, token: &str) -> Forge {
    let address = match kind {
        ForgeKind::GitHub => "https://github.com/o/r",
        ForgeKind::GitLab => "https://gitlab.com/o/r",
        ForgeKind::Gitea => "https://gitea.example.com/o/r",
        ForgeKind::Bitbucket => "https://bitbucket.org/o/r",
        ForgeKind::BitbucketServer => "https://bb.example.com/scm/PRJ/r.git",
        ForgeKind::AzureDevOps => "https://dev.azure.com/o/p/_git/r",
    };
    let token = match kind {
        ForgeKind::Bitbucket => format!("u:{token}"),
        _ => token.to_owned(),
    };
    let config = ForgeConfig {
        kind,
        address: address.to_owned(),
        credentials: Credentials {
            token: Some(Secret::new(token)),
            ..Credentials::default()
        },
        network: NetworkConfig::default(),
    };
    Forge::new_with_env(config, &ClientCache::new(), |_| None).unwrap()
}

fn metadata() -> BTreeMap<String, String> {
    [
        ("revision".to_owned(), format!("main@sha1:{SHA}")),
        ("summary".to_owned(), "cluster=prod".to_owned()),
    ]
    .into()
}

#[test]
fn a_kept_status_builds_the_planned_exchange_on_every_forge() {
    let metadata = metadata();
    for kind in ForgeKind::ALL {
        for (from_expr, target_url, severity) in [
            (false, None, "info"),
            (true, Some("https://ci.example.com/run/1"), "error"),
        ] {
            let ev = StatusEvent {
                status_id: "kustomization/app/0c9c2e41",
                kind: "Kustomization",
                name: "app",
                reason: "ReconciliationSucceeded",
                severity,
                metadata: &metadata,
                target_url,
                status_id_from_expr: from_expr,
                ..StatusEvent::default()
            };
            let plan = forge(kind, "old-token")
                .plan(&ev, ProgressingMode::Pending)
                .unwrap()
                .unwrap();
            let json = serde_json::to_string(&plan.status()).unwrap();
            assert!(!json.contains("old-token"), "{kind}: {json}");
            let kept: Status = serde_json::from_str(&json).unwrap();
            assert_eq!(kept, plan.status());
            let again = forge(kind, "old-token").requests(&kept).unwrap();
            assert_eq!(again.write, plan.write, "{kind}");
            assert_eq!(again.read, plan.read, "{kind}");
            assert_eq!(again.fingerprint(), plan.fingerprint(), "{kind}");
            assert_eq!(
                (again.sha, again.state, again.description, again.status_id),
                (plan.sha, plan.state, plan.description, plan.status_id)
            );
            // A rotated credential is used by the requests built after the rotation.
            let rotated = forge(kind, "new-token").requests(&kept).unwrap();
            assert_eq!(rotated.write.body, plan.write.body, "{kind}");
            assert_ne!(rotated.write.headers, plan.write.headers, "{kind}");
        }
    }
}

#[test]
fn a_status_is_only_sent_by_the_forge_it_was_planned_for() {
    let metadata = metadata();
    let ev = StatusEvent {
        status_id: "kustomization/app/0c9c2e41",
        reason: "Progressing",
        severity: "info",
        metadata: &metadata,
        ..StatusEvent::default()
    };
    let status = forge(ForgeKind::GitHub, "t")
        .plan(&ev, ProgressingMode::Pending)
        .unwrap()
        .unwrap()
        .status();
    assert_eq!(status.state, "pending");
    let err = forge(ForgeKind::GitLab, "t").requests(&status).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot send a status planned for github with a gitlab provider: the provider's type changed"
    );
    let odd = Status {
        state: "exploded".into(),
        ..status
    };
    let err = forge(ForgeKind::GitHub, "t").requests(&odd).unwrap_err();
    assert!(
        err.to_string().ends_with("unknown state \"exploded\""),
        "{err}"
    );
}
