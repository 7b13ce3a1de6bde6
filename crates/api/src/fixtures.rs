//! Test fixtures (feature `test-fixtures`): `Provider::test(…)`, `Alert::test(…)`,
//! `Secret::test(…)` and `Event::test(…)` builders with sensible defaults, and [`Manifests`], the
//! files a standalone controller reads (`--manifests DIR`), so that a test states only what it
//! is about. In the style of kube-rs's controller-rs (`Document::test()`).
//!
//! Defaults: namespace and name as given, [`UID`] as the object UID, a GitHub Provider on
//! `https://github.com/o/r` whose Secret is `<name>-token`, an Alert (same name) for every
//! Kustomization, and a kustomize-controller `ReconciliationSucceeded` event for [`SHA`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::DateTime;
use serde_json::{Value, json};

use crate::event::{Event, ObjectReference};
use crate::manifest::{
    Alert, AlertSpec, CrossNamespaceObjectReference, LocalObjectReference, ObjectMeta, Provider,
    ProviderSpec, Secret,
};

/// The UID every fixture object gets (the status name of a Provider is made from it).
pub const UID: &str = "0c9c2e41-d2f9-4f9b-9c41-bebc1984d67a";
/// The commit of the default event.
pub const SHA: &str = "5394cb7f48332b2de7c17dd8b8384bbc84b7e738";
/// The UID of the default event's involved object.
pub const OBJECT_UID: &str = "7d0cdc51-ddcf-4743-b223-83ca5c699632";
/// The metadata key of a Kustomization's revision.
pub const REVISION_KEY: &str = "kustomize.toolkit.fluxcd.io/revision";

const V1BETA3: &str = "notification.toolkit.fluxcd.io/v1beta3";

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: name.into(),
        namespace: namespace.into(),
        uid: UID.into(),
        ..ObjectMeta::default()
    }
}

impl Provider {
    /// A GitHub Provider `namespace/name` on `https://github.com/o/r`, its token in Secret
    /// `<name>-token`.
    pub fn test(namespace: &str, name: &str) -> Provider {
        Provider {
            api_version: V1BETA3.into(),
            kind: "Provider".into(),
            metadata: meta(namespace, name),
            spec: ProviderSpec {
                type_: "github".into(),
                address: Some("https://github.com/o/r".into()),
                secret_ref: Some(LocalObjectReference {
                    name: format!("{name}-token"),
                }),
                ..ProviderSpec::default()
            },
        }
    }

    /// The Provider most binary tests start from: `flux-system/<type_>` of that type on
    /// `address`, its credentials in Secret `<type_>-token`.
    pub fn forge(type_: &str, address: &str) -> Provider {
        Provider::test("flux-system", type_)
            .of_type(type_)
            .address(address)
    }

    /// `spec.type`.
    pub fn of_type(mut self, type_: &str) -> Provider {
        self.spec.type_ = type_.into();
        self
    }

    /// `spec.address`.
    pub fn address(mut self, address: &str) -> Provider {
        self.spec.address = Some(address.into());
        self
    }

    /// `spec.secretRef`.
    pub fn secret_ref(mut self, name: &str) -> Provider {
        self.spec.secret_ref = Some(LocalObjectReference { name: name.into() });
        self
    }

    /// No `spec.secretRef`.
    pub fn without_secret(mut self) -> Provider {
        self.spec.secret_ref = None;
        self
    }

    /// `metadata.uid`.
    pub fn uid(mut self, uid: &str) -> Provider {
        self.metadata.uid = uid.into();
        self
    }

    /// One `metadata.annotations` entry.
    pub fn annotation(mut self, key: &str, value: &str) -> Provider {
        self.metadata.annotations.insert(key.into(), value.into());
        self
    }

    /// Any other spec change.
    pub fn with_spec(mut self, change: impl FnOnce(&mut ProviderSpec)) -> Provider {
        change(&mut self.spec);
        self
    }

    /// The same object in our own API group ([`crate::OWN_GROUP`]).
    pub fn own_group(mut self) -> Provider {
        self.api_version = format!("{}/v1beta3", crate::OWN_GROUP);
        self
    }

    /// The manifest document of this Provider.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a Provider serialises")
    }
}

impl Alert {
    /// An Alert `namespace/name` for every Kustomization, at `info` severity, routing to the
    /// Provider of the same name.
    pub fn test(namespace: &str, name: &str) -> Alert {
        Alert {
            api_version: V1BETA3.into(),
            kind: "Alert".into(),
            metadata: meta(namespace, name),
            spec: AlertSpec {
                provider_ref: LocalObjectReference { name: name.into() },
                event_severity: "info".into(),
                event_sources: vec![CrossNamespaceObjectReference::test("Kustomization", "*")],
                ..AlertSpec::default()
            },
        }
    }

    /// `spec.providerRef`.
    pub fn provider(mut self, name: &str) -> Alert {
        self.spec.provider_ref = LocalObjectReference { name: name.into() };
        self
    }

