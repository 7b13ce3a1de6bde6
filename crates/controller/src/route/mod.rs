//! From one accepted event to the deliveries it causes: Alert matching (§2.7, one rule that
//! `explain` reports too), the dispatch gates (§2.9), the metadata merge (§2.8), the commit
//! status ID (§3.0.1) and the delivery, planned once ([`crate::delivery::plan`]).
//! Pure: no I/O, so every rule is unit-tested here.
//!
//! May use: [`crate::delivery`] (the record it produces), [`crate::config`], [`crate::metrics`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use api::{EVENT_METADATA_PREFIX, Event};
use notify::ProgressingMode;

use crate::config::catalog::{AlertEntry, Catalog};
use crate::delivery::plan::{self, Delivery};
use crate::delivery::store::Pending;

/// Settings that shape routing.
#[derive(Clone, Debug, Default)]
pub struct RouteSettings {
    pub no_cross_namespace_refs: bool,
    pub progressing: ProgressingMode,
    /// `--feature-gates=ObjectLevelWorkloadIdentity=true`: Providers may name a
    /// `spec.serviceAccountName` (issue 11).
    pub object_level_workload_identity: bool,
    /// `--public-url`: statuses link to their delivery's page unless the Provider has its own
    /// link template.
    pub public_url: Option<Arc<str>>,
}

pub use crate::config::hooks::Stage;

/// The outcome of routing an event to one matching Alert.
#[derive(Debug)]
pub enum Routed {
    /// A delivery to make (its sequence number is assigned when it is stored).
    Job(Box<Pending>),
    Failed {
        alert: String,
        provider: Option<String>,
        stage: Stage,
        error: String,
    },
    /// Nothing to do, and nothing wrong.
    Skipped { alert: String, reason: &'static str },
    /// A commit-status provider got an event without commit metadata (§2.9 step 6).
    NoCommit { alert: String },
}

/// Keeps only metadata keys of the event API or of the object's own group, minus the
/// group's `checksum`/`digest` (§1.4).
pub fn cleanup_metadata(event: &mut Event) {
    let own = format!("{}/", event.group());
    let checksum = format!("{own}checksum");
    let digest = format!("{own}digest");
    let md = event.metadata.take().unwrap_or_default();
    let kept = md
        .into_iter()
        .filter(|(k, _)| {
            (k.starts_with(EVENT_METADATA_PREFIX) || k.starts_with(&own))
                && !k.eq_ignore_ascii_case(&checksum)
                && !k.eq_ignore_ascii_case(&digest)
        })
        .collect();
    event.metadata = Some(kept);
}

/// Drops `<group>/token`, which only serves the rate-limit key (§1.6 step 2).
pub fn strip_token(event: &mut Event) {
    let key = format!("{}/token", event.group());
    if let Some(md) = event.metadata.as_mut() {
        md.remove(&key);
    }
}

/// The Alerts that select this event, in load order (§2.7). `labels` are the involved object's
/// labels when they could be read; a source with `matchLabels` matches nothing without them.
pub fn matching_alerts<'a>(
    catalog: &'a Catalog,
    event: &Event,
    labels: Option<&BTreeMap<String, String>>,
) -> Vec<&'a Arc<AlertEntry>> {
    let o = &event.involved_object;
    catalog
        .candidates(&o.namespace, &o.kind, &o.name)
        .filter(|a| mismatch(a, event, labels).is_none())
        .collect()
}

/// The candidate Alerts whose only way to match is a `matchLabels` source: the involved object's
/// labels must be read before matching.
pub fn alerts_needing_labels<'a>(catalog: &'a Catalog, event: &Event) -> Vec<&'a Arc<AlertEntry>> {
    let o = &event.involved_object;
    catalog
        .candidates(&o.namespace, &o.kind, &o.name)
        .filter(|a| !a.alert.spec.suspend)
        .filter(|a| {
            a.alert
                .spec
                .event_sources
                .iter()
                .any(|src| src.match_labels.is_some() && source_mismatch(a, src, event).is_none())
        })
        .collect()
}

