//! The event Flux controllers POST (`fluxcd/pkg/apis/event/v1beta1`), decoded exactly as Go's
//! `encoding/json` decodes it, because producers built against Flux must see the same 202/400.
//!
//! Go's decoder matches object keys to fields case-insensitively, lets a later key overwrite an
//! earlier one, merges a repeated object or map into what was already decoded, treats `null` as
//! "leave unchanged" (or "nil" for maps), and ignores unknown keys. serde's derive does none of
//! that, so the event is decoded by hand from an order-preserving view of the JSON.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, FixedOffset, SecondsFormat};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// `involvedObject`: a Kubernetes `ObjectReference`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectReference {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub api_version: String,
    pub resource_version: String,
    pub field_path: String,
}

/// One event as received on the event API.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Event {
    pub involved_object: ObjectReference,
    pub severity: String,
    /// `None` when absent or `null` (Go's zero time).
    pub timestamp: Option<DateTime<FixedOffset>>,
    pub message: String,
    pub reason: String,
    /// `None` when absent or `null` (a nil Go map); cleanup always makes it `Some`.
    pub metadata: Option<BTreeMap<String, String>>,
    pub reporting_controller: String,
    pub reporting_instance: String,
}

/// Why a request body is not an event; the text is what the 400 answer says.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid JSON: {0}")]
    Syntax(#[from] serde_json::Error),
    #[error("invalid event: field {field}: {reason}")]
    Type { field: String, reason: String },
}

impl Event {
    /// Decodes a request body as Go's `json.Unmarshal` into the Flux `Event` type would.
    pub fn decode(body: &[u8]) -> Result<Event, DecodeError> {
        let root: Ordered = serde_json::from_slice(body)?;
        let mut event = Event::default();
        match root {
            // `null` into a struct is a no-op for Go: an empty event.
            Ordered::Null => {}
            Ordered::Object(entries) => event.apply(entries)?,
            other => return Err(type_error("", "object", &other)),
        }
        Ok(event)
    }

