//! What a Flux object's state implies, without I/O: the few fields read from it (a partial
//! object, so a watch holds kilobytes, not whole inventories), the objects the Alerts select,
//! and the event its controller would have sent for that state, which then takes the event path.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use kube::api::ApiResource;
use kube::core::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use api::{EVENT_METADATA_PREFIX, Event, ObjectReference};
use notify::ProgressingMode;

use crate::config::catalog::Catalog;

/// The API group whose success event carries `commit_status: update` (kustomize-controller's).
const KUSTOMIZE_GROUP: &str = "kustomize.toolkit.fluxcd.io";
/// The condition a Flux object reports its outcome in, and the reason of "in progress".
const READY: &str = "Ready";
const PROGRESSING: &str = "Progressing";

/// A Flux object as watched: metadata trimmed while it is decoded (no `managedFields`, only the
/// `event.toolkit.fluxcd.io/` annotations) and only the status fields a commit status needs.
/// Unknown fields (an inventory of thousands of entries) are skipped, never allocated.
#[derive(Clone, Debug, Deserialize)]
pub struct FluxObject {
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "lenient")]
    pub status: Status,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default, deserialize_with = "lenient")]
    pub conditions: Vec<Condition>,
    #[serde(default, deserialize_with = "lenient")]
    pub last_applied_revision: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub last_applied_origin_revision: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub last_attempted_revision: Option<String>,
    /// Not in kustomize-controller v1.9's CRD; read when a later version has it.
    #[serde(default, deserialize_with = "lenient")]
    pub last_attempted_origin_revision: Option<String>,
    /// Source kinds report their revision here instead.
    #[serde(default, deserialize_with = "lenient")]
    pub artifact: Option<Artifact>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Artifact {
    #[serde(default, deserialize_with = "lenient")]
    pub revision: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Condition {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    pub type_: String,
    #[serde(default, deserialize_with = "lenient")]
    pub status: String,
    #[serde(default, deserialize_with = "lenient")]
    pub reason: String,
    #[serde(default, deserialize_with = "lenient")]
    pub message: String,
}

/// A field of the wrong shape (a status written by hand) reads as absent instead of failing
/// the whole list, which would stop the watch of every object of the kind.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(d: D) -> Result<T, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(value).unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "event_annotations")]
    annotations: BTreeMap<String, String>,
}

/// Keeps only the annotations a Flux controller copies into its events.
fn event_annotations<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let all: BTreeMap<String, String> = lenient(d)?;
    Ok(all
        .into_iter()
        .filter(|(k, _)| k.starts_with(EVENT_METADATA_PREFIX))
        .collect())
}

fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = SlimMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        labels: Some(m.labels),
        annotations: Some(m.annotations),
        ..Default::default()
    })
}

impl kube::Resource for FluxObject {
    type DynamicType = ApiResource;
    type Scope = kube::core::DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }
    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }
    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The Ready condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// What is kept of one watched object: exactly what the status it implies depends on, so
/// that comparing two of them tells whether a change matters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectState {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// `event.toolkit.fluxcd.io/*` only.
    pub annotations: BTreeMap<String, String>,
    pub ready: Option<Ready>,
    pub applied: Option<String>,
    pub applied_origin: Option<String>,
    pub attempted: Option<String>,
    pub attempted_origin: Option<String>,
}

impl ObjectState {
    pub fn from_object(o: FluxObject, resource: &ApiResource) -> ObjectState {
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        let st = o.status;
        let ready = st
            .conditions
            .into_iter()
            .find(|c| c.type_ == READY)
            .map(|c| Ready {
                status: c.status,
                reason: c.reason,
                message: c.message,
            });
        let m = o.metadata;
        ObjectState {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
            namespace: m.namespace.unwrap_or_default(),
            name: m.name.unwrap_or_default(),
            uid: m.uid.unwrap_or_default(),
            labels: m.labels.unwrap_or_default(),
            annotations: m.annotations.unwrap_or_default(),
            ready,
            // Sources have no "applied" revision: their artifact is what they reconciled.
            applied: non_empty(st.last_applied_revision)
                .or_else(|| non_empty(st.artifact.and_then(|a| a.revision))),
            applied_origin: non_empty(st.last_applied_origin_revision),
            attempted: non_empty(st.last_attempted_revision),
            attempted_origin: non_empty(st.last_attempted_origin_revision),
        }
    }

    fn group(&self) -> &str {
        self.api_version
            .split_once('/')
            .map(|(g, _)| g)
            .unwrap_or_default()
    }