/// Why one event source of an Alert does not select the event, labels aside.
fn source_mismatch(
    entry: &AlertEntry,
    src: &api::CrossNamespaceObjectReference,
    event: &Event,
) -> Option<String> {
    let alert = &entry.alert;
    let o = &event.involved_object;
    let severity = alert.spec.event_severity.as_str();
    let ns = src
        .namespace
        .as_deref()
        .unwrap_or(&alert.metadata.namespace);
    if o.namespace != ns {
        Some(format!("namespace {:?} is not {ns:?}", o.namespace))
    } else if o.kind != src.kind {
        Some(format!("kind {:?} is not {:?}", o.kind, src.kind))
    } else if src.name != "*" && src.name != o.name {
        Some(format!("name {:?} is not {:?}", o.name, src.name))
    } else if event.severity != severity && severity != "info" {
        Some(format!(
            "severity {:?} is filtered out by eventSeverity {severity:?}",
            event.severity
        ))
    } else {
        None
    }
}

/// Why an Alert does not select the event, or `None` if it does: the one matching rule, which
/// routing applies and `explain` reports (§2.7). `labels` are the involved object's labels when
/// they could be read (`explain` has no cluster to read them from).
pub fn mismatch(
    entry: &AlertEntry,
    event: &Event,
    labels: Option<&BTreeMap<String, String>>,
) -> Option<String> {
    let alert = &entry.alert;
    if alert.spec.suspend {
        return Some("the Alert is suspended".into());
    }
    let mut reasons = Vec::new();
    for (i, src) in alert.spec.event_sources.iter().enumerate() {
        let why = match (
            source_mismatch(entry, src, event),
            &src.match_labels,
            labels,
        ) {
            (Some(why), _, _) => why,
            (None, Some(_), None) => {
                "matchLabels needs the object's labels, which only a cluster has".into()
            }
            // Equality on every pair, ANDed; an empty selector selects everything.
            (None, Some(want), Some(have)) if !want.iter().all(|(k, v)| have.get(k) == Some(v)) => {
                format!("the object's labels do not match matchLabels {want:?}")
            }
            (None, _, _) => return inclusion_exclusion(entry, event),
        };
        reasons.push(format!("eventSources[{i}]: {why}"));
    }
    if reasons.is_empty() {
        return Some("the Alert has no event sources".into());
    }
    Some(reasons.join("; "))
}

fn inclusion_exclusion(entry: &AlertEntry, event: &Event) -> Option<String> {
    let spec = &entry.alert.spec;
    if !spec.inclusion_list.is_empty()
        && !entry.inclusion.iter().any(|r| r.is_match(&event.message))
    {
        return Some(format!(
            "the message matches none of inclusionList {:?}",
            spec.inclusion_list
        ));
    }
    if let Some(r) = entry.exclusion.iter().find(|r| r.is_match(&event.message)) {
        return Some(format!(
            "the message matches exclusionList entry {:?}",
            r.as_str()
        ));
    }
    None
}

/// Metadata for the outgoing notification, by increasing precedence: object annotations
/// (`event.toolkit.fluxcd.io/*`), the Alert's `eventMetadata`, its `summary`, then the
/// controller's own `<group>/*` keys, prefixes stripped. Also returns the keys more than one
/// source provided, with the sources' names, for Flux's conflict warning.
pub fn merge_metadata(
    event: &Event,
    alert: &api::Alert,
) -> (
    BTreeMap<String, String>,
    BTreeMap<String, Vec<&'static str>>,
) {
    let md = event.metadata.clone().unwrap_or_default();
    let own = format!("{}/", event.group());
    let mut merged = BTreeMap::new();
    let mut sources: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    let mut put = |k: String, v: String, src: &'static str| {
        sources.entry(k.clone()).or_default().push(src);
        merged.insert(k, v);
    };
    for (k, v) in &md {
        if let Some(stripped) = k.strip_prefix(EVENT_METADATA_PREFIX) {
            put(
                stripped.to_string(),
                v.clone(),
                "involved object annotations",
            );
        }
    }
    for (k, v) in &alert.spec.event_metadata {
        put(k.clone(), v.clone(), "Alert object .spec.eventMetadata");
    }
    if !alert.spec.summary.is_empty() {
        put(
            "summary".into(),
            alert.spec.summary.clone(),
            "Alert object .spec.summary",
        );
    }
    for (k, v) in &md {
        if let Some(stripped) = k.strip_prefix(&own) {
            put(
                stripped.to_string(),
                v.clone(),
                "involved object controller metadata",
            );
        }
    }
    sources.retain(|_, s| s.len() > 1);
    (merged, sources)
}