    fn apply(&mut self, entries: Vec<(String, Ordered)>) -> Result<(), DecodeError> {
        for (key, value) in entries {
            match fold(&key).as_str() {
                "involvedobject" => match value {
                    Ordered::Null => {}
                    Ordered::Object(inner) => self.involved_object.apply(inner)?,
                    other => return Err(type_error("involvedObject", "object", &other)),
                },
                "severity" => set_string(&mut self.severity, "severity", value)?,
                "timestamp" => match value {
                    Ordered::Null => {}
                    Ordered::Leaf(Value::String(s)) => {
                        self.timestamp = Some(DateTime::parse_from_rfc3339(&s).map_err(|e| {
                            DecodeError::Type {
                                field: "timestamp".into(),
                                reason: format!("{s:?} is not an RFC 3339 time: {e}"),
                            }
                        })?);
                    }
                    other => return Err(type_error("timestamp", "RFC 3339 string", &other)),
                },
                "message" => set_string(&mut self.message, "message", value)?,
                "reason" => set_string(&mut self.reason, "reason", value)?,
                "metadata" => match value {
                    Ordered::Null => self.metadata = None,
                    Ordered::Object(inner) => {
                        let map = self.metadata.get_or_insert_with(BTreeMap::new);
                        for (k, v) in inner {
                            match v {
                                // Go stores the zero value for a null map element.
                                Ordered::Null => {
                                    map.insert(k, String::new());
                                }
                                Ordered::Leaf(Value::String(s)) => {
                                    map.insert(k, s);
                                }
                                other => {
                                    return Err(type_error(
                                        &format!("metadata.{k}"),
                                        "string",
                                        &other,
                                    ));
                                }
                            }
                        }
                    }
                    other => return Err(type_error("metadata", "object", &other)),
                },
                "reportingcontroller" => {
                    set_string(&mut self.reporting_controller, "reportingController", value)?
                }
                "reportinginstance" => {
                    set_string(&mut self.reporting_instance, "reportingInstance", value)?
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The API group of the involved object: the part of `apiVersion` before the single `/`
    /// (`""` for the core group, or when the value has several slashes, as Go's parser does).
    pub fn group(&self) -> &str {
        let api_version = self.involved_object.api_version.as_str();
        match api_version.split_once('/') {
            Some((group, version)) if !version.contains('/') => group,
            _ => "",
        }
    }

    /// The event in Go's JSON form (field names and `omitempty` as Flux marshals it), which is
    /// what `commitStatusExpr` sees as `event`.
    pub fn to_json(&self) -> Value {
        let o = &self.involved_object;
        let mut obj = serde_json::Map::new();
        for (k, v) in [
            ("kind", &o.kind),
            ("namespace", &o.namespace),
            ("name", &o.name),
            ("uid", &o.uid),
            ("apiVersion", &o.api_version),
            ("resourceVersion", &o.resource_version),
            ("fieldPath", &o.field_path),
        ] {
            if !v.is_empty() {
                obj.insert(k.into(), Value::String(v.clone()));
            }
        }
        let mut ev = serde_json::Map::new();
        ev.insert("involvedObject".into(), Value::Object(obj));
        ev.insert("severity".into(), Value::String(self.severity.clone()));
        let ts = self
            .timestamp
            .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
            .unwrap_or_else(|| "0001-01-01T00:00:00Z".into());
        ev.insert("timestamp".into(), Value::String(ts));
        ev.insert("message".into(), Value::String(self.message.clone()));
        ev.insert("reason".into(), Value::String(self.reason.clone()));
        if let Some(md) = self.metadata.as_ref().filter(|m| !m.is_empty()) {
            let md = md
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            ev.insert("metadata".into(), Value::Object(md));
        }
        ev.insert(
            "reportingController".into(),
            Value::String(self.reporting_controller.clone()),
        );
        if !self.reporting_instance.is_empty() {
            ev.insert(
                "reportingInstance".into(),
                Value::String(self.reporting_instance.clone()),
            );
        }
        Value::Object(ev)
    }

    /// `Kind/namespace/name` of the involved object, as Flux names it in messages.
    pub fn object_ref(&self) -> String {
        let o = &self.involved_object;
        format!("{}/{}/{}", o.kind, o.namespace, o.name)
    }
}

impl ObjectReference {
    fn apply(&mut self, entries: Vec<(String, Ordered)>) -> Result<(), DecodeError> {
        for (key, value) in entries {
            let (slot, name) = match fold(&key).as_str() {
                "kind" => (&mut self.kind, "kind"),
                "namespace" => (&mut self.namespace, "namespace"),
                "name" => (&mut self.name, "name"),
                "uid" => (&mut self.uid, "uid"),
                "apiversion" => (&mut self.api_version, "apiVersion"),
                "resourceversion" => (&mut self.resource_version, "resourceVersion"),
                "fieldpath" => (&mut self.field_path, "fieldPath"),
                _ => continue,
            };
            set_string(slot, &format!("involvedObject.{name}"), value)?;
        }
        Ok(())
    }
}

/// Go folds keys with Unicode simple case folding; for these ASCII field names that is
/// lower-casing, plus the two non-ASCII runes that fold onto ASCII letters.
fn fold(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '\u{212A}' => 'k', // KELVIN SIGN
            '\u{017F}' => 's', // LATIN SMALL LETTER LONG S
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

fn set_string(slot: &mut String, field: &str, value: Ordered) -> Result<(), DecodeError> {
    match value {
        Ordered::Null => Ok(()),
        Ordered::Leaf(Value::String(s)) => {
            *slot = s;
            Ok(())
        }
        other => Err(type_error(field, "string", &other)),
    }
}

fn type_error(field: &str, want: &str, got: &Ordered) -> DecodeError {
    let got = match got {
        Ordered::Null => "null",
        Ordered::Object(_) => "object",
        Ordered::Leaf(Value::Bool(_)) => "bool",
        Ordered::Leaf(Value::Number(_)) => "number",
        Ordered::Leaf(Value::String(_)) => "string",
        Ordered::Leaf(Value::Array(_)) => "array",
        Ordered::Leaf(_) => "value",
    };
    let field = if field.is_empty() { "(body)" } else { field };
    DecodeError::Type {
        field: field.to_string(),
        reason: format!("expected {want}, got {got}"),
    }
}

/// A JSON value whose objects keep every entry in document order, duplicates included.
enum Ordered {
    Null,
    Object(Vec<(String, Ordered)>),
    Leaf(Value),
}

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Ordered, E> {
                Ok(Ordered::Null)
            }
            fn visit_none<E>(self) -> Result<Ordered, E> {
                Ok(Ordered::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Ordered, E> {
                Ok(Ordered::Leaf(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Ordered, E> {
                Ok(Ordered::Leaf(Value::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Ordered, E> {
                Ok(Ordered::Leaf(Value::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Ordered, E> {
                Ok(Ordered::Leaf(Value::from(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Ordered, E> {
                Ok(Ordered::Leaf(Value::String(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Ordered, E> {
                Ok(Ordered::Leaf(Value::String(v)))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Ordered, A::Error> {
                // Arrays are never valid for event fields; keep them only to report the type.
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(Ordered::Leaf(Value::Array(Vec::new())))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Ordered>()? {
                    entries.push((k, v));
                }
                Ok(Ordered::Object(entries))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_kustomize_controller_event() {
        let body = br#"{"involvedObject":{"kind":"Kustomization","namespace":"flux-system","name":"flux-system","uid":"u","apiVersion":"kustomize.toolkit.fluxcd.io/v1"},"severity":"info","timestamp":"2022-10-28T07:26:19Z","message":"m","reason":"ReconciliationSucceeded","metadata":{"kustomize.toolkit.fluxcd.io/revision":"main@sha1:abc"},"reportingController":"kustomize-controller","reportingInstance":"pod"}"#;
        let e = Event::decode(body).unwrap();
        assert_eq!(e.involved_object.kind, "Kustomization");
        assert_eq!(e.group(), "kustomize.toolkit.fluxcd.io");
        assert_eq!(e.reason, "ReconciliationSucceeded");
        assert_eq!(
            e.metadata.unwrap()["kustomize.toolkit.fluxcd.io/revision"],
            "main@sha1:abc"
        );
        assert!(e.timestamp.is_some());
    }

    #[test]
    fn field_names_match_case_insensitively_and_last_wins() {
        let e = Event::decode(br#"{"MESSAGE":"a","message":"b","Involvedobject":{"NAME":"x"},"involvedObject":{"kind":"K"}}"#).unwrap();
        assert_eq!(e.message, "b");
        // A repeated object merges into the first, as Go decodes into the existing struct.
        assert_eq!(e.involved_object.name, "x");
        assert_eq!(e.involved_object.kind, "K");
    }

    #[test]
    fn go_edge_cases() {
        assert_eq!(Event::decode(b"{}").unwrap(), Event::default());
        assert_eq!(Event::decode(b"null").unwrap(), Event::default());
        assert!(Event::decode(b"").is_err());
        assert!(Event::decode(b"[]").is_err());
        assert!(Event::decode(br#"{"timestamp":""}"#).is_err());
        assert!(Event::decode(br#"{"timestamp":123}"#).is_err());
        assert!(
            Event::decode(br#"{"timestamp":null}"#)
                .unwrap()
                .timestamp
                .is_none()
        );
        assert!(Event::decode(br#"{"involvedObject":{"name":5}}"#).is_err());
        assert!(Event::decode(br#"{"metadata":{"a":1}}"#).is_err());
        assert!(Event::decode(br#"{} x"#).is_err());
        assert!(Event::decode(br#"{"unknown":[1,{"a":2}],"severity":null}"#).is_ok());
        let e = Event::decode(br#"{"metadata":{"a":"1"},"Metadata":{"b":"2"}}"#).unwrap();
        assert_eq!(e.metadata.unwrap().len(), 2);
        assert!(
            Event::decode(br#"{"metadata":{"a":"1"},"metadata":null}"#)
                .unwrap()
                .metadata
                .is_none()
        );
        let e = Event::decode(br#"{"timestamp":"2022-10-28T07:26:19.123+02:00"}"#).unwrap();
        assert!(e.timestamp.is_some());
    }

    #[test]
    fn group_parsing() {
        let mut e = Event::default();
        for (api, group) in [("v1", ""), ("a.b/v1", "a.b"), ("a/b/c", ""), ("", "")] {
            e.involved_object.api_version = api.into();
            assert_eq!(e.group(), group, "{api}");
        }
    }

    #[test]
    fn json_form_uses_go_names_and_omitempty() {
        let e =
            Event::decode(br#"{"involvedObject":{"kind":"K","name":"n"},"reason":"R"}"#).unwrap();
        let j = e.to_json();
        assert_eq!(
            j["involvedObject"],
            serde_json::json!({"kind":"K","name":"n"})
        );
        assert_eq!(j["timestamp"], "0001-01-01T00:00:00Z");
        assert!(j.get("metadata").is_none());
    }
}
