//! The delivery pages a status links to with `--public-url`: `/deliveries/<id>` (one delivery,
//! its full event message and the forge's answers) and `/deliveries` (recent ones, filtered).
//!
//! Plain server-rendered HTML with inline CSS: the pages must work from a forge's link with no
//! JavaScript and no other request. Every link is relative, so the pages also work behind a
//! reverse proxy that serves the controller under a path prefix.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::delivery::record::Delivery;
use crate::delivery::store::{Attempt, HistoryFilter, Outbox, Outcome, Pending, Verdict, rfc3339};
use crate::delivery::store::{ForwardFilter, ForwardLog, ForwardOutcome, PendingForward};

/// Rows on the index unless `?limit=` says otherwise, and the most it may ask for.
const DEFAULT_ROWS: usize = 100;
const MAX_ROWS: usize = 1000;

/// Values of the `outcome` filter, in the order the form offers them (the last two are
/// forwarded events' only).
const OUTCOMES: [&str; 8] = [
    "pending",
    "posted",
    "already_set",
    "skipped",
    "failed",
    "expired",
    "forwarded",
    "already_received",
];

/// `GET /deliveries` and `GET /deliveries/{id}`.
pub fn router(outbox: Outbox) -> Router {
    Router::new()
        .route("/deliveries", get(index))
        .route("/deliveries/{id}", get(detail))
        .with_state(outbox)
}

/// HTML-escapes text for element content and quoted attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A query string from pairs, empty values left out.
fn query(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        s.append_pair(k, v);
    }
    let s = s.finish();
    if s.is_empty() { s } else { format!("?{s}") }
}

/// Only web links become `href`s: a stored URL must not turn into `javascript:`.
fn is_web_link(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

/// `2026-11-25 07:26:19 UTC` from the store's RFC 3339 times.
fn when(rfc: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| rfc.to_string())
}

/// A repository address without `https://`, which only takes room in a table cell.
fn without_scheme(address: &str) -> &str {
    address.split_once("://").map_or(address, |(_, rest)| rest)
}

fn short(sha: &str) -> &str {
    sha.get(..8).unwrap_or(sha)
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Posted => "posted",
        Verdict::AlreadySet => "already_set",
        Verdict::Skipped => "skipped",
        Verdict::Failed => "failed",
        Verdict::Expired => "expired",
    }
}

/// The colour class of an outcome, a forge state (every forge's spelling) or an attempt result.
fn tone(word: &str) -> &'static str {
    match word.to_ascii_lowercase().as_str() {
        "posted" | "already_set" | "already set" | "success" | "successful" | "succeeded"
        | "forwarded" | "already_received" | "already received" => "ok",
        "failed" | "failure" | "error" | "expired" => "bad",
        "pending" | "running" | "inprogress" | "retrying" => "wait",
        _ => "neutral",
    }
}

fn badge(word: &str) -> String {
    format!(
        r#"<span class="badge {}">{}</span>"#,
        tone(word),
        esc(&word.replace('_', " "))
    )
}

