//! The operator's subcommands: `validate` (manifests as the controller would load them),
//! `explain` (what one event would do, without sending unless asked) and `send-event` (a
//! Flux-shaped event to a running controller).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::{Value, json};

use api::Event;
use notify::{ClientCache, ProgressingMode};

use crate::config::catalog::{AlertEntry, Catalog};
use crate::config::files;
use crate::config::hooks::LogOnly;
use crate::delivery::plan;
use crate::route::{self, RouteSettings, Routed};
use clap::ValueEnum;

#[derive(Debug, Clone, clap::Args)]
pub struct ValidateArgs {
    /// A manifest file, or a directory read recursively for *.yaml/*.yml. Repeatable.
    #[arg(long, value_name = "PATH", required = true)]
    pub manifests: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    #[arg(long, value_name = "PATH", required = true)]
    pub manifests: Vec<PathBuf>,
    /// The event, as Flux controllers POST it (JSON); `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub event: PathBuf,
    /// Actually post the status(es) (one attempt each).
    #[arg(long)]
    pub send: bool,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_name = "BOOL")]
    pub no_cross_namespace_refs: bool,
    #[arg(long, value_enum, default_value_t = Progressing::Pending)]
    pub progressing_status: Progressing,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SendEventArgs {
    /// The controller's event API.
    #[arg(long, default_value = "http://localhost:9090/", value_name = "URL")]
    pub address: String,
    #[arg(long, default_value = "Kustomization")]
    pub kind: String,
    #[arg(long, default_value = "flux-system")]
    pub name: String,
    #[arg(long, default_value = "flux-system")]
    pub namespace: String,
    /// The involved object's apiVersion; its group prefixes the metadata keys.
    #[arg(long, default_value = "kustomize.toolkit.fluxcd.io/v1")]
    pub api_version: String,
    /// E.g. `main@sha1:<40 hex>`.
    #[arg(long)]
    pub revision: String,
    #[arg(long, default_value = "info")]
    pub severity: String,
    #[arg(long, default_value = "ReconciliationSucceeded")]
    pub reason: String,
    #[arg(long, default_value = "Reconciliation finished")]
    pub message: String,
    /// Mark the event as a commit-status update, as kustomize-controller does on success.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_name = "BOOL")]
    pub commit_status: bool,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Exit code and output of a subcommand.
pub struct Report {
    pub ok: bool,
    pub text: String,
}

pub fn validate(args: ValidateArgs) -> Report {
    let load = files::load(&args.manifests);
    let mut problems: Vec<Value> = load
        .problems
        .iter()
        .map(|p| {
            json!({"file": p.origin.file, "document": p.origin.document, "object": p.object, "field": p.field, "message": p.message, "text": p.to_string()})
        })
        .collect();
    let warnings: Vec<Value> = load
        .warnings
        .iter()
        .map(|w| json!({"file": w.origin.file, "document": w.origin.document, "object": w.object, "field": w.field, "message": w.message, "text": w.to_string()}))
        .collect();
    let files = load.files;
    let counts = (
        load.objects.providers.len(),
        load.objects.alerts.len(),
        load.objects.secrets.len(),
    );
    // What only shows once objects are put together: a Provider whose Secret is missing or
    // whose address or credentials cannot work.
    let catalog = Catalog::build(load.objects, &ClientCache::new());
    let mut providers: Vec<_> = catalog.providers().collect();
    providers.sort_by_key(|p| p.key());
    for p in providers {
        if let Some(Err(e)) = &p.forge {
            let object = format!("Provider/{}", p.key());
            problems.push(json!({"object": object, "field": "spec", "message": e.to_string(), "text": format!("{object}: {e}")}));
        }
    }
    let ok = problems.is_empty();
    let text = match args.output {
        Output::Json => serde_json::to_string_pretty(&json!({"valid": ok, "files": files, "providers": counts.0, "alerts": counts.1, "secrets": counts.2, "problems": problems, "warnings": warnings})).unwrap_or_default() + "\n",
        Output::Text => {
            let mut out = String::new();
            for p in &problems {
                let _ = writeln!(out, "error: {}", p["text"].as_str().unwrap_or_default());
            }
            for w in &warnings {
                let _ = writeln!(out, "warning: {}", w["text"].as_str().unwrap_or_default());
            }
            let _ = writeln!(
                out,
                "{} file(s): {} provider(s), {} alert(s), {} secret(s) valid; {} problem(s), {} warning(s)",
                files, counts.0, counts.1, counts.2, problems.len(), warnings.len()
            );
            out
        }
    };
    Report { ok, text }
}

pub async fn explain(args: ExplainArgs) -> anyhow::Result<Report> {
    let body = if args.event.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
        b
    } else {
        std::fs::read(&args.event).with_context(|| format!("--event {}", args.event.display()))?
    };
    let mut event = Event::decode(&body)
        .map_err(|e| anyhow::anyhow!("--event {}: {e}", args.event.display()))?;
    route::cleanup_metadata(&mut event);
    route::strip_token(&mut event);
    let load = files::load(&args.manifests);
    let mut out = String::new();
    for p in &load.problems {
        let _ = writeln!(out, "warning: invalid manifest skipped: {p}");
    }
    let catalog = Catalog::build(load.objects, &ClientCache::new());
    let settings = RouteSettings {
        no_cross_namespace_refs: args.no_cross_namespace_refs,
        progressing: match args.progressing_status {
            Progressing::Pending => ProgressingMode::Pending,
            Progressing::Skip => ProgressingMode::Skip,
        },
        ..RouteSettings::default()
    };
    let _ = writeln!(
        out,
        "event: {} ({}, reason {}, severity {:?})",
        event.object_ref(),
        event.message,
        event.reason,
        event.severity
    );
    let mut alerts_json = Vec::new();
    let mut ok = true;
    let mut all: Vec<&std::sync::Arc<AlertEntry>> = catalog.alerts().collect();
    all.sort_by_key(|a| {
        (
            a.alert.metadata.namespace.clone(),
            a.alert.metadata.name.clone(),
        )
    });
    for entry in all {
        let key = format!(
            "{}/{}",
            entry.alert.metadata.namespace, entry.alert.metadata.name
        );
        // The daemon's matching rule; without a cluster there are no labels to read.
        if let Some(why) = route::mismatch(entry, &event, None) {
            let _ = writeln!(out, "\nAlert {key}: does not match: {why}");
            alerts_json.push(json!({"alert": key, "matches": false, "reason": why}));
            continue;
        }
        let _ = writeln!(
            out,
            "\nAlert {key}: matches (provider {})",
            entry.alert.spec.provider_ref.name
        );
        let routed = route::route(&catalog, &event, entry, &settings, &LogOnly, 0);
        match routed {
            Routed::Job(mut record) => {
                let provider = catalog.provider(
                    &entry.alert.metadata.namespace,
                    &entry.alert.spec.provider_ref.name,
                );
                let Some(provider) = provider else { continue };
                let forge = provider.forge.clone().and_then(Result::ok);
                let Some(forge) = forge else { continue };
                // The requests an attempt would build from the routed delivery.
                let progressing = settings.progressing;
                let Ok(Some(prepared)) = plan::requests(&forge, &mut record, progressing, None)
                else {
                    continue;
                };
                let plan = prepared.plan;
                let d = &record.delivery;
                let _ = writeln!(
                    out,
                    "  forge: {} ({})\n  commit: {}\n  status: {} = {} ({:?})",
                    d.forge, d.repository, d.sha, d.status_id, d.state, d.description
                );
                let mut requests = Vec::new();
                for (what, req) in plan
                    .read
                    .iter()
                    .map(|r| {
                        (
                            "read (duplicate check, made only with --read-before-write)",
                            r,
                        )
                    })
                    .chain([("write", &plan.write)])
                {
                    let _ = writeln!(out, "  {what}:\n{}", indent(&req.redacted()));
                    requests.push(json!({"purpose": what, "request": req.redacted()}));
                }
                let mut sent = Value::Null;
                if args.send {
                    eprintln!("sending to {} ...", d.repository);
                    match forge.execute(&plan).await {
                        Ok(o) => {
                            let _ = writeln!(out, "  sent: {o:?}");
                            sent = json!({"ok": format!("{o:?}")});
                        }
                        Err(e) => {
                            ok = false;
                            let _ = writeln!(out, "  send failed: {e}");
                            sent = json!({"error": e.to_string(), "http_status": e.status()});
                        }
                    }
                }
                alerts_json.push(json!({"alert": key, "matches": true, "provider": d.provider, "forge": d.forge, "repository": d.repository, "commit": d.sha, "status": d.status_id, "state": d.state, "description": d.description, "requests": requests, "sent": sent}));
            }
            Routed::Failed { error, stage, .. } => {
                ok = false;
                let msg = crate::config::hooks::failure_message(&event.object_ref(), stage, &error);
                let _ = writeln!(out, "  error: {msg}");
                alerts_json.push(json!({"alert": key, "matches": true, "error": msg}));
            }
            Routed::Skipped { reason, .. } => {
                let _ = writeln!(out, "  nothing to send: {reason}");
                alerts_json.push(json!({"alert": key, "matches": true, "skipped": reason}));
            }
            Routed::NoCommit { .. } => {
                let why = "the event has no event.toolkit.fluxcd.io/commit metadata, is not a commit_status update and is not an error, so commit-status providers ignore it";
                let _ = writeln!(out, "  nothing to send: {why}");
                alerts_json.push(json!({"alert": key, "matches": true, "skipped": why}));
            }
        }
    }
    if alerts_json.is_empty() {
        let _ = writeln!(out, "\nno Alerts loaded");
    }
    let text = match args.output {
        Output::Text => out,
        Output::Json => {
            serde_json::to_string_pretty(&json!({"event": event.to_json(), "alerts": alerts_json}))?
                + "\n"
        }
    };
    Ok(Report { ok, text })
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

pub async fn send_event(args: SendEventArgs) -> anyhow::Result<Report> {
    let group = args
        .api_version
        .split_once('/')
        .map(|(g, _)| g)
        .unwrap_or("");
    let mut metadata = BTreeMap::new();
    metadata.insert(format!("{group}/revision"), args.revision.clone());
    if args.commit_status {
        metadata.insert(format!("{group}/commit_status"), "update".to_string());
    }
    let event = json!({
        "involvedObject": {"apiVersion": args.api_version, "kind": args.kind, "namespace": args.namespace, "name": args.name},
        "severity": args.severity,
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "message": args.message,
        "reason": args.reason,
        "metadata": metadata,
        "reportingController": "commit-status-controller",
    });
    let response = reqwest::Client::new()
        .post(&args.address)
        .json(&event)
        .send()
        .await
        .with_context(|| format!("POST {}", args.address))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let ok = status.is_success();
    let text = match args.output {
        Output::Text => format!(
            "{} {}{}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            if body.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", body.trim())
            }
        ),
        Output::Json => {
            serde_json::to_string_pretty(
                &json!({"status": status.as_u16(), "body": body, "event": event}),
            )? + "\n"
        }
    };
    Ok(Report { ok, text })
}

/// How a subcommand prints its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// What a Progressing event becomes (`--progressing-status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Progressing {
    Pending,
    Skip,
}
