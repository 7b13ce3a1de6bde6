//! `commit-status-controller deliveries`: the delivery history (or the queue) from a data
//! directory, or from a running controller's `GET /api/v1/deliveries` (on `--pages-addr`).

use std::fmt::Write as _;

use anyhow::Context as _;

use serde_json::Value;

use std::path::PathBuf;

use crate::delivery::store::{self, HistoryFilter, Outcome, Pending};
use crate::delivery::store::{ForwardOutcome, PendingForward};
use crate::events::forward::{ListQuery, is_forward};
use crate::ops::cli::Output;

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
    // Deliveries and forwarded events, as `/api/v1/deliveries` lists them.
    let entries: Vec<Value> = if let Some(server) = server {
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
        response.json().await.context("unexpected answer")?
    } else {
        let dir = data_dir.expect("clap requires --data-dir without --server");
        let hint = |e: store::StoreError| {
            anyhow::anyhow!("{e} (if the controller is running, use --server URL instead)")
        };
        let (mut history, mut queue) = store::read_file(&dir, &filter).map_err(hint)?;
        queue.truncate(limit);
        history.truncate(limit);
        let deliveries = if pending {
            serde_json::to_value(queue)?
        } else {
            serde_json::to_value(history)?
        };
        let Value::Array(deliveries) = deliveries else {
            unreachable!("a list serialises to an array")
        };
        ListQuery::default()
            .merge(
                &*store::open_file(&dir).map_err(hint)?,
                &filter,
                pending,
                deliveries,
            )
            .map_err(hint)?
    };
    if output == Output::Json {
        return Ok(serde_json::to_string_pretty(&entries)? + "\n");
    }
    let mut out = String::new();
    for e in &entries {
        if is_forward(e) {
            forward_line(&mut out, e, pending);
        } else if pending {
            if let Ok(p) = serde_json::from_value::<Pending>(e.clone()) {
                pending_line(&mut out, &p);
            }
        } else if let Ok(o) = serde_json::from_value::<Outcome>(e.clone()) {
            outcome_line(&mut out, &o);
        }
    }
    if entries.is_empty() {
        out.push_str(if pending {
            "no pending deliveries\n"
        } else {
            "no deliveries recorded\n"
        });
    }
    Ok(out)
}

/// A forwarded event: no commit status, but the receiver and its last answer.
fn forward_line(out: &mut String, e: &Value, pending: bool) {
    let (time, outcome, f, http_status, message) = if pending {
        let Ok(p) = serde_json::from_value::<PendingForward>(e.clone()) else {
            return;
        };
        let f = p.forward;
        let http_status = f.attempt_log.last().and_then(|a| a.http_status);
        let message = f.last_error.clone().map(|e| format!("last error: {e}"));
        (
            store::rfc3339(f.accepted_ms),
            "pending",
            (f.target, f.object, f.event, f.attempts),
            http_status,
            message,
        )
    } else {
        let Ok(o) = serde_json::from_value::<ForwardOutcome>(e.clone()) else {
            return;
        };
        (
            o.time,
            o.outcome.name(),
            (o.target, o.object, o.event, o.attempts),
            o.http_status,
            o.message,
        )
    };
    let (target, object, event, attempts) = f;
    let _ = writeln!(
        out,
        "{time}  {outcome:<11}  forward -> {target}  {object}  event={event} attempts={attempts}{}{}",
        http_status
            .map(|s| format!("  HTTP {s}"))
            .unwrap_or_default(),
        message.map(|m| format!("  {m}")).unwrap_or_default()
    );
}

fn pending_line(out: &mut String, p: &Pending) {
    let _ = writeln!(
        out,
        "{}  {}  {}  {} {} -> {}  attempts={}{}",
        store::rfc3339(p.accepted_ms),
        p.delivery.provider,
        p.delivery.object,
        p.delivery.status_id,
        short(&p.delivery.sha),
        p.delivery.state,
        p.attempts,
        p.last_error
            .as_deref()
            .map(|e| format!("  last error: {e}"))
            .unwrap_or_default()
    );
}

fn outcome_line(out: &mut String, o: &Outcome) {
    let _ = writeln!(
        out,
        "{}  {:<11}  {}  {}  {} {} -> {}{}{}",
        o.time,
        format!("{:?}", o.outcome).to_lowercase(),
        o.delivery.provider,
        o.delivery.object,
        o.delivery.status_id,
        short(&o.delivery.sha),
        o.delivery.state,
        o.http_status
            .map(|s| format!("  HTTP {s}"))
            .unwrap_or_default(),
        o.message
            .as_deref()
            .map(|m| format!("  {m}"))
            .unwrap_or_default()
    );
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

#[derive(Debug, Clone, clap::Args)]
pub struct DeliveriesArgs {
    /// The controller's --data-dir (read while the controller is stopped).
    #[arg(long, value_name = "PATH", required_unless_present = "server")]
    pub data_dir: Option<PathBuf>,
    /// A running controller's pages listener (--pages-addr), e.g. http://localhost:9797.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Only this Provider (`namespace/name`).
    #[arg(long)]
    pub provider: Option<String>,
    /// Only repositories whose address contains this.
    #[arg(long)]
    pub repository: Option<String>,
    /// Only commits starting with this.
    #[arg(long)]
    pub commit: Option<String>,
    /// Pending deliveries instead of outcomes.
    #[arg(long)]
    pub pending: bool,
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}
