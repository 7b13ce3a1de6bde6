//! The request-count scenario (issue 12): forge requests per new status (distinct commits) and
//! per repeated status, for each forge, against testkit's contract-validating stubs. Flux
//! makes 2 per new status (a read, then the write) and 1 per repeat (the read).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use testkit::{ForgeKind, StubForge, StubOptions};

use crate::Bench;
use crate::controller::Controller;
use crate::load::Conn;
use crate::report::Figure;

/// New statuses (distinct commits) per forge, then repeats of the first ones.
const NEW: usize = 200;
const REPEATS: usize = 100;
const DRAIN: Duration = Duration::from_secs(60);

/// The forges measured, with the figure keys and the Provider each needs.
const FORGES: [(ForgeKind, &str, &str, &str); 7] = [
    (
        ForgeKind::GitHub,
        "github",
        "requests_per_new_github",
        "requests_per_repeat_github",
    ),
    (
        ForgeKind::GitLab,
        "gitlab",
        "requests_per_new_gitlab",
        "requests_per_repeat_gitlab",
    ),
    (
        ForgeKind::Gitea,
        "gitea",
        "requests_per_new_gitea",
        "requests_per_repeat_gitea",
    ),
    (
        ForgeKind::Forgejo,
        "forgejo",
        "requests_per_new_forgejo",
        "requests_per_repeat_forgejo",
    ),
    (
        ForgeKind::BitbucketCloud,
        "bitbucket",
        "requests_per_new_bitbucket",
        "requests_per_repeat_bitbucket",
    ),
    (
        ForgeKind::BitbucketServer,
        "bitbucketserver",
        "requests_per_new_bitbucketserver",
        "requests_per_repeat_bitbucketserver",
    ),
    (
        ForgeKind::AzureDevOps,
        "azuredevops",
        "requests_per_new_azuredevops",
        "requests_per_repeat_azuredevops",
    ),
];

/// Provider type and repository address for a stub of `kind`.
fn provider(kind: ForgeKind, base: &str) -> (&'static str, String, &'static str) {
    match kind {
        ForgeKind::GitHub => ("github", format!("{base}/org/repo"), "ghp_bench"),
        ForgeKind::GitLab => ("gitlab", format!("{base}/group/repo"), "glpat-bench"),
        ForgeKind::Gitea | ForgeKind::Forgejo => ("gitea", format!("{base}/org/repo"), "gitea"),
        ForgeKind::BitbucketCloud => (
            "bitbucket",
            "https://bitbucket.org/ws/repo".to_owned(),
            "user:app-password",
        ),
        ForgeKind::BitbucketServer => {
            ("bitbucketserver", format!("{base}/scm/PRJ/repo.git"), "bbs")
        }
        ForgeKind::AzureDevOps => ("azuredevops", format!("{base}/org/proj/_git/repo"), "pat"),
    }
}

fn manifests(kind: ForgeKind, base: &str) -> String {
    let (type_, address, token) = provider(kind, base);
    format!(
        "apiVersion: notification.toolkit.fluxcd.io/v1beta3
kind: Provider
metadata: {{name: forge, namespace: bench, uid: 0c9c2e41-d2f9-4f9b-9c41-bebc1984d67a}}
spec: {{type: {type_}, address: \"{address}\", secretRef: {{name: token}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: token, namespace: bench}}
stringData: {{token: \"{token}\"}}
---
apiVersion: notification.toolkit.fluxcd.io/v1beta3
kind: Alert
metadata: {{name: forge, namespace: bench}}
spec:
  providerRef: {{name: forge}}
  eventSources: [{{kind: Kustomization, name: '*'}}]
"
    )
}

fn event(sha: usize, message: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"involvedObject":{{"apiVersion":"kustomize.toolkit.fluxcd.io/v1","kind":"Kustomization","namespace":"bench","name":"app","uid":"7d0cdc51-ddcf-4743-b223-83ca5c699632"}},"severity":"info","timestamp":"2026-11-25T07:26:19Z","message":"{message}","reason":"ReconciliationSucceeded","metadata":{{"kustomize.toolkit.fluxcd.io/revision":"main@sha1:{sha:040x}","kustomize.toolkit.fluxcd.io/commit_status":"update"}},"reportingController":"kustomize-controller","reportingInstance":"kustomize-controller-7f5c8b6d9c-x2x9z"}}"#
    ))
}