/// Flux's default status ID: `kind/name/<provider UID up to its first dash>`, lower-cased.
pub fn default_status_id(event: &Event, provider_uid: &str) -> String {
    let prefix = provider_uid.split('-').next().unwrap_or_default();
    let o = &event.involved_object;
    format!("{}/{}/{}", o.kind, o.name, prefix).to_lowercase()
}

/// Routes one event through one matching Alert.
pub fn route(
    catalog: &Catalog,
    event: &Event,
    entry: &AlertEntry,
    settings: &RouteSettings,
    notices: &dyn crate::config::hooks::Notices,
    seq: u64,
) -> Routed {
    let alert = &entry.alert;
    let alert_key = format!("{}/{}", alert.metadata.namespace, alert.metadata.name);
    let o = &event.involved_object;
    let fail = |provider: Option<String>, stage, error: String| Routed::Failed {
        alert: alert_key.clone(),
        provider,
        stage,
        error,
    };

    if settings.no_cross_namespace_refs && o.namespace != alert.metadata.namespace {
        return fail(
            None,
            Stage::Dispatch,
            format!(
                "discarding event, access denied to cross-namespace sources: alert '{}' can't process event from '{}', cross-namespace references have been blocked",
                alert_key,
                event.object_ref()
            ),
        );
    }
    let provider_name = &alert.spec.provider_ref.name;
    let Some(provider) = catalog.provider(&alert.metadata.namespace, provider_name) else {
        return fail(
            None,
            Stage::Dispatch,
            format!(
                "failed to read provider: providers.notification.toolkit.fluxcd.io \"{provider_name}\" not found"
            ),
        );
    };
    let spec = &provider.provider.spec;
    if spec.suspend {
        return Routed::Skipped {
            alert: alert_key,
            reason: "provider is suspended",
        };
    }

    let group = event.group();
    let md = event.metadata.as_ref();
    let commit_status_update = md
        .and_then(|m| m.get(&format!("{group}/commit_status")))
        .is_some_and(|v| v == "update");
    let has_commit_key = md
        .and_then(|m| m.get(&format!("{EVENT_METADATA_PREFIX}commit")))
        .is_some_and(|v| !v.is_empty());
    if !spec.is_commit_status() {
        // Chat and webhook providers are Flux notification-controller's job, not ours.
        return Routed::Skipped {
            alert: alert_key,
            reason: "provider type is not a commit-status type",
        };
    }
    if !has_commit_key
        && !commit_status_update
        && event.severity != "error"
        && !progressing_apply(event, group, settings.progressing)
    {
        return Routed::NoCommit { alert: alert_key };
    }
    if !settings.object_level_workload_identity
        && spec
            .service_account_name
            .as_deref()
            .is_some_and(|s| !s.is_empty())
    {
        return fail(
            Some(provider.key()),
            Stage::Dispatch,
            "to use spec.serviceAccountName for provider authentication please enable the ObjectLevelWorkloadIdentity feature gate in the controller".into(),
        );
    }

    let (merged, conflicts) = merge_metadata(event, alert);
    if !conflicts.is_empty() {
        let list: Vec<String> = conflicts
            .iter()
            .map(|(k, s)| format!("{k}: {}", s.join(", ")))
            .collect();
        tracing::info!(alert = %alert_key, conflicts = ?list, "warning: metadata key conflicts detected (please refer to the Alert API docs and Flux RFC 0008 for more information)");
        notices.warning(
            &alert_key,
            crate::config::hooks::reason::METADATA_APPEND_FAILED,
            format!("metadata key conflicts detected (please refer to the Alert API docs and Flux RFC 0008 for more information): {}", list.join("; ")),
        );
    }
    let metadata = if merged.is_empty() {
        md.cloned().unwrap_or_default()
    } else {
        merged
    };

    // The three expressions see the same variables: the event with merged metadata, the
    // Provider and the Alert as the API server serves them.
    let exprs = &provider.exprs;
    let (event_json, alert_json) =
        if exprs.status.is_some() || exprs.target_url.is_some() || exprs.description.is_some() {
            let mut merged_event = event.clone();
            merged_event.metadata = Some(metadata.clone());
            (
                merged_event.to_json(),
                serde_json::to_value(&entry.alert).unwrap_or_default(),
            )
        } else {
            // Most Providers have no expressions: skip building their inputs.
            (serde_json::Value::Null, serde_json::Value::Null)
        };
    let eval = |expr: &crate::config::status_expr::StatusExpr| {
        expr.evaluate(&event_json, &provider.json, &alert_json)
    };
    let status_id = match &provider.exprs.status {
        None => Ok(default_status_id(event, &provider.provider.metadata.uid)),
        Some(expr) => eval(expr),
    };
    let status_id = match status_id {
        Ok(id) => id,
        Err(e) => {
            return fail(
                Some(provider.key()),
                Stage::Dispatch,
                format!(
                    "failed to create commit status: failed to evaluate the spec.commitStatusExpr CEL expression for the event: {e}"
                ),
            );
        }
    };
    let mut templated = [None, None];
    for (slot, (expr, annotation)) in templated.iter_mut().zip([
        (
            &provider.exprs.target_url,
            crate::config::status_expr::TARGET_URL_ANNOTATION,
        ),
        (
            &provider.exprs.description,
            crate::config::status_expr::DESCRIPTION_ANNOTATION,
        ),
    ]) {
        if let Some(expr) = expr {
            match eval(expr) {
                Ok(v) => *slot = Some(v),
                Err(e) => {
                    return fail(
                        Some(provider.key()),
                        Stage::Dispatch,
                        format!(
                            "failed to evaluate the {annotation} CEL expression for the event: {e}"
                        ),
                    );
                }
            }
        }
    }
    let [target_url, description] = templated;

    let forge = match &provider.forge {
        Some(Ok(forge)) => forge.clone(),
        Some(Err(e)) => {
            return fail(
                Some(provider.key()),
                Stage::Dispatch,
                format!("failed to initialize notifier for provider '{provider_name}': {e}"),
            );
        }
        None => {
            return fail(
                Some(provider.key()),
                Stage::Dispatch,
                format!(
                    "failed to initialize notifier: provider {} not supported",
                    spec.type_
                ),
            );
        }
    };

    // Our delivery page is the link when the Provider has none; it names the delivery.
    let target_url = target_url.or_else(|| plan::page_link(settings.public_url.as_deref(), seq));
    let mut record = Pending {
        seq,
        accepted_ms: crate::delivery::store::now_ms(),
        not_before_ms: 0,
        attempts: 0,
        last_error: None,
        delivery: Delivery {
            provider: provider.key(),
            provider_uid: provider.provider.metadata.uid.clone(),
            alert: alert_key,
            object: event.object_ref(),
            // Stored, listed and served: never with the user info or query of the address.
            repository: notify::address::redacted(&provider.address),
            forge: forge.kind().to_string(),
            // Planning fills these in below.
            sha: String::new(),
            state: String::new(),
            description: String::new(),
            status_id,
            target_url,
            message: event.message.clone(),
            message_cut: false,
            planned: None,
        },
        kind: o.kind.clone(),
        name: o.name.clone(),
        reason: event.reason.clone(),
        severity: event.severity.clone(),
        metadata,
        description_override: description,
        status_id_from_expr: provider.exprs.status.is_some(),
        attempt_log: Vec::new(),
    };
    match plan::plan(&forge, &mut record, settings.progressing) {
        Ok(true) => Routed::Job(Box::new(record)),
        Ok(false) => Routed::Skipped {
            alert: record.delivery.alert,
            reason: "progressing event",
        },
        Err(e) => Routed::Failed {
            alert: record.delivery.alert,
            provider: Some(record.delivery.provider),
            stage: Stage::Send,
            error: e.to_string(),
        },
    }
}

/// kustomize-controller's change-set event during an apply (issue 11): severity `info`, the
/// Ready condition's reason `Progressing`, a revision and no `commit_status` key. It posts
/// the in-progress state unless `--progressing-status skip`; the delivery drops it if the
/// commit already has its final state (see `delivery::superseded_progressing`).
fn progressing_apply(event: &Event, group: &str, mode: ProgressingMode) -> bool {
    mode == ProgressingMode::Pending
        && event.severity == "info"
        && event.reason == "Progressing"
        && event
            .metadata
            .as_ref()
            .and_then(|m| m.get(&format!("{group}/revision")))
            .is_some_and(|v| !v.trim().is_empty())
}

/// The Alerts, as `namespace/name`, whose commit-status provider dropped the event.
pub fn no_commit_alerts(routed: &[Routed]) -> BTreeSet<&str> {
    routed
        .iter()
        .filter_map(|r| match r {
            Routed::NoCommit { alert } => Some(alert.as_str()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests;
