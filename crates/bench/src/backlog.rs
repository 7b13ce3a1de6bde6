//! The backlog scenario (issue 10): 2,000 pending deliveries made from events with 100 KiB
//! messages while the forge is down. Memory must not grow with the backlog (a pending delivery
//! is held as its key and scheduling data; its record stays in the store), before and after a
//! restart, and every delivery must land once the forge heals.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::controller::Controller;
use crate::load::Conn;
use crate::manifests::Layout;
use crate::report::Figure;
use crate::servers::StubForge;
use crate::{Bench, MIB};

/// Pending deliveries in the backlog.
const DELIVERIES: u64 = 2000;
/// Size of each event's message.
const MESSAGE_BYTES: usize = 100 * 1024;
/// Connections the events are sent over.
const CONNS: u64 = 8;
/// The RSS bound the issue sets, before and after a restart.
const RSS_BOUND_MIB: f64 = 96.0;
/// How long the healed forge may take to receive every status (retries wait up to
/// `--max-retry-delay`, 5 s here).
const DELIVER_TIMEOUT: Duration = Duration::from_secs(180);

/// A success event for `app-0` (selected by the one Alert) at commit `i`, with a 100 KiB
/// message.
fn event(i: u64, message: &str) -> Bytes {
    let sha = format!("{:040x}", 0xba61_0000_0000_u64 + i);
    Bytes::from(format!(
        r#"{{"involvedObject":{{"apiVersion":"kustomize.toolkit.fluxcd.io/v1","kind":"Kustomization","namespace":"bench","name":"app-0","uid":"7d0cdc51-ddcf-4743-b223-83ca5c699632"}},"severity":"info","timestamp":"2026-11-25T07:26:19Z","message":"{message}","reason":"ReconciliationSucceeded","metadata":{{"kustomize.toolkit.fluxcd.io/revision":"main@sha1:{sha}","kustomize.toolkit.fluxcd.io/commit_status":"update"}},"reportingController":"kustomize-controller","reportingInstance":"kustomize-controller-7f5c8b6d9c-x2x9z"}}"#
    ))
}

/// Sends the backlog's events, retrying a 503 (a full queue) after a short pause; how many
/// were accepted.
async fn send_all(c: &Controller) -> anyhow::Result<u64> {
    let message: Arc<str> = "x".repeat(MESSAGE_BYTES).into();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONNS {
        let (events, next, message) = (c.events, next.clone(), message.clone());
        workers.spawn(async move {
            let mut conn = Conn::new(events);
            let mut accepted = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= DELIVERIES {
                    return anyhow::Ok(accepted);
                }
                let body = event(i, &message);
                for _ in 0..100 {
                    match conn.post(body.clone()).await? {
                        202 => {
                            accepted += 1;
                            break;
                        }
                        503 => tokio::time::sleep(Duration::from_millis(50)).await,
                        other => anyhow::bail!("event {i} answered {other}"),
                    }
                }
            }
        });
    }
    let mut accepted = 0;
    while let Some(n) = workers.join_next().await {
        accepted += n??;
    }
    Ok(accepted)
}

impl Bench {
    pub async fn backlog(&self) -> Vec<Figure> {
        self.backlog_run().await.unwrap_or_else(|e| {
            vec![Figure::missing(
                "backlog_rss_mib",
                "backlog: RSS, 2,000 pending deliveries of 100 KiB events",
                e.to_string(),
            )]
        })
    }

    async fn backlog_run(&self) -> anyhow::Result<Vec<Figure>> {
        let stub = StubForge::start().await?;
        stub.stats.set_down(true);
        let dir = self.run_dir("backlog")?;
        let manifests = dir.join("manifests");
        let layout = Layout {
            providers: 1,
            alerts: 1,
            foreign_alerts: 0,
            other_name_alerts: 0,
        };
        layout.write(&manifests, stub.addr)?;
        let flags = ["--max-retry-delay=5s"];
        let c = Controller::start_with(&self.binary, &manifests, &dir, &flags, &[]).await?;
        let started = Instant::now();
        let accepted = send_all(&c).await?;
        let ingest = started.elapsed();
        tokio::time::sleep(self.settle * 2).await;
        let before = c.memory()?;
        c.stop().await;

        let c = Controller::start_with(&self.binary, &manifests, &dir, &flags, &[]).await?;
        // Long enough for every delivery to be attempted (and refused) once after the restart.
        tokio::time::sleep(self.settle * 3).await;
        let after = c.memory()?;

        let healed = Instant::now();
        stub.stats.set_down(false);
        let delivered_before = stub.stats.posts();
        while stub.stats.posts() < accepted && healed.elapsed() < DELIVER_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let landed = healed.elapsed();
        let delivered = stub.stats.posts();
        let end = c.memory()?;
        let errors = c.errors();
        c.stop().await;

        let mib = |kib: u64| kib as f64 / MIB;
        Ok(vec![
            Figure::new(
                "backlog_rss_mib",
                "backlog: RSS, 2,000 pending deliveries of 100 KiB events (forge down)",
                mib(before.rss_kib),
                "MiB",
            )
            .at_most(RSS_BOUND_MIB, "≤ 96 MiB")
            .note(format!(
                "{accepted} accepted in {:.1} s; VmHWM {:.1} MiB",
                ingest.as_secs_f64(),
                mib(before.hwm_kib)
            )),
            Figure::new(
                "backlog_rss_restart_mib",
                "backlog: RSS after a restart, every delivery attempted once",
                mib(after.rss_kib),
                "MiB",
            )
            .at_most(RSS_BOUND_MIB, "≤ 96 MiB")
            .note(format!("VmHWM {:.1} MiB", mib(after.hwm_kib))),
            Figure::new(
                "backlog_delivered",
                "backlog: statuses received once the forge healed",
                delivered as f64,
                "",
            )
            .at_least(accepted as f64, format!("= {accepted}"))
            .note(format!(
                "all within {:.1} s of healing ({delivered_before} before); RSS then {:.1} MiB{}",
                landed.as_secs_f64(),
                mib(end.rss_kib),
                if errors.is_empty() {
                    String::new()
                } else {
                    format!("; controller errors: {errors}")
                }
            )),
        ])
    }
}