    /// The origin revision of the attempted revision: its own, or the applied one's when the
    /// attempt is of the applied revision (v1.9's status has no attempted origin).
    fn attempted_origin(&self) -> Option<&String> {
        self.attempted_origin.as_ref().or_else(|| {
            (self.attempted.is_some() && self.attempted == self.applied)
                .then_some(self.applied_origin.as_ref())
                .flatten()
        })
    }
}

/// The event the object's controller sends for its current state (kustomize-controller's
/// `event()`: reason = the Ready reason, `<group>/revision` and `<group>/originRevision`, the
/// object's `event.toolkit.fluxcd.io/` annotations, and `commit_status: update` on success),
/// with the Ready condition's message. `None` when the state implies no status:
/// - `Ready=True` → success for the applied revision;
/// - `Ready=False` → failure for the attempted revision;
/// - `Ready=Unknown` with reason `Progressing` → in progress for the attempted revision, only
///   while it is not the applied one (kustomize-controller marks every reconcile so), and not
///   with `--progressing-status skip`;
/// - anything else, or no revision to attach it to → nothing.
pub fn desired_event(o: &ObjectState, progressing: ProgressingMode) -> Option<Event> {
    let ready = o.ready.as_ref()?;
    let group = o.group();
    let (severity, revision, origin) = match ready.status.as_str() {
        // helm-controller has only an attempted revision (its chart version).
        "True" => (
            "info",
            o.applied.as_ref().or(o.attempted.as_ref()),
            o.applied_origin.as_ref(),
        ),
        "False" => ("error", o.attempted.as_ref(), o.attempted_origin()),
        "Unknown" if ready.reason == PROGRESSING && progressing == ProgressingMode::Pending => {
            let attempted = o.attempted.as_ref()?;
            if o.applied.as_ref() == Some(attempted) {
                return None;
            }
            ("info", Some(attempted), o.attempted_origin())
        }
        _ => return None,
    };
    let commit_key = format!("{EVENT_METADATA_PREFIX}commit");
    if revision.is_none() && !o.annotations.contains_key(&commit_key) {
        return None;
    }
    let mut metadata = o.annotations.clone();
    if let Some(r) = revision {
        metadata.insert(format!("{group}/revision"), r.clone());
    }
    if let Some(r) = origin {
        metadata.insert(format!("{group}/originRevision"), r.clone());
    }
    if severity == "info" && ready.status == "True" && group == KUSTOMIZE_GROUP {
        metadata.insert(format!("{group}/commit_status"), "update".into());
    }
    Some(Event {
        involved_object: ObjectReference {
            kind: o.kind.clone(),
            namespace: o.namespace.clone(),
            name: o.name.clone(),
            uid: o.uid.clone(),
            api_version: o.api_version.clone(),
            ..Default::default()
        },
        severity: severity.into(),
        timestamp: Some(chrono::Utc::now().fixed_offset()),
        message: ready.message.clone(),
        reason: ready.reason.clone(),
        metadata: Some(metadata),
        reporting_controller: reporting_controller(group).into(),
        reporting_instance: String::new(),
    })
}

/// The controller that owns a Flux group (its events' `reportingController`).
fn reporting_controller(group: &str) -> &'static str {
    match group {
        KUSTOMIZE_GROUP => "kustomize-controller",
        "helm.toolkit.fluxcd.io" => "helm-controller",
        "source.toolkit.fluxcd.io" | "source.extensions.fluxcd.io" => "source-controller",
        "image.toolkit.fluxcd.io" => "image-reflector-controller",
        _ => "",
    }
}

/// Which objects of one kind in one namespace the Alerts select: (name or `*`, `matchLabels`)
/// of each source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection(BTreeSet<(String, Option<BTreeMap<String, String>>)>);

impl Selection {
    /// As matching decides it: the name (or `*`), and every label of the selector.
    pub fn admits(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().any(|(n, want)| {
            (n == "*" || n == name)
                && want
                    .as_ref()
                    .is_none_or(|w| w.iter().all(|(k, v)| labels.get(k) == Some(v)))
        })
    }

    /// The one name selected, when only one object can be: a name-scoped watch suffices.
    pub fn only_name(&self) -> Option<&str> {
        let names: BTreeSet<&str> = self.0.iter().map(|(n, _)| n.as_str()).collect();
        match names.into_iter().collect::<Vec<_>>()[..] {
            [name] if name != "*" => Some(name),
            _ => None,
        }
    }
}

