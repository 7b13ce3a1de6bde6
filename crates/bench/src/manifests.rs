//! Generated Provider, Secret and Alert manifests for one controller run.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

/// Kinds the "cannot match" Alerts select in the events' namespace (events are always
/// Kustomizations).
const OTHER_KINDS: [&str; 5] = [
    "HelmRelease",
    "GitRepository",
    "OCIRepository",
    "HelmChart",
    "Bucket",
];

/// What to load. Everything lives in namespace `bench`.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// GitHub Providers `p-<i>`, each with its token Secret.
    pub providers: usize,
    /// Alerts `a-<j>` selecting Kustomization `app-<j>` in `bench`, round-robin over the
    /// Providers.
    pub alerts: usize,
    /// Alerts that can never select a benchmark event: half select Kustomizations in other
    /// namespaces, half other kinds in `bench`.
    pub foreign_alerts: usize,
    /// Alerts that cannot select a benchmark event either, but share its namespace and kind:
    /// Kustomization `other-<k>` in `bench`.
    pub other_name_alerts: usize,
}

impl Layout {
    pub const EMPTY: Layout = Layout {
        providers: 0,
        alerts: 0,
        foreign_alerts: 0,
        other_name_alerts: 0,
    };

    /// Writes `providers.yaml`, `secrets.yaml` and `alerts.yaml` into `dir`. Provider
    /// addresses are not on github.com, so they are GitHub Enterprise with the API at
    /// `http://<stub>/api/v3/`.
    pub fn write(&self, dir: &Path, stub: SocketAddr) -> anyhow::Result<()> {
        if self.providers == 0 {
            return Ok(());
        }
        let (mut providers, mut secrets, mut alerts) =
            (String::new(), String::new(), String::new());
        for i in 0..self.providers {
            write!(
                providers,
                "apiVersion: notification.toolkit.fluxcd.io/v1beta3
kind: Provider
metadata:
  name: p-{i}
  namespace: bench
spec:
  type: github
  address: http://{stub}/org/repo-{i}
  secretRef:
    name: p-{i}-token
---
"
            )?;
            write!(
                secrets,
                "apiVersion: v1
kind: Secret
metadata:
  name: p-{i}-token
  namespace: bench
stringData:
  token: bench-token-{i}
---
"
            )?;
        }
        for j in 0..self.alerts {
            let source = format!("kind: Kustomization\n      name: app-{j}");
            alert(&mut alerts, &format!("a-{j}"), j % self.providers, &source)?;
        }
        for k in 0..self.foreign_alerts {
            let source = if k % 2 == 0 {
                format!(
                    "kind: Kustomization\n      namespace: team-{}\n      name: '*'",
                    k % 100
                )
            } else {
                format!(
                    "kind: {}\n      name: '*'",
                    OTHER_KINDS[k % OTHER_KINDS.len()]
                )
            };
            alert(&mut alerts, &format!("f-{k}"), k % self.providers, &source)?;
        }
        for k in 0..self.other_name_alerts {
            let source = format!("kind: Kustomization\n      name: other-{k}");
            alert(&mut alerts, &format!("o-{k}"), k % self.providers, &source)?;
        }
        std::fs::write(dir.join("providers.yaml"), providers)?;
        std::fs::write(dir.join("secrets.yaml"), secrets)?;
        std::fs::write(dir.join("alerts.yaml"), alerts)?;
        Ok(())
    }
}

fn alert(out: &mut String, name: &str, provider: usize, source: &str) -> std::fmt::Result {
    write!(
        out,
        "apiVersion: notification.toolkit.fluxcd.io/v1beta3
kind: Alert
metadata:
  name: {name}
  namespace: bench
spec:
  providerRef:
    name: p-{provider}
  eventSources:
    - {source}
---
"
    )
}