/// Outcomes in the controller's delivery history (on its pages listener).
async fn outcomes(pages: SocketAddr) -> anyhow::Result<usize> {
    let stream = tokio::net::TcpStream::connect(pages).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/api/v1/deliveries?limit=1000")
        .header(hyper::header::HOST, pages.to_string())
        .body(Full::new(Bytes::new()))?;
    let body = sender
        .send_request(req)
        .await?
        .into_body()
        .collect()
        .await?;
    let list: serde_json::Value = serde_json::from_slice(&body.to_bytes())?;
    Ok(list.as_array().map_or(0, Vec::len))
}

async fn wait_outcomes(pages: SocketAddr, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + DRAIN;
    while outcomes(pages).await? < n {
        if Instant::now() > deadline {
            bail!("fewer than {n} deliveries finished within {DRAIN:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn post_all(conn: &mut Conn, events: impl Iterator<Item = Bytes>) -> anyhow::Result<()> {
    for body in events {
        let status = conn.post(body).await?;
        if status != 202 {
            bail!("the controller answered {status} to an event");
        }
    }
    Ok(())
}

impl Bench {
    /// Forge requests per new status and per repeat, for every forge.
    pub(crate) async fn requests(&self) -> Vec<Figure> {
        let mut out = Vec::new();
        for (kind, name, new_key, repeat_key) in FORGES {
            let new_label = format!("{name}: forge requests per new status");
            let repeat_label = format!("{name}: forge requests per repeated status");
            match self.count_requests(kind).await {
                Ok((per_new, per_repeat, note)) => {
                    out.push(
                        Figure::new(new_key, new_label, per_new, "req")
                            .at_most(1.0, "1.0 (Flux: 2)")
                            .note(note),
                    );
                    out.push(
                        Figure::new(repeat_key, repeat_label, per_repeat, "req")
                            .at_most(0.0, "0 (Flux: 1)"),
                    );
                }
                Err(e) => {
                    out.push(Figure::missing(new_key, new_label, format!("{e:#}")));
                    out.push(Figure::missing(repeat_key, repeat_label, format!("{e:#}")));
                }
            }
        }
        out
    }

    async fn count_requests(&self, kind: ForgeKind) -> anyhow::Result<(f64, f64, String)> {
        let stub = StubForge::start(kind, StubOptions::default()).await;
        let dir = self.run_dir(kind.contract_name())?;
        std::fs::write(
            dir.join("manifests/forge.yaml"),
            manifests(kind, &stub.base_url()),
        )?;
        let api = format!("{}/2.0", stub.base_url());
        let c = Controller::start_with(
            &self.binary,
            &dir.join("manifests"),
            &dir,
            &[],
            &[("BITBUCKET_API_BASE_URL", &api)],
        )
        .await?;
        let mut conn = Conn::new(c.events);
        let message = "Reconciliation finished in 2.1s, next run in 10m0s";
        post_all(&mut conn, (0..NEW).map(|i| event(i, message))).await?;
        wait_outcomes(c.pages, NEW)
            .await
            .with_context(|| c.errors())?;
        let after_new = stub.requests().len();
        // The same statuses again; a new message makes each a new event for the duplicate
        // filter, as a later reconciliation of the same commit is.
        let again = "Reconciliation finished in 1.9s, next run in 10m0s";
        post_all(&mut conn, (0..REPEATS).map(|i| event(i, again))).await?;
        wait_outcomes(c.pages, NEW + REPEATS)
            .await
            .with_context(|| c.errors())?;
        let after_repeats = stub.requests().len();
        c.stop().await;
        let violations = stub.violations();
        if !violations.is_empty() {
            bail!("requests off the forge's contract: {:?}", &violations[..1]);
        }
        let posted: std::collections::BTreeSet<_> = (0..NEW)
            .filter(|i| {
                !stub
                    .statuses(stub_repo(kind), &format!("{i:040x}"))
                    .is_empty()
            })
            .collect();
        let note = format!(
            "{NEW} statuses on distinct commits: {after_new} requests, {} statuses on the stub; {REPEATS} repeats: {} requests",
            posted.len(),
            after_repeats - after_new
        );
        Ok((
            after_new as f64 / NEW as f64,
            (after_repeats - after_new) as f64 / REPEATS as f64,
            note,
        ))
    }
}

/// The repository key the stub files statuses under.
fn stub_repo(kind: ForgeKind) -> &'static str {
    match kind {
        ForgeKind::GitHub | ForgeKind::Gitea | ForgeKind::Forgejo => "org/repo",
        ForgeKind::GitLab => "group/repo",
        ForgeKind::BitbucketCloud => "ws/repo",
        ForgeKind::BitbucketServer => "PRJ/repo",
        ForgeKind::AzureDevOps => "org/proj/repo",
    }
}