/// (kind, namespace) → selection, for every source of every Alert that can post a commit
/// status: not suspended, its Provider present, not suspended and of a commit-status type.
pub fn targets(
    catalog: &Catalog,
    no_cross_namespace_refs: bool,
) -> BTreeMap<(String, String), Selection> {
    let mut out: BTreeMap<(String, String), Selection> = BTreeMap::new();
    for entry in catalog.alerts() {
        let alert = &entry.alert;
        if alert.spec.suspend {
            continue;
        }
        let posts = catalog
            .provider(&alert.metadata.namespace, &alert.spec.provider_ref.name)
            .is_some_and(|p| !p.provider.spec.suspend && p.provider.spec.is_commit_status());
        if !posts {
            continue;
        }
        for src in &alert.spec.event_sources {
            let ns = src
                .namespace
                .clone()
                .unwrap_or_else(|| alert.metadata.namespace.clone());
            if no_cross_namespace_refs && ns != alert.metadata.namespace {
                continue;
            }
            out.entry((src.kind.clone(), ns))
                .or_default()
                .0
                .insert((src.name.clone(), src.match_labels.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: &str = "a1afe267b54f38b46b487f6e938a6fd508278c07";
    const B: &str = "5394cb7f48332b2de7c17dd8b8384bbc84b7e738";

    fn resource() -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk(KUSTOMIZE_GROUP, "v1", "Kustomization"),
            "kustomizations",
        )
    }

    fn kustomization(status: serde_json::Value) -> ObjectState {
        let o: FluxObject = serde_json::from_value(json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization",
            "metadata": {
                "name": "apps", "namespace": "flux-system", "uid": "u-1",
                "resourceVersion": "7", "labels": {"team": "a"},
                "annotations": {
                    "event.toolkit.fluxcd.io/summary": "prod",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"huge\": true}"
                },
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {"interval": "10m"},
            "status": status,
        }))
        .unwrap();
        ObjectState::from_object(o, &resource())
    }

    fn ready(status: &str, reason: &str, message: &str) -> serde_json::Value {
        json!([{"type": "Ready", "status": status, "reason": reason, "message": message,
                "lastTransitionTime": "2026-01-01T00:00:00Z"}])
    }

    #[test]
    fn keeps_only_what_a_status_needs() {
        let o = kustomization(json!({
            "conditions": ready("True", "ReconciliationSucceeded", "Applied revision: main@sha1:x"),
            "lastAppliedRevision": format!("main@sha1:{A}"),
            "inventory": {"entries": [{"id": "x", "v": "v1"}]},
        }));
        assert_eq!(
            o.annotations.keys().collect::<Vec<_>>(),
            ["event.toolkit.fluxcd.io/summary"]
        );
        assert_eq!(o.labels.get("team").map(String::as_str), Some("a"));
        assert_eq!(o.applied.as_deref(), Some(&*format!("main@sha1:{A}")));
        assert_eq!(o.kind, "Kustomization");
    }

    #[test]
    fn ready_true_is_kustomize_controllers_success_event() {
        let o = kustomization(json!({
            "conditions": ready("True", "ReconciliationSucceeded", "Applied revision: main@sha1:x"),
            "lastAppliedRevision": format!("latest@sha256:{}", "f".repeat(64)),
            "lastAppliedOriginRevision": format!("main@sha1:{A}"),
            "lastAttemptedRevision": format!("latest@sha256:{}", "f".repeat(64)),
        }));
        let e = desired_event(&o, ProgressingMode::Pending).unwrap();
        assert_eq!(e.severity, "info");
        assert_eq!(e.reason, "ReconciliationSucceeded");
        assert_eq!(e.message, "Applied revision: main@sha1:x");
        assert_eq!(
            e.involved_object.api_version,
            "kustomize.toolkit.fluxcd.io/v1"
        );
        assert_eq!(e.involved_object.uid, "u-1");
        assert_eq!(e.reporting_controller, "kustomize-controller");
        let md = e.metadata.unwrap();
        assert_eq!(
            md.get("kustomize.toolkit.fluxcd.io/originRevision")
                .unwrap(),
            &format!("main@sha1:{A}")
        );
        assert!(md["kustomize.toolkit.fluxcd.io/revision"].starts_with("latest@sha256:"));
        assert_eq!(md["kustomize.toolkit.fluxcd.io/commit_status"], "update");
        assert_eq!(md["event.toolkit.fluxcd.io/summary"], "prod");
        assert_eq!(
            notify::revision::from_metadata(&strip(&md)).unwrap(),
            A,
            "origin revision first"
        );
    }

    /// The merged view the forge reads (`<group>/` prefix stripped).
    fn strip(md: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        md.iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("kustomize.toolkit.fluxcd.io/")
                    .map(|k| (k.to_string(), v.clone()))
            })
            .collect()
    }

    #[test]
    fn ready_false_is_a_failure_on_the_attempted_revision() {
        let o = kustomization(json!({
            "conditions": ready("False", "HealthCheckFailed", "timeout waiting for: [Deployment/x]"),
            "lastAppliedRevision": format!("main@sha1:{A}"),
            "lastAppliedOriginRevision": "ignored-for-another-revision",
            "lastAttemptedRevision": format!("main@sha1:{B}"),
        }));
        let e = desired_event(&o, ProgressingMode::Pending).unwrap();
        assert_eq!(
            (e.severity.as_str(), e.reason.as_str()),
            ("error", "HealthCheckFailed")
        );
        let md = e.metadata.unwrap();
        assert_eq!(
            md["kustomize.toolkit.fluxcd.io/revision"],
            format!("main@sha1:{B}")
        );
        assert!(!md.contains_key("kustomize.toolkit.fluxcd.io/originRevision"));
        assert!(!md.contains_key("kustomize.toolkit.fluxcd.io/commit_status"));

        // Retrying the applied revision: its origin is the applied one's.
        let o = kustomization(json!({
            "conditions": ready("False", "ReconciliationFailed", "x"),
            "lastAppliedRevision": "r1",
            "lastAppliedOriginRevision": format!("main@sha1:{A}"),
            "lastAttemptedRevision": "r1",
        }));
        let md = desired_event(&o, ProgressingMode::Pending)
            .unwrap()
            .metadata
            .unwrap();
        assert_eq!(
            md["kustomize.toolkit.fluxcd.io/originRevision"],
            format!("main@sha1:{A}")
        );
    }

    #[test]
    fn progressing_only_for_a_new_revision() {
        let status = |attempted: &str| {
            json!({
                "conditions": ready("Unknown", "Progressing", "Reconciliation in progress"),
                "lastAppliedRevision": format!("main@sha1:{A}"),
                "lastAttemptedRevision": attempted,
            })
        };
        let o = kustomization(status(&format!("main@sha1:{B}")));
        let e = desired_event(&o, ProgressingMode::Pending).unwrap();
        assert_eq!(
            (e.severity.as_str(), e.reason.as_str()),
            ("info", "Progressing")
        );
        assert_eq!(
            e.metadata.unwrap()["kustomize.toolkit.fluxcd.io/revision"],
            format!("main@sha1:{B}")
        );
        assert!(desired_event(&o, ProgressingMode::Skip).is_none());
        // Every reconcile is Progressing, also of the applied revision: nothing then.
        let same = kustomization(status(&format!("main@sha1:{A}")));
        assert!(desired_event(&same, ProgressingMode::Pending).is_none());
    }

    #[test]
    fn no_status_without_a_ready_verdict_or_a_revision() {
        for status in [
            json!({}),
            json!({"conditions": ready("Unknown", "DependencyNotReady", "x"), "lastAttemptedRevision": "r"}),
            json!({"conditions": ready("False", "ArtifactFailed", "Source artifact not found")}),
            json!({"conditions": "not a list", "lastAppliedRevision": 5}),
        ] {
            assert!(
                desired_event(&kustomization(status.clone()), ProgressingMode::Pending).is_none(),
                "{status}"
            );
        }
    }

    #[test]
    fn a_commit_annotation_is_enough() {
        let mut o = kustomization(json!({"conditions": ready("False", "ArtifactFailed", "x")}));
        o.annotations
            .insert("event.toolkit.fluxcd.io/commit".into(), A.into());
        let e = desired_event(&o, ProgressingMode::Pending).unwrap();
        assert_eq!(e.metadata.unwrap()["event.toolkit.fluxcd.io/commit"], A);
    }

    #[test]
    fn a_helm_release_reports_its_chart_version() {
        let ar = ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("helm.toolkit.fluxcd.io", "v2", "HelmRelease"),
            "helmreleases",
        );
        let o: FluxObject = serde_json::from_value(json!({
            "metadata": {"name": "podinfo", "namespace": "apps"},
            "status": {"conditions": ready("True", "UpgradeSucceeded", "Helm upgrade succeeded"),
                       "lastAttemptedRevision": "6.5.0"},
        }))
        .unwrap();
        let e = desired_event(&ObjectState::from_object(o, &ar), ProgressingMode::Pending).unwrap();
        let md = e.metadata.unwrap();
        assert_eq!(md["helm.toolkit.fluxcd.io/revision"], "6.5.0");
        assert!(!md.contains_key("helm.toolkit.fluxcd.io/commit_status"));
        assert_eq!(e.reporting_controller, "helm-controller");
    }

    #[test]
    fn a_large_status_decodes_without_keeping_it() {
        let entries: Vec<_> = (0..20_000)
            .map(|i| json!({"id": format!("ns_name{i}_apps_Deployment"), "v": "v1"}))
            .collect();
        let o = kustomization(json!({
            "conditions": ready("True", "ReconciliationSucceeded", "ok"),
            "lastAppliedRevision": format!("main@sha1:{A}"),
            "inventory": {"entries": entries},
        }));
        assert!(desired_event(&o, ProgressingMode::Pending).is_some());
    }

    fn catalog(providers: serde_json::Value, alerts: serde_json::Value) -> Catalog {
        let objects = crate::config::catalog::Objects {
            providers: serde_json::from_value::<Vec<api::Provider>>(providers)
                .unwrap()
                .into_iter()
                .map(|p| (p, Default::default()))
                .collect(),
            alerts: serde_json::from_value(alerts).unwrap(),
            secrets: Vec::new(),
        };
        Catalog::build(objects, &notify::ClientCache::new())
    }

    fn provider(name: &str, type_: &str, suspend: bool) -> serde_json::Value {
        json!({"apiVersion": "notification.toolkit.fluxcd.io/v1beta3", "kind": "Provider",
               "metadata": {"name": name, "namespace": "apps", "uid": "u"},
               "spec": {"type": type_, "address": "https://github.com/o/r", "suspend": suspend}})
    }

    fn alert(
        name: &str,
        provider: &str,
        suspend: bool,
        sources: serde_json::Value,
    ) -> serde_json::Value {
        json!({"apiVersion": "notification.toolkit.fluxcd.io/v1beta3", "kind": "Alert",
               "metadata": {"name": name, "namespace": "apps"},
               "spec": {"providerRef": {"name": provider}, "eventSources": sources, "suspend": suspend}})
    }

    #[test]
    fn targets_are_the_sources_of_alerts_that_can_post() {
        let c = catalog(
            json!([
                provider("gh", "github", false),
                provider("off", "github", true),
                provider("chat", "slack", false)
            ]),
            json!([
                alert(
                    "a",
                    "gh",
                    false,
                    json!([
                        {"kind": "Kustomization", "name": "podinfo"},
                        {"kind": "Kustomization", "name": "*", "matchLabels": {"team": "a"}},
                        {"kind": "HelmRelease", "name": "web", "namespace": "other"},
                    ])
                ),
                alert(
                    "suspended",
                    "gh",
                    true,
                    json!([{"kind": "GitRepository", "name": "*"}])
                ),
                alert(
                    "provider-suspended",
                    "off",
                    false,
                    json!([{"kind": "Bucket", "name": "*"}])
                ),
                alert(
                    "chat",
                    "chat",
                    false,
                    json!([{"kind": "OCIRepository", "name": "*"}])
                ),
                alert(
                    "dangling",
                    "missing",
                    false,
                    json!([{"kind": "ImagePolicy", "name": "*"}])
                ),
            ]),
        );
        let t = targets(&c, false);
        let keys: Vec<_> = t.keys().cloned().collect();
        assert_eq!(
            keys,
            [
                ("HelmRelease".to_string(), "other".to_string()),
                ("Kustomization".to_string(), "apps".to_string())
            ]
        );
        let ks = &t[&("Kustomization".to_string(), "apps".to_string())];
        let labels = |team: &str| BTreeMap::from([("team".to_string(), team.to_string())]);
        assert!(ks.admits("podinfo", &BTreeMap::new()));
        assert!(ks.admits("anything", &labels("a")));
        assert!(!ks.admits("anything", &labels("b")));
        assert_eq!(ks.only_name(), None);
        let hr = &t[&("HelmRelease".to_string(), "other".to_string())];
        assert_eq!(hr.only_name(), Some("web"));
        assert!(!hr.admits("api", &BTreeMap::new()));
        // Cross-namespace sources are refused when the flag says so, as events are.
        assert_eq!(targets(&c, true).len(), 1);
    }
}