const CSS: &str = r#"
:root{color-scheme:light dark;--fg:#1f2328;--muted:#59636e;--bg:#fff;--panel:#f6f8fa;--line:#d1d9e0;--ok:#1a7f37;--bad:#cf222e;--wait:#9a6700;--link:#0969da}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#9198a1;--bg:#0d1117;--panel:#151b23;--line:#3d444d;--ok:#3fb950;--bad:#f85149;--wait:#d29922;--link:#4493f8}}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:var(--bg)}
.bar{border-bottom:1px solid var(--line);background:var(--panel)}
.bar div{max-width:1120px;margin:0 auto;padding:10px 20px;font-weight:600}
.bar a{color:var(--fg)}
main{max-width:1120px;margin:0 auto;padding:24px 20px 48px}
a{color:var(--link);text-decoration:none}
a:hover{text-decoration:underline}
h1{font-size:22px;margin:0 0 4px;display:flex;flex-wrap:wrap;gap:10px;align-items:center}
h2{font-size:16px;margin:28px 0 10px}
.sub{color:var(--muted);margin:0 0 18px}
code,pre,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:13px}
.badge{display:inline-block;padding:0 9px;border-radius:999px;font-size:12px;font-weight:600;line-height:20px;border:1px solid currentColor;white-space:nowrap}
.ok{color:var(--ok)}.bad{color:var(--bad)}.wait{color:var(--wait)}.neutral{color:var(--muted)}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:6px 24px;margin:0;padding:16px 18px;background:var(--panel);border:1px solid var(--line);border-radius:8px}
.facts dt{color:var(--muted)}
.facts dd{margin:0;min-width:0;overflow-wrap:anywhere}
@media (min-width:900px){.facts{grid-template-columns:max-content minmax(0,1fr) max-content minmax(0,1fr)}}
pre{background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:12px 14px;margin:0;white-space:pre-wrap;overflow-wrap:anywhere}
.note{padding:10px 14px;border:1px solid currentColor;border-radius:8px;margin:0 0 18px;overflow-wrap:anywhere}
.note span{color:var(--fg)}
table{width:100%;border-collapse:collapse}
th,td{text-align:left;padding:7px 10px;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--muted);font-weight:600;font-size:13px}
tbody tr:hover{background:var(--panel)}
td.wrap{overflow-wrap:break-word}
td.nowrap{white-space:nowrap}
.timeline{list-style:none;margin:0;padding:0 0 0 4px}
.timeline li{position:relative;padding:0 0 16px 22px;border-left:2px solid var(--line)}
.timeline li:last-child{border-left-color:transparent}
.timeline li::before{content:"";position:absolute;left:-7px;top:5px;width:12px;height:12px;border-radius:50%;background:var(--muted)}
.timeline li.ok::before{background:var(--ok)}.timeline li.bad::before{background:var(--bad)}.timeline li.wait::before{background:var(--wait)}
.timeline .head{color:var(--fg)}
.timeline .head time{color:var(--muted);margin-right:8px}
.timeline pre{margin-top:6px;color:var(--fg)}
.muted{color:var(--muted)}
.pager{display:flex;justify-content:space-between;gap:12px;margin-top:32px;padding-top:14px;border-top:1px solid var(--line)}
form{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-end;margin:0 0 18px;padding:12px 14px;background:var(--panel);border:1px solid var(--line);border-radius:8px}
label{display:flex;flex-direction:column;gap:2px;font-size:12px;color:var(--muted)}
input,select,button{font:inherit;font-size:14px;height:32px;padding:0 8px;border:1px solid var(--line);border-radius:6px;background:var(--bg);color:var(--fg)}
form a{line-height:32px}
button{background:var(--link);border-color:var(--link);color:#fff;cursor:pointer}
"#;

/// `home` is the index relative to the page: `deliveries` from the index, `../deliveries`
/// from a delivery.
fn page(status: StatusCode, title: &str, home: &str, body: &str) -> Response {
    let html = format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · commit-status-controller</title>
<style>{CSS}</style>
</head>
<body>
<header class="bar"><div><a href="{home}">commit-status-controller</a> <span class="muted">· deliveries</span></div></header>
<main>
{body}
</main>
</body>
</html>
"#,
        title = esc(title),
    );
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The pages show event text from the cluster: even if escaping missed something, no
    // script, frame or outside resource may run.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn error_page(status: StatusCode, home: &str, title: &str, text: &str) -> Response {
    page(
        status,
        title,
        home,
        &format!(
            r#"<h1>{}</h1><p class="sub">{}</p><p><a href="{home}">All deliveries</a></p>"#,
            esc(title),
            esc(text)
        ),
    )
}