    /// `spec.eventSources`, replacing the default.
    pub fn sources(mut self, sources: Vec<CrossNamespaceObjectReference>) -> Alert {
        self.spec.event_sources = sources;
        self
    }

    /// `spec.eventSeverity`.
    pub fn severity(mut self, severity: &str) -> Alert {
        self.spec.event_severity = severity.into();
        self
    }

    /// Any other spec change.
    pub fn with_spec(mut self, change: impl FnOnce(&mut AlertSpec)) -> Alert {
        change(&mut self.spec);
        self
    }

    /// The same object in our own API group ([`crate::OWN_GROUP`]).
    pub fn own_group(mut self) -> Alert {
        self.api_version = format!("{}/v1beta3", crate::OWN_GROUP);
        self
    }

    /// The manifest document of this Alert.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("an Alert serialises")
    }
}

impl CrossNamespaceObjectReference {
    /// An event source selecting `kind` objects named `name` (`*` for all) in the Alert's
    /// namespace.
    pub fn test(kind: &str, name: &str) -> CrossNamespaceObjectReference {
        CrossNamespaceObjectReference {
            kind: kind.into(),
            name: name.into(),
            ..CrossNamespaceObjectReference::default()
        }
    }

    /// In another namespace (`*` for all).
    pub fn in_namespace(mut self, namespace: &str) -> CrossNamespaceObjectReference {
        self.namespace = Some(namespace.into());
        self
    }

    /// `matchLabels`.
    pub fn labels(mut self, labels: &[(&str, &str)]) -> CrossNamespaceObjectReference {
        self.match_labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        self
    }
}

impl Secret {
    /// An empty Opaque Secret `namespace/name`.
    pub fn test(namespace: &str, name: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                uid: String::new(),
                ..meta(namespace, name)
            },
            type_: String::new(),
            data: BTreeMap::new(),
        }
    }

    /// One key.
    pub fn with(mut self, key: &str, value: impl AsRef<[u8]>) -> Secret {
        self.data.insert(key.into(), value.as_ref().to_vec());
        self
    }

    /// Every key of `pairs`.
    pub fn with_all(self, pairs: &[(&str, &str)]) -> Secret {
        pairs.iter().fold(self, |s, (k, v)| s.with(k, v))
    }

    /// The manifest document: text values as `stringData`, others base64 in `data`.
    pub fn to_value(&self) -> Value {
        use base64::Engine as _;
        let (mut text, mut data) = (serde_json::Map::new(), serde_json::Map::new());
        for (k, v) in &self.data {
            match std::str::from_utf8(v) {
                Ok(s) => text.insert(k.clone(), json!(s)),
                Err(_) => data.insert(
                    k.clone(),
                    json!(base64::engine::general_purpose::STANDARD.encode(v)),
                ),
            };
        }
        let mut doc = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": self.metadata,
        });
        if !self.type_.is_empty() {
            doc["type"] = json!(self.type_);
        }
        if !text.is_empty() {
            doc["stringData"] = Value::Object(text);
        }
        if !data.is_empty() {
            doc["data"] = Value::Object(data);
        }
        doc
    }
}

impl Event {
    /// What kustomize-controller sends when Kustomization `namespace/name` reconciled
    /// [`SHA`]: `info`, `ReconciliationSucceeded`, with the revision and
    /// `commit_status: update` metadata.
    pub fn test(namespace: &str, name: &str) -> Event {
        Event {
            involved_object: ObjectReference {
                kind: "Kustomization".into(),
                namespace: namespace.into(),
                name: name.into(),
                uid: OBJECT_UID.into(),
                api_version: "kustomize.toolkit.fluxcd.io/v1".into(),
                ..ObjectReference::default()
            },
            severity: "info".into(),
            timestamp: DateTime::parse_from_rfc3339("2026-11-25T07:26:19Z").ok(),
            message: "Reconciliation finished in 2.1s, next run in 10m0s".into(),
            reason: "ReconciliationSucceeded".into(),
            metadata: Some(BTreeMap::from([
                (REVISION_KEY.to_string(), format!("main@sha1:{SHA}")),
                (
                    "kustomize.toolkit.fluxcd.io/commit_status".to_string(),
                    "update".to_string(),
                ),
            ])),
            reporting_controller: "kustomize-controller".into(),
            reporting_instance: "kustomize-controller-7f5c8b6d9c-x2x9z".into(),
        }
    }

    /// The `Progressing` event sent when a reconciliation starts.
    pub fn progressing(self) -> Event {
        self.reason("Progressing")
            .message("Reconciliation in progress")
    }

    /// An `error` event with this reason and message (`HealthCheckFailed`, say).
    pub fn failed(self, reason: &str, message: &str) -> Event {
        self.severity("error").reason(reason).message(message)
    }

    /// The involved object's kind and `apiVersion`.
    pub fn object_kind(mut self, kind: &str, api_version: &str) -> Event {
        self.involved_object.kind = kind.into();
        self.involved_object.api_version = api_version.into();
        self
    }

