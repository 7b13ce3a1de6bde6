//! `commit-status-controller deliveries`: the delivery history (or the queue) from a data
//! directory, or from a running controller's `GET /api/v1/deliveries` (on `--pages-addr`).

use std::fmt::Write as _;

use anyhow::Context as _;

use crate::args::{DeliveriesArgs, Output};
use crate::outbox::{self, HistoryFilter, Outcome, Pending};

pub async fn run(args: DeliveriesArgs) -> anyhow::Result<String> {
    let DeliveriesArgs {
        data_dir,
        server,
        provider,
        repository,
        commit,
        pending,
        limit,
        output,
    } = args;
    let filter = HistoryFilter {
        provider,
        repository,
        commit,
        limit,
    };
    let (history, queue): (Vec<Outcome>, Vec<Pending>) = if let Some(server) = server {
        let mut url = reqwest::Url::parse(&server)
            .with_context(|| format!("--server {server:?} is not a URL"))?
            .join("/api/v1/deliveries")?;
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in [
                ("provider", &filter.provider),
                ("repository", &filter.repository),
                ("commit", &filter.commit),
            ] {
                if let Some(v) = v {
                    q.append_pair(k, v);
                }
            }
            q.append_pair("limit", &limit.to_string());
            if pending {
                q.append_pair("pending", "true");
            }
        }
        let response = reqwest::get(url.clone())
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        anyhow::ensure!(status.is_success(), "GET {url}: {status}");
        if pending {
            (
                Vec::new(),
                response.json().await.context("unexpected answer")?,
            )
        } else {
            (
                response.json().await.context("unexpected answer")?,
                Vec::new(),
            )
        }
    } else {
        let dir = data_dir.expect("clap requires --data-dir without --server");
        let (mut history, mut queue) = outbox::read_file(&dir, &filter).map_err(|e| {
            anyhow::anyhow!("{e} (if the controller is running, use --server URL instead)")
        })?;
        queue.truncate(limit);
        history.truncate(limit);
        (history, queue)
    };
    Ok(match (output, pending) {
        (Output::Json, true) => serde_json::to_string_pretty(&queue)? + "\n",
        (Output::Json, false) => serde_json::to_string_pretty(&history)? + "\n",
        (Output::Text, true) => {
            let mut out = String::new();
            for p in &queue {
                let _ = writeln!(
                    out,
                    "{}  {}  {}  {} {} -> {}  attempts={}{}",
                    outbox::rfc3339(p.accepted_ms),
                    p.provider,
                    p.object,
                    p.status_id,
                    short(&p.sha),
                    p.state,
                    p.attempts,
                    p.last_error
                        .as_deref()
                        .map(|e| format!("  last error: {e}"))
                        .unwrap_or_default()
                );
            }
            if queue.is_empty() {
                out.push_str("no pending deliveries\n");
            }
            out
        }
        (Output::Text, false) => {
            let mut out = String::new();
            for o in &history {
                let _ = writeln!(
                    out,
                    "{}  {:<11}  {}  {}  {} {} -> {}{}{}",
                    o.time,
                    format!("{:?}", o.outcome).to_lowercase(),
                    o.provider,
                    o.object,
                    o.status,
                    short(&o.commit),
                    o.state,
                    o.http_status
                        .map(|s| format!("  HTTP {s}"))
                        .unwrap_or_default(),
                    o.message
                        .as_deref()
                        .map(|m| format!("  {m}"))
                        .unwrap_or_default()
                );
            }
            if history.is_empty() {
                out.push_str("no deliveries recorded\n");
            }
            out
        }
    })
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}