/// One delivery, ended or still queued, as the detail page shows it.
struct View<'a> {
    id: u64,
    /// A verdict name, or `pending`.
    outcome: &'static str,
    /// What was (or is to be) posted, and for whom.
    delivery: &'a Delivery,
    /// The Provider's own description while queued, else the delivery's.
    description: &'a str,
    accepted: String,
    finished: Option<&'a str>,
    next_attempt: Option<String>,
    attempts: u32,
    http_status: Option<u16>,
    /// Why it ended (or the last error while queued).
    result: Option<&'a str>,
    timeline: &'a [Attempt],
}

impl<'a> View<'a> {
    fn ended(o: &'a Outcome) -> Self {
        View {
            id: o.seq,
            outcome: verdict_name(o.outcome),
            delivery: &o.delivery,
            description: &o.delivery.description,
            accepted: o.accepted.clone(),
            finished: Some(&o.time),
            next_attempt: None,
            attempts: o.attempts,
            http_status: o.http_status,
            result: o.message.as_deref(),
            timeline: &o.timeline,
        }
    }

    fn queued(p: &'a Pending) -> Self {
        View {
            id: p.seq,
            outcome: "pending",
            delivery: &p.delivery,
            description: p
                .description_override
                .as_deref()
                .unwrap_or(&p.delivery.description),
            accepted: rfc3339(p.accepted_ms),
            finished: None,
            next_attempt: (p.attempts > 0).then(|| rfc3339(p.not_before_ms)),
            attempts: p.attempts,
            http_status: p.attempt_log.last().and_then(|a| a.http_status),
            result: p.last_error.as_deref(),
            timeline: &p.attempt_log,
        }
    }
}