    pub fn severity(mut self, severity: &str) -> Event {
        self.severity = severity.into();
        self
    }

    pub fn reason(mut self, reason: &str) -> Event {
        self.reason = reason.into();
        self
    }

    pub fn message(mut self, message: &str) -> Event {
        self.message = message.into();
        self
    }

    /// The revision metadata at `main@sha1:<sha>`.
    pub fn commit(self, sha: &str) -> Event {
        self.meta(REVISION_KEY, &format!("main@sha1:{sha}"))
    }

    /// One metadata entry (added, or replacing the default one of that key).
    pub fn meta(mut self, key: &str, value: &str) -> Event {
        self.metadata
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }

    /// Exactly this metadata, nothing of the defaults.
    pub fn only_meta(mut self, entries: &[(&str, &str)]) -> Event {
        self.metadata = Some(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        self
    }
}

/// The manifest files of a standalone controller: Providers, Alerts and Secrets in order, one
/// document each. Documents are written as JSON, which every YAML parser reads (JSON is YAML
/// 1.2), so what a test builds is exactly what the controller loads.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    docs: Vec<Value>,
}

impl Manifests {
    pub fn new() -> Manifests {
        Manifests::default()
    }

    /// `provider`, the Secret its `secretRef` names holding `secret`, and an Alert of the same
    /// name for every Kustomization: the setup most tests start from.
    pub fn routed(provider: Provider, secret: &[(&str, &str)]) -> Manifests {
        let (ns, name) = (&provider.metadata.namespace, &provider.metadata.name);
        let alert = Alert::test(ns, name);
        let mut m = Manifests::new();
        if let Some(r) = &provider.spec.secret_ref {
            m = m.secret(&Secret::test(ns, &r.name).with_all(secret));
        }
        m.provider(&provider).alert(&alert)
    }

    pub fn provider(self, p: &Provider) -> Manifests {
        self.doc(p.to_value())
    }

    pub fn alert(self, a: &Alert) -> Manifests {
        self.doc(a.to_value())
    }

    pub fn secret(self, s: &Secret) -> Manifests {
        self.doc(s.to_value())
    }

    /// Any other document.
    pub fn doc(mut self, doc: Value) -> Manifests {
        self.docs.push(doc);
        self
    }

    /// The documents, `---` between them.
    pub fn yaml(&self) -> String {
        self.docs
            .iter()
            .map(|d| serde_json::to_string_pretty(d).expect("JSON value serialises"))
            .collect::<Vec<_>>()
            .join("\n---\n")
            + "\n"
    }

    /// Writes [`Manifests::yaml`] to `dir/file`; returns the file's path.
    pub fn write(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, self.yaml())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_are_valid_objects() {
        assert_eq!(Provider::test("ns", "p").validate(), []);
        assert_eq!(
            Provider::forge("gitlab", "https://gitlab.example.com/g/p").validate(),
            []
        );
        assert_eq!(Alert::test("ns", "a").validate(), []);
        let s = Secret::test("ns", "p-token").with("token", "t");
        assert_eq!(s.string("token").as_deref(), Some("t"));
    }

    #[test]
    fn the_event_is_what_kustomize_controller_sends() {
        let e = Event::test("flux-system", "apps")
            .progressing()
            .commit("abc");
        assert_eq!(e.object_ref(), "Kustomization/flux-system/apps");
        assert_eq!(e.reason, "Progressing");
        let md = e.metadata.as_ref().unwrap();
        assert_eq!(md[REVISION_KEY], "main@sha1:abc");
        assert_eq!(md["kustomize.toolkit.fluxcd.io/commit_status"], "update");
        // What is posted decodes back to the same event.
        let body = serde_json::to_vec(&e.to_json()).unwrap();
        assert_eq!(Event::decode(&body).unwrap(), e);
    }

    #[test]
    fn manifests_round_trip_with_hostile_values() {
        let hostile = "'*' + \"x\" # not a comment\n--- not a separator: {a: [b]}";
        let p = Provider::forge("github", "https://github.com/o/r").annotation("a/b", hostile);
        let binary = [0xff_u8, 0, 1];
        let m = Manifests::routed(p.clone(), &[("token", hostile)])
            .secret(&Secret::test("flux-system", "bin").with("ca.crt", binary));
        let text = m.yaml();
        let docs: Vec<Value> = text
            .split("\n---\n")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 4);
        assert_eq!(docs[0]["stringData"]["token"], hostile);
        assert_eq!(docs[0]["metadata"]["name"], "github-token");
        let back: Provider = serde_json::from_value(docs[1].clone()).unwrap();
        assert_eq!(back, p);
        let alert: Alert = serde_json::from_value(docs[2].clone()).unwrap();
        assert_eq!(alert.spec.provider_ref.name, "github");
        assert_eq!(docs[3]["data"]["ca.crt"], "/wAB");
    }
}
