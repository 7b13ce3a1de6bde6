//! The `Provider` and `Alert` CustomResourceDefinitions, generated from the Rust types and
//! shaped to accept exactly what Flux's CRDs accept (enums, patterns, lengths, defaults,
//! required fields, the `commitStatusExpr` rule), served as `v1beta3` (stored) and `v1beta2`
//! (deprecated), so either our CRDs or Flux's can be installed.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::{Value, json};

use crate::manifest::{
    Alert, AlertResource, EVENT_SOURCE_KINDS, ObjectMeta, OwnAlertResource, OwnProviderResource,
    PROVIDER_TYPES, Provider, ProviderResource,
};

const COMMIT_STATUS_RULE: &str = "self.type == 'github' || self.type == 'gitlab' || self.type == 'gitea' || self.type == 'bitbucketserver' || self.type == 'bitbucket' || self.type == 'azuredevops' || !has(self.commitStatusExpr)";
const COMMIT_STATUS_MESSAGE: &str = "spec.commitStatusExpr is only supported for the 'github', 'gitlab', 'gitea', 'bitbucketserver', 'bitbucket', 'azuredevops' provider types";

/// The Provider CRD.
pub fn provider_crd() -> CustomResourceDefinition {
    shape(ProviderResource::crd(), "Provider", refine_provider)
}

/// The Provider CRD of our own group ([`crate::OWN_GROUP`]): the same schema and validation.
pub fn own_provider_crd() -> CustomResourceDefinition {
    shape(OwnProviderResource::crd(), "Provider", refine_provider)
}

/// The Alert CRD.
pub fn alert_crd() -> CustomResourceDefinition {
    shape(AlertResource::crd(), "Alert", refine_alert)
}

/// The Alert CRD of our own group.
pub fn own_alert_crd() -> CustomResourceDefinition {
    shape(OwnAlertResource::crd(), "Alert", refine_alert)
}

fn refine_provider(spec: &mut Value) {
    {
        let p = &mut spec["properties"];
        p["type"] = json!({"type": "string", "enum": PROVIDER_TYPES});
        for f in ["channel", "username", "address"] {
            p[f] = json!({"type": "string", "maxLength": 2048});
        }
        p["interval"] = json!({"type": "string", "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$"});
        p["timeout"] = json!({"type": "string", "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m))+$"});
        p["proxy"] = json!({"type": "string", "maxLength": 2048, "pattern": "^(http|https)://.*$"});
        for f in ["secretRef", "proxySecretRef", "certSecretRef"] {
            p[f] = local_ref();
        }
        for f in ["serviceAccountName", "commitStatusExpr"] {
            p[f] = json!({"type": "string"});
        }
        p["suspend"] = json!({"type": "boolean"});
        spec["required"] = json!(["type"]);
        spec["x-kubernetes-validations"] =
            json!([{"message": COMMIT_STATUS_MESSAGE, "rule": COMMIT_STATUS_RULE}]);
    }
}

fn refine_alert(spec: &mut Value) {
    {
        let p = &mut spec["properties"];
        p["providerRef"] = local_ref();
        p["eventSeverity"] =
            json!({"type": "string", "enum": ["info", "error"], "default": "info"});
        p["eventSources"] = json!({
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string", "enum": EVENT_SOURCE_KINDS},
                    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "name": {"type": "string", "minLength": 1, "maxLength": 253},
                    "namespace": {"type": "string", "minLength": 1, "maxLength": 253},
                },
                "required": ["kind", "name"],
            },
        });
        for f in ["inclusionList", "exclusionList"] {
            p[f] = json!({"type": "array", "items": {"type": "string"}});
        }
        p["eventMetadata"] = json!({"type": "object", "additionalProperties": {"type": "string"}});
        p["summary"] = json!({"type": "string", "maxLength": 255});
        p["suspend"] = json!({"type": "boolean"});
        spec["required"] = json!(["eventSources", "providerRef"]);
    }
}

fn local_ref() -> Value {
    json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]})
}