fn render_detail(v: &View, prev: Option<u64>, next: Option<u64>) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        r#"<h1>Delivery {id} {outcome} {state}</h1>
<p class="sub">{object} → <span class="mono">{commit}</span> · {repository}</p>
"#,
        id = v.id,
        outcome = badge(v.outcome),
        state = badge(&v.delivery.state),
        object = esc(&v.delivery.object),
        commit = esc(short(&v.delivery.sha)),
        repository = esc(&v.delivery.repository),
    );
    if let Some(result) = v.result {
        let (tone, label) = match v.outcome {
            "pending" => ("wait", "Last error"),
            "failed" | "expired" => ("bad", "Error"),
            _ => ("neutral", "Note"),
        };
        let _ = writeln!(
            b,
            r#"<p class="note {tone}"><strong>{label}:</strong> <span>{}</span></p>"#,
            esc(result)
        );
    }

    let mut facts: Vec<(&str, String)> = vec![
        (
            "Outcome",
            if v.outcome == "pending" {
                "pending (not delivered yet)".to_string()
            } else {
                esc(&v.outcome.replace('_', " "))
            },
        ),
        ("State", esc(&v.delivery.state)),
        ("Description", esc(v.description)),
        ("Object", esc(&v.delivery.object)),
        (
            "Commit",
            format!(r#"<span class="mono">{}</span>"#, esc(&v.delivery.sha)),
        ),
        (
            "Repository",
            if is_web_link(&v.delivery.repository) {
                format!(r#"<a href="{0}">{0}</a>"#, esc(&v.delivery.repository))
            } else {
                esc(&v.delivery.repository)
            },
        ),
        (
            "Status name",
            format!(
                r#"<span class="mono">{}</span>"#,
                esc(&v.delivery.status_id)
            ),
        ),
        ("Forge", esc(&v.delivery.forge)),
        (
            "Provider",
            format!(
                r#"<a href="../deliveries{}">{}</a>"#,
                esc(&query(&[("provider", &v.delivery.provider)])),
                esc(&v.delivery.provider)
            ),
        ),
        ("Alert", esc(&v.delivery.alert)),
        (
            "Accepted",
            format!(
                r#"<time datetime="{0}">{1}</time>"#,
                esc(&v.accepted),
                esc(&when(&v.accepted))
            ),
        ),
    ];
    if let Some(t) = v.finished {
        facts.push((
            "Finished",
            format!(r#"<time datetime="{0}">{1}</time>"#, esc(t), esc(&when(t))),
        ));
    }
    if let Some(t) = &v.next_attempt {
        facts.push((
            "Next attempt",
            format!(r#"<time datetime="{0}">{1}</time>"#, esc(t), esc(&when(t))),
        ));
    }
    facts.push(("Attempts", v.attempts.to_string()));
    if let Some(code) = v.http_status {
        facts.push(("HTTP status", code.to_string()));
    }
    if let Some(url) = v.delivery.target_url.as_deref() {
        facts.push((
            "Target URL",
            if is_web_link(url) {
                format!(r#"<a href="{0}">{0}</a>"#, esc(url))
            } else {
                esc(url)
            },
        ));
    }
    b.push_str("<dl class=\"facts\">\n");
    for (name, value) in facts {
        let _ = writeln!(b, "<dt>{name}</dt><dd>{value}</dd>");
    }
    b.push_str("</dl>\n");

    b.push_str("<h2>Event message</h2>\n");
    if v.delivery.message.is_empty() {
        b.push_str("<p class=\"muted\">The event had no message.</p>\n");
    } else {
        let _ = writeln!(b, "<pre>{}</pre>", esc(&v.delivery.message));
    }

    b.push_str("<h2>Attempts</h2>\n");
    if v.timeline.is_empty() {
        b.push_str(if v.outcome == "pending" {
            "<p class=\"muted\">No attempt yet.</p>\n"
        } else {
            "<p class=\"muted\">No request reached the forge.</p>\n"
        });
    } else {
        b.push_str("<ol class=\"timeline\">\n");
        for a in v.timeline {
            let _ = write!(
                b,
                r#"<li class="{tone}"><div class="head"><time datetime="{time}">{when}</time>{result}{http}</div>"#,
                tone = tone(&a.result),
                time = esc(&a.time),
                when = esc(&when(&a.time)),
                result = badge(&a.result),
                http = a
                    .http_status
                    .map(|c| format!(r#" <span class="muted">HTTP {c}</span>"#))
                    .unwrap_or_default(),
            );
            if let Some(m) = &a.message {
                let _ = write!(b, "<pre>{}</pre>", esc(m));
            }
            b.push_str("</li>\n");
        }
        b.push_str("</ol>\n");
    }

    let link = |id: Option<u64>, text: &str| match id {
        Some(id) => format!(r#"<a href="{id}">{text}</a>"#),
        None => format!(r#"<span class="muted">{text}</span>"#),
    };
    let _ = writeln!(
        b,
        r#"<nav class="pager">{}<a href="../deliveries">All deliveries</a>{}</nav>"#,
        link(prev, "← Previous status of this object"),
        link(next, "Next status of this object →"),
    );
    b
}

async fn detail(
    State(outbox): State<Outbox>,
    Path(params): Path<Vec<(String, String)>>,
) -> Response {
    // Mounted as a service under the event API's own `/deliveries/{id}` route, the request
    // carries that route's parameter too: take ours, the last.
    let id = params.last().map(|(_, v)| v.as_str()).unwrap_or_default();
    let Ok(id) = id.parse::<u64>() else {
        return error_page(
            StatusCode::NOT_FOUND,
            "../deliveries",
            "Delivery not found",
            "A delivery id is a number.",
        );
    };
    let found = tokio::task::spawn_blocking(move || {
        let (outcome, pending) = outbox.delivery(id)?;
        let (prev, next) = if outcome.is_some() || pending.is_some() {
            outbox.neighbours(id)?
        } else {
            (None, None)
        };
        Ok::<_, crate::delivery::store::StoreError>((outcome, pending, prev, next))
    })
    .await;
    match found {
        Ok(Ok((Some(o), _, prev, next))) => page(
            StatusCode::OK,
            &format!("Delivery {id}"),
            "../deliveries",
            &render_detail(&View::ended(&o), prev, next),
        ),
        Ok(Ok((None, Some(p), prev, next))) => page(
            StatusCode::OK,
            &format!("Delivery {id}"),
            "../deliveries",
            &render_detail(&View::queued(&p), prev, next),
        ),
        Ok(Ok((None, None, ..))) => error_page(
            StatusCode::NOT_FOUND,
            "../deliveries",
            "Delivery not found",
            &format!("No delivery {id} is pending or in the history (old outcomes are dropped)."),
        ),
        Ok(Err(e)) => error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "../deliveries",
            "Cannot read the delivery store",
            &e.to_string(),
        ),
        Err(_) => error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "../deliveries",
            "Cannot read the delivery store",
            "the read was aborted",
        ),
    }
}

/// One row of the index.
struct Row<'a> {
    id: u64,
    time: &'a str,
    outcome: &'static str,
    state: &'a str,
    object: &'a str,
    commit: &'a str,
    repository: &'a str,
    provider: &'a str,
}

/// The index's filters as given (empty = any).
#[derive(Default)]
struct Filters {
    provider: String,
    repository: String,
    commit: String,
    outcome: String,
}

fn render_index(f: &Filters, rows: &[Row]) -> String {
    let mut b = String::from("<h1>Deliveries</h1>\n");
    let _ = writeln!(
        b,
        r#"<p class="sub">Commit statuses sent to the forges: still pending ones first, then the most recent outcomes.</p>"#
    );
    let mut options = String::from(r#"<option value="">any</option>"#);
    for o in OUTCOMES {
        let _ = write!(
            options,
            r#"<option value="{o}"{}>{}</option>"#,
            if f.outcome == o { " selected" } else { "" },
            o.replace('_', " ")
        );
    }
    let _ = write!(
        b,
        r#"<form method="get" action="deliveries">
<label>Provider <input name="provider" value="{}" placeholder="namespace/name"></label>
<label>Repository <input name="repository" value="{}" placeholder="part of the address"></label>
<label>Commit <input name="commit" value="{}" placeholder="SHA prefix" size="12"></label>
<label>Outcome <select name="outcome">{options}</select></label>
<button type="submit">Filter</button> <a href="deliveries">Clear</a>
</form>
"#,
        esc(&f.provider),
        esc(&f.repository),
        esc(&f.commit),
    );
    if rows.is_empty() {
        b.push_str("<p class=\"muted\">No deliveries match.</p>\n");
        return b;
    }
    b.push_str(
        "<table>\n<thead><tr><th>Delivery</th><th>Time</th><th>Outcome</th><th>State</th><th>Object</th><th>Commit</th><th>Repository</th><th>Provider</th></tr></thead>\n<tbody>\n",
    );
    for r in rows {
        let _ = writeln!(
            b,
            r#"<tr><td><a href="deliveries/{id}">#{id}</a></td><td class="nowrap"><time datetime="{time}">{when}</time></td><td>{outcome}</td><td>{state}</td><td class="wrap">{object}</td><td><a class="mono" href="deliveries/{id}" title="{commit}">{short}</a></td><td class="wrap" title="{repository}">{shown}</td><td class="nowrap"><a href="deliveries{pq}">{provider}</a></td></tr>"#,
            id = r.id,
            time = esc(r.time),
            when = esc(&when(r.time)),
            outcome = badge(r.outcome),
            state = badge(r.state),
            object = esc(r.object),
            commit = esc(r.commit),
            short = esc(short(r.commit)),
            repository = esc(r.repository),
            shown = esc(without_scheme(r.repository)),
            pq = esc(&query(&[("provider", r.provider)])),
            provider = esc(r.provider),
        );
    }
    b.push_str("</tbody>\n</table>\n");
    let _ = writeln!(b, r#"<p class="muted">{} shown.</p>"#, rows.len());
    b
}

async fn index(
    State(outbox): State<Outbox>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let param = |k: &str| {
        params
            .get(k)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let f = Filters {
        provider: param("provider"),
        repository: param("repository"),
        commit: param("commit"),
        outcome: param("outcome"),
    };
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let filter = HistoryFilter {
        provider: some(&f.provider),
        repository: some(&f.repository),
        commit: some(&f.commit),
        limit: param("limit")
            .parse()
            .unwrap_or(DEFAULT_ROWS)
            .clamp(1, MAX_ROWS),
    };
    let outcome = f.outcome.clone();
    // Forwarded events have no provider, repository or commit: those filters leave them out.
    let with_forwards = f.provider.is_empty() && f.repository.is_empty() && f.commit.is_empty();
    let read = tokio::task::spawn_blocking(move || {
        let pending = match outcome.as_str() {
            "" | "pending" => outbox.pending(&filter)?,
            _ => Vec::new(),
        };
        let history = match outcome.as_str() {
            "" => outbox.history(&filter)?,
            "pending" => Vec::new(),
            o => outbox.history_where(&filter, |x| verdict_name(x.outcome) == o)?,
        };
        let mut forwards = (Vec::new(), Vec::new());
        if with_forwards {
            let ff = ForwardFilter {
                limit: filter.limit,
                outcome: Some(outcome.clone()).filter(|o| !o.is_empty()),
                ..ForwardFilter::default()
            };
            if matches!(outcome.as_str(), "" | "pending") {
                forwards.0 = outbox.forward_pending(&ff)?;
            }
            if outcome != "pending" {
                forwards.1 = outbox.forward_history(&ff)?;
            }
        }
        Ok::<_, crate::delivery::store::StoreError>((pending, history, forwards))
    })
    .await;
    let (pending, history, forwards) = match read {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "deliveries",
                "Cannot read the delivery store",
                &e.to_string(),
            );
        }
        Err(_) => {
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "deliveries",
                "Cannot read the delivery store",
                "the read was aborted",
            );
        }
    };
    let accepted: Vec<String> = pending.iter().map(|p| rfc3339(p.accepted_ms)).collect();
    let mut rows: Vec<Row> = pending
        .iter()
        .zip(&accepted)
        .rev()
        .map(|(p, t)| Row {
            id: p.seq,
            time: t,
            outcome: "pending",
            state: &p.delivery.state,
            object: &p.delivery.object,
            commit: &p.delivery.sha,
            repository: &p.delivery.repository,
            provider: &p.delivery.provider,
        })
        .collect();
    rows.extend(history.iter().map(|o| Row {
        id: o.seq,
        time: &o.time,
        outcome: verdict_name(o.outcome),
        state: &o.delivery.state,
        object: &o.delivery.object,
        commit: &o.delivery.sha,
        repository: &o.delivery.repository,
        provider: &o.delivery.provider,
    }));
    let mut body = render_index(&f, &rows);
    body.push_str(&render_forwards(&forwards.0, &forwards.1));
    page(StatusCode::OK, "Deliveries", "deliveries", &body)
}

/// Forwarded events (`--forward-events-to`), pending first: no commit status, but the
/// receiver, the attempts and the receiver's last answer. Nothing when there are none.
fn render_forwards(pending: &[PendingForward], history: &[ForwardOutcome]) -> String {
    if pending.is_empty() && history.is_empty() {
        return String::new();
    }
    let mut b = String::from(
        "<h2>Forwarded events</h2>\n<table>\n<thead><tr><th>Event</th><th>Time</th><th>Outcome</th><th>Object</th><th>Receiver</th><th>Attempts</th><th>Last answer</th></tr></thead>\n<tbody>\n",
    );
    let answer = |status: Option<u16>, message: Option<&str>| {
        let status = status.map(|s| format!("HTTP {s}"));
        match (status, message) {
            (Some(s), Some(m)) if !m.starts_with(&s) => format!("{s} · {m}"),
            (Some(s), None) => s,
            (_, Some(m)) => m.to_string(),
            (None, None) => String::new(),
        }
    };
    let mut row = |event: u64,
                   time: &str,
                   outcome: &str,
                   object: &str,
                   target: &str,
                   attempts: u32,
                   last: String| {
        let _ = writeln!(
            b,
            r#"<tr><td>#{event}</td><td class="nowrap"><time datetime="{time}">{when}</time></td><td>{outcome}</td><td class="wrap">{object}</td><td class="wrap">{target}</td><td>{attempts}</td><td class="wrap">{last}</td></tr>"#,
            time = esc(time),
            when = esc(&when(time)),
            outcome = badge(outcome),
            object = esc(object),
            target = esc(target),
            last = esc(&last),
        );
    };
    for p in pending.iter().rev() {
        let f = &p.forward;
        let last = f.attempt_log.last();
        row(
            f.event,
            &rfc3339(f.accepted_ms),
            "pending",
            &f.object,
            &f.target,
            f.attempts,
            answer(last.and_then(|a| a.http_status), f.last_error.as_deref()),
        );
    }
    for o in history {
        row(
            o.event,
            &o.time,
            o.outcome.name(),
            &o.object,
            &o.target,
            o.attempts,
            answer(o.http_status, o.message.as_deref()),
        );
    }
    b.push_str("</tbody>\n</table>\n");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome() -> Outcome {
        Outcome {
            id: 7,
            time: "2026-11-25T07:26:21.000Z".into(),
            outcome: Verdict::Failed,
            delivery: Delivery {
                provider: "flux-system/github".into(),
                provider_uid: String::new(),
                alert: "flux-system/github".into(),
                object: "Kustomization/flux-system/<apps>".into(),
                repository: "javascript:alert(1)".into(),
                forge: "github".into(),
                sha: "5394cb7f48332b2de7c17dd8b8384bbc84b7e738".into(),
                status_id: "kustomization/apps/0c9c2e41".into(),
                state: "failure".into(),
                description: "health check failed".into(),
                target_url: Some("http://csc.example/deliveries/5".into()),
                message: "line one\n<script>alert('x')</script> & \"quoted\"".into(),
                message_cut: false,
                planned: None,
            },
            attempts: 1,
            http_status: Some(422),
            message: Some("422 <b>Validation Failed</b>".into()),
            accepted: "2026-11-25T07:26:20.000Z".into(),
            seq: 5,
            timeline: vec![Attempt {
                time: "2026-11-25T07:26:21.000Z".into(),
                result: "failed".into(),
                http_status: Some(422),
                message: Some("No commit found for SHA: <x>".into()),
            }],
        }
    }

    #[test]
    fn every_value_is_escaped_and_only_web_links_are_links() {
        let o = outcome();
        let html = render_detail(&View::ended(&o), Some(3), None);
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(!html.contains("<apps>"), "{html}");
        assert!(
            html.contains(
                "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;quoted&quot;"
            )
        );
        assert!(html.contains("No commit found for SHA: &lt;x&gt;"));
        assert!(!html.contains(r#"href="javascript"#), "{html}");
        assert!(html.contains(r#"<a href="http://csc.example/deliveries/5">"#));
        assert!(html.contains(r#"<a href="3">← Previous"#));
        assert!(html.contains(r#"<span class="muted">Next status"#));
    }

    #[test]
    fn index_keeps_the_filters_in_the_form() {
        let f = Filters {
            provider: "ns/\"p\"".into(),
            outcome: "failed".into(),
            ..Filters::default()
        };
        let html = render_index(&f, &[]);
        assert!(html.contains(r#"value="ns/&quot;p&quot;""#), "{html}");
        assert!(
            html.contains(r#"<option value="failed" selected>"#),
            "{html}"
        );
        assert!(html.contains("No deliveries match."));
    }

    #[test]
    fn query_strings_are_encoded() {
        assert_eq!(query(&[("provider", "ns/a b&c")]), "?provider=ns%2Fa+b%26c");
        assert_eq!(query(&[("provider", "")]), "");
    }
}