/// Tightens the derived spec schema with `refine`, and adds the deprecated `v1beta2` version
/// beside the stored `v1beta3`, as Flux 1.8 served them.
fn shape(
    crd: CustomResourceDefinition,
    kind: &str,
    refine: impl Fn(&mut Value),
) -> CustomResourceDefinition {
    let mut v = serde_json::to_value(crd).expect("CRD serialises");
    v["metadata"]["annotations"] = json!({"kustomize.toolkit.fluxcd.io/substitute": "disabled"});
    v["spec"]["names"]["listKind"] = json!(format!("{kind}List"));
    let version = &mut v["spec"]["versions"][0];
    let schema = &mut version["schema"]["openAPIV3Schema"];
    strip(schema);
    let spec = &mut schema["properties"]["spec"];
    refine(spec);
    // The derive marks `spec` required; Flux's CRDs do too for Alert and Provider.
    schema["required"] = json!(["spec"]);
    // One title whatever the Rust type's name, so both groups' schemas are the same.
    schema["title"] = json!(format!("{kind}Resource"));
    version["additionalPrinterColumns"] =
        json!([{"jsonPath": ".metadata.creationTimestamp", "name": "Age", "type": "date"}]);
    version["subresources"] = json!({});
    let mut beta2 = version.clone();
    beta2["name"] = json!("v1beta2");
    beta2["storage"] = json!(false);
    beta2["deprecated"] = json!(true);
    beta2["deprecationWarning"] =
        json!(format!("v1beta2 {kind} is deprecated, upgrade to v1beta3"));
    // v1beta2 has no rule tied to fields it lacks; keep its schema permissive like Flux's.
    if let Some(spec) = beta2["schema"]["openAPIV3Schema"]["properties"]["spec"].as_object_mut() {
        spec.remove("x-kubernetes-validations");
    }
    v["spec"]["versions"]
        .as_array_mut()
        .expect("versions")
        .push(beta2);
    serde_json::from_value(v).expect("shaped CRD deserialises")
}

/// Removes what schemars adds but Flux's CRDs do not have: descriptions of Rust docs,
/// `default`s from serde attributes, and `nullable` on optional fields.
fn strip(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("nullable");
            map.remove("default");
            map.remove("description");
            for (_, child) in map.iter_mut() {
                strip(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip),
        _ => {}
    }
}

fn meta(m: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name.unwrap_or_default(),
        namespace: m.namespace.unwrap_or_default(),
        uid: m.uid.unwrap_or_default(),
        labels: m.labels.unwrap_or_default(),
        annotations: m.annotations.unwrap_or_default(),
    }
}

impl From<ProviderResource> for Provider {
    fn from(r: ProviderResource) -> Provider {
        Provider {
            api_version: "notification.toolkit.fluxcd.io/v1beta3".into(),
            kind: "Provider".into(),
            metadata: meta(r.metadata),
            spec: r.spec,
        }
    }
}

impl From<OwnProviderResource> for Provider {
    fn from(r: OwnProviderResource) -> Provider {
        Provider {
            api_version: format!("{}/v1beta3", crate::OWN_GROUP),
            kind: "Provider".into(),
            metadata: meta(r.metadata),
            spec: r.spec.0,
        }
    }
}

impl From<OwnAlertResource> for Alert {
    fn from(r: OwnAlertResource) -> Alert {
        Alert {
            api_version: format!("{}/v1beta3", crate::OWN_GROUP),
            kind: "Alert".into(),
            metadata: meta(r.metadata),
            spec: r.spec.0,
        }
    }
}

impl From<AlertResource> for Alert {
    fn from(r: AlertResource) -> Alert {
        Alert {
            api_version: "notification.toolkit.fluxcd.io/v1beta3".into(),
            kind: "Alert".into(),
            metadata: meta(r.metadata),
            spec: r.spec,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_group_has_the_same_schema_and_validation() {
        for (flux, ours) in [
            (provider_crd(), own_provider_crd()),
            (alert_crd(), own_alert_crd()),
        ] {
            assert_eq!(ours.spec.group, crate::OWN_GROUP);
            assert_eq!(
                ours.metadata.name.as_deref(),
                Some(format!("{}.{}", flux.spec.names.plural, crate::OWN_GROUP).as_str())
            );
            assert_eq!(ours.spec.names.kind, flux.spec.names.kind);
            assert_eq!(ours.spec.scope, flux.spec.scope);
            let (f, o) = (
                serde_json::to_value(&flux.spec.versions).unwrap(),
                serde_json::to_value(&ours.spec.versions).unwrap(),
            );
            assert_eq!(o, f, "versions, schemas and CEL rules are identical");
        }
    }

    #[test]
    fn versions_and_printer_columns() {
        for crd in [provider_crd(), alert_crd()] {
            let names: Vec<_> = crd
                .spec
                .versions
                .iter()
                .map(|v| (v.name.clone(), v.storage, v.deprecated))
                .collect();
            assert_eq!(
                names,
                [
                    ("v1beta3".into(), true, None),
                    ("v1beta2".into(), false, Some(true))
                ]
            );
            assert_eq!(crd.spec.group, "notification.toolkit.fluxcd.io");
            assert_eq!(
                crd.spec.names.categories.as_deref(),
                Some(
                    &[
                        "all".to_string(),
                        "fluxcd".into(),
                        "fluxcd-notifications".into()
                    ][..]
                )
            );
        }
    }
}
