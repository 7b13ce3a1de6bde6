//! The event Flux controllers POST (`fluxcd/pkg/apis/event/v1beta1`), decoded exactly as Go's
//! `encoding/json` decodes it, because producers built against Flux must see the same 202/400.
//!
//! Go's decoder matches object keys to fields case-insensitively, lets a later key overwrite an
//! earlier one, merges a repeated object or map into what was already decoded, treats `null` as
//! "leave unchanged" (or "nil" for maps), and ignores unknown keys. serde's derive does none of
//! that, so the event is decoded by hand, in one streaming pass that applies each entry in
//! document order. Unknown keys and mistyped values are checked as JSON and skipped without
//! being kept, so what a body costs once decoded is what the event holds, which
//! [`Event::decode_within`] bounds.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, FixedOffset, SecondsFormat};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
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

/// Why a request body is not an event; the text is what the 400 (or 413) answer says.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid JSON: {0}")]
    Syntax(#[from] serde_json::Error),
    #[error("invalid event: field {field}: {reason}")]
    Type { field: String, reason: String },
    /// The fields kept would take more than the caller allows (many small metadata entries
    /// cost more decoded than as text).
    #[error("event too large: its fields would take more than {limit} bytes once decoded")]
    TooLarge { limit: usize },
}

/// Go's `encoding/json` nesting limit.
const MAX_DEPTH: usize = 10_000;
/// What one metadata entry costs beyond its text: two `String`s and its map slot.
const ENTRY_OVERHEAD: usize = 64;

impl Event {
    /// Decodes a request body as Go's `json.Unmarshal` into the Flux `Event` type would.
    pub fn decode(body: &[u8]) -> Result<Event, DecodeError> {
        Event::decode_within(body, usize::MAX)
    }

    /// [`Event::decode`], failing with [`DecodeError::TooLarge`] as soon as the decoded
    /// strings and metadata entries would hold more than `limit` bytes.
    pub fn decode_within(body: &[u8], limit: usize) -> Result<Event, DecodeError> {
        if too_deep(body) {
            return Err(DecodeError::Syntax(de::Error::custom(format!(
                "exceeded max depth of {MAX_DEPTH}"
            ))));
        }
        let mut state = State {
            event: Event::default(),
            first_error: None,
            held: 0,
            limit,
            over: false,
        };
        let mut de = serde_json::Deserializer::from_slice(body);
        let parsed = Root(&mut state)
            .deserialize(&mut de)
            .and_then(|()| de.end());
        if state.over {
            return Err(DecodeError::TooLarge { limit });
        }
        // As in Go, the body must be valid JSON first; then the first mismatch is reported.
        parsed?;
        match state.first_error {
            Some(e) => Err(e),
            None => Ok(state.event),
        }
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

/// Go folds keys with Unicode simple case folding; for these ASCII field names that is
/// lower-casing, plus the two non-ASCII runes that fold onto ASCII letters.
fn is_field(key: &str, lower: &str) -> bool {
    key.chars()
        .map(|c| match c {
            '\u{212A}' => 'k', // KELVIN SIGN
            '\u{017F}' => 's', // LATIN SMALL LETTER LONG S
            c => c.to_ascii_lowercase(),
        })
        .eq(lower.chars())
}

/// Whether arrays and objects nest deeper than Go allows (its scanner rejects that as a
/// syntax error; skipping a value, below, has no depth limit of its own).
fn too_deep(body: &[u8]) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The event being built, the first mismatch, and what the kept strings cost.
struct State {
    event: Event,
    first_error: Option<DecodeError>,
    held: usize,
    limit: usize,
    over: bool,
}

impl State {
    /// Records a type mismatch; as Go's decoder, the first one is reported and decoding goes
    /// on (so that a syntax error later in the body still wins).
    fn mismatch(&mut self, field: &str, want: &str, got: Kind) {
        if self.first_error.is_none() {
            let field = if field.is_empty() { "(body)" } else { field };
            self.first_error = Some(DecodeError::Type {
                field: field.to_string(),
                reason: format!("expected {want}, got {}", got.name()),
            });
        }
    }

    /// Accounts `add` more bytes kept and `freed` fewer; `false` once past the limit.
    fn hold(&mut self, add: usize, freed: usize) -> bool {
        self.held = (self.held + add).saturating_sub(freed);
        if self.held > self.limit {
            self.over = true;
        }
        !self.over
    }

    fn set_string(&mut self, slot: Slot, field: &str, value: Leaf) -> bool {
        match value {
            Leaf::Null => true,
            Leaf::Str(s) => {
                let new = s.len();
                let old = std::mem::replace(self.slot(slot), s);
                self.hold(new, old.len())
            }
            Leaf::Other(kind) => {
                self.mismatch(field, "string", kind);
                true
            }
        }
    }

    fn slot(&mut self, slot: Slot) -> &mut String {
        let e = &mut self.event;
        match slot {
            Slot::Severity => &mut e.severity,
            Slot::Message => &mut e.message,
            Slot::Reason => &mut e.reason,
            Slot::ReportingController => &mut e.reporting_controller,
            Slot::ReportingInstance => &mut e.reporting_instance,
            Slot::Kind => &mut e.involved_object.kind,
            Slot::Namespace => &mut e.involved_object.namespace,
            Slot::Name => &mut e.involved_object.name,
            Slot::Uid => &mut e.involved_object.uid,
            Slot::ApiVersion => &mut e.involved_object.api_version,
            Slot::ResourceVersion => &mut e.involved_object.resource_version,
            Slot::FieldPath => &mut e.involved_object.field_path,
        }
    }
}

/// The event's string fields.
#[derive(Clone, Copy)]
enum Slot {
    Severity,
    Message,
    Reason,
    ReportingController,
    ReportingInstance,
    Kind,
    Namespace,
    Name,
    Uid,
    ApiVersion,
    ResourceVersion,
    FieldPath,
}

/// Keys of the event object.
enum RootKey {
    InvolvedObject,
    Timestamp,
    Metadata,
    Text(Slot, &'static str),
    Unknown,
}

/// String fields: folded key, slot, and the name errors use.
type Field = (&'static str, Slot, &'static str);

const ROOT_TEXT: [Field; 5] = [
    ("severity", Slot::Severity, "severity"),
    ("message", Slot::Message, "message"),
    ("reason", Slot::Reason, "reason"),
    (
        "reportingcontroller",
        Slot::ReportingController,
        "reportingController",
    ),
    (
        "reportinginstance",
        Slot::ReportingInstance,
        "reportingInstance",
    ),
];

const OBJECT_FIELDS: [Field; 7] = [
    ("kind", Slot::Kind, "involvedObject.kind"),
    ("namespace", Slot::Namespace, "involvedObject.namespace"),
    ("name", Slot::Name, "involvedObject.name"),
    ("uid", Slot::Uid, "involvedObject.uid"),
    ("apiversion", Slot::ApiVersion, "involvedObject.apiVersion"),
    (
        "resourceversion",
        Slot::ResourceVersion,
        "involvedObject.resourceVersion",
    ),
    ("fieldpath", Slot::FieldPath, "involvedObject.fieldPath"),
];

fn find_field(fields: &[Field], key: &str) -> Option<(Slot, &'static str)> {
    fields
        .iter()
        .find(|(lower, ..)| is_field(key, lower))
        .map(|(_, slot, name)| (*slot, *name))
}

/// The JSON type of a value that was skipped, for the mismatch message.
#[derive(Clone, Copy)]
enum Kind {
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Bool => "bool",
            Kind::Number => "number",
            Kind::String => "string",
            Kind::Array => "array",
            Kind::Object => "object",
        }
    }
}

/// A value where a string is wanted: the string, `null`, or the type of anything else
/// (which is read to its end and dropped).
enum Leaf {
    Null,
    Str(String),
    Other(Kind),
}

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// The visits of a visitor for every JSON type but the ones it takes: each is checked, read
/// to its end and passed to `$other(self, Kind)`.
macro_rules! other_types {
    ($other:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($other(self, Kind::Bool))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($other(self, Kind::Number))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($other(self, Kind::Number))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($other(self, Kind::Number))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            skip_seq(seq)?;
            Ok($other(self, Kind::Array))
        }
    };
}

/// The visits of a visitor that takes only objects (and `null`, a no-op).
macro_rules! object_only {
    ($what:literal, $other:expr) => {
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str($what)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($other(self, Kind::String))
        }
        other_types!($other);
    };
}

struct LeafSeed;

impl<'de> DeserializeSeed<'de> for LeafSeed {
    type Value = Leaf;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Leaf, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LeafSeed {
    type Value = Leaf;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Leaf, E> {
        Ok(Leaf::Null)
    }
    fn visit_str<E>(self, v: &str) -> Result<Leaf, E> {
        Ok(Leaf::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Leaf, E> {
        Ok(Leaf::Str(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Leaf, A::Error> {
        skip_map(map)?;
        Ok(Leaf::Other(Kind::Object))
    }
    other_types!(|_, k| Leaf::Other(k));
}

/// Reads an object key without keeping it and says which field it names.
struct KeySeed<F>(F);

impl<'de, T, F: FnOnce(&str) -> T> DeserializeSeed<'de> for KeySeed<F> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, T, F: FnOnce(&str) -> T> Visitor<'de> for KeySeed<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, v: &str) -> Result<T, E> {
        Ok((self.0)(v))
    }
}

/// Stops decoding once the kept fields are over the limit ([`State::over`] says why).
fn over<E: de::Error>() -> E {
    E::custom("event too large")
}

/// The top-level value: an object, or `null` (a no-op for Go: an empty event).
struct Root<'s>(&'s mut State);

impl<'de> DeserializeSeed<'de> for Root<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Root<'_> {
    type Value = ();
    object_only!("an event object", |v: Self, k| v
        .0
        .mismatch("", "object", k));
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let state = self.0;
        let root_key = |k: &str| {
            if is_field(k, "involvedobject") {
                RootKey::InvolvedObject
            } else if is_field(k, "timestamp") {
                RootKey::Timestamp
            } else if is_field(k, "metadata") {
                RootKey::Metadata
            } else {
                find_field(&ROOT_TEXT, k).map_or(RootKey::Unknown, |(s, n)| RootKey::Text(s, n))
            }
        };
        while let Some(key) = map.next_key_seed(KeySeed(root_key))? {
            match key {
                RootKey::Unknown => {
                    map.next_value::<IgnoredAny>()?;
                }
                RootKey::Text(slot, name) => {
                    let v = map.next_value_seed(LeafSeed)?;
                    if !state.set_string(slot, name, v) {
                        return Err(over());
                    }
                }
                RootKey::Timestamp => match map.next_value_seed(LeafSeed)? {
                    Leaf::Null => {}
                    Leaf::Str(s) => match DateTime::parse_from_rfc3339(&s) {
                        Ok(t) => state.event.timestamp = Some(t),
                        Err(e) if state.first_error.is_none() => {
                            state.first_error = Some(DecodeError::Type {
                                field: "timestamp".into(),
                                reason: format!("{s:?} is not an RFC 3339 time: {e}"),
                            });
                        }
                        Err(_) => {}
                    },
                    Leaf::Other(kind) => state.mismatch("timestamp", "RFC 3339 string", kind),
                },
                RootKey::InvolvedObject => map.next_value_seed(Object(&mut *state))?,
                RootKey::Metadata => map.next_value_seed(Metadata(&mut *state))?,
            }
        }
        Ok(())
    }
}

/// `involvedObject`: an object merged into what earlier keys set, or `null`.
struct Object<'s>(&'s mut State);

impl<'de> DeserializeSeed<'de> for Object<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Object<'_> {
    type Value = ();
    object_only!("an object reference", |v: Self, k| v.0.mismatch(
        "involvedObject",
        "object",
        k
    ));
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let field = |k: &str| find_field(&OBJECT_FIELDS, k);
        while let Some(key) = map.next_key_seed(KeySeed(field))? {
            match key {
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
                Some((slot, name)) => {
                    let v = map.next_value_seed(LeafSeed)?;
                    if !self.0.set_string(slot, name, v) {
                        return Err(over());
                    }
                }
            }
        }
        Ok(())
    }
}

/// `metadata`: string values merged into the map; `null` makes it a nil map.
struct Metadata<'s>(&'s mut State);

impl<'de> DeserializeSeed<'de> for Metadata<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Metadata<'_> {
    type Value = ();
    object_only!("a string map", |v: Self, k| v
        .0
        .mismatch("metadata", "object", k));
    fn visit_unit<E>(self) -> Result<(), E> {
        let state = self.0;
        if let Some(md) = state.event.metadata.take() {
            let freed = md
                .iter()
                .map(|(k, v)| k.len() + v.len() + ENTRY_OVERHEAD)
                .sum();
            state.hold(0, freed);
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let state = self.0;
        state.event.metadata.get_or_insert_with(BTreeMap::new);
        while let Some(k) = map.next_key::<String>()? {
            let value = match map.next_value_seed(LeafSeed)? {
                // Go stores the zero value for a null map element.
                Leaf::Null => String::new(),
                Leaf::Str(s) => s,
                Leaf::Other(kind) => {
                    state.mismatch(&format!("metadata.{k}"), "string", kind);
                    continue;
                }
            };
            let (add, key_len) = (value.len(), k.len());
            let md = state.event.metadata.get_or_insert_with(BTreeMap::new);
            let kept = match md.insert(k, value) {
                Some(old) => state.hold(add, old.len()),
                None => state.hold(add + key_len + ENTRY_OVERHEAD, 0),
            };
            if !kept {
                return Err(over());
            }
        }
        Ok(())
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
    fn syntax_errors_win_over_an_earlier_mismatch_and_the_first_mismatch_is_named() {
        let e = Event::decode(br#"{"message":5,"x":[1,}"#).unwrap_err();
        assert!(matches!(e, DecodeError::Syntax(_)), "{e}");
        let e = Event::decode(br#"{"message":5,"reason":{"a":[]},"severity":"s"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid event: field message: expected string, got number"
        );
        let e = Event::decode(br#"{"metadata":{"k":["v"]}}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid event: field metadata.k: expected string, got array"
        );
        // Unknown keys are still checked as JSON.
        assert!(Event::decode(br#"{"unknown":"\x"}"#).is_err());
        assert!(Event::decode(br#"{"unknown":tru}"#).is_err());
        assert!(Event::decode(b"{\"unknown\":\"a\x01\"}").is_err());
        let e = Event::decode("{\"\u{212A}IND\":\"x\"}".as_bytes()).unwrap();
        assert_eq!(
            e.involved_object.kind, "",
            "kind is a field of involvedObject only"
        );
        let e = Event::decode("{\"involvedObject\":{\"\u{212A}ind\":\"x\"}}".as_bytes()).unwrap();
        assert_eq!(e.involved_object.kind, "x");
    }

    #[test]
    fn nesting_is_limited_as_in_go() {
        let nested = |n: usize| format!(r#"{{"x":{}{}}}"#, "[".repeat(n), "]".repeat(n));
        assert!(Event::decode(nested(9_998).as_bytes()).is_ok());
        assert!(Event::decode(nested(10_000).as_bytes()).is_err());
        // Brackets inside strings do not count.
        let quoted = format!(r#"{{"x":"{}"}}"#, "[".repeat(20_000));
        assert!(Event::decode(quoted.as_bytes()).is_ok());
    }

    #[test]
    fn only_kept_fields_count_against_the_limit() {
        let limit = 4096;
        // Unknown keys, repeated keys and mistyped values of any size are not kept.
        let unknown = format!(r#"{{"x":"{}","message":"m"}}"#, "a".repeat(1 << 20));
        assert_eq!(
            Event::decode_within(unknown.as_bytes(), limit)
                .unwrap()
                .message,
            "m"
        );
        let repeated = format!(
            "{{{}\"reason\":\"r\"}}",
            r#""reason":"abcdefgh","#.repeat(50_000)
        );
        assert_eq!(
            Event::decode_within(repeated.as_bytes(), limit)
                .unwrap()
                .reason,
            "r"
        );
        let keys: String = (0..50_000).map(|i| format!(r#""k{i}":1,"#)).collect();
        let many = format!(r#"{{"other":{{{keys}"z":0}}}}"#);
        assert!(Event::decode_within(many.as_bytes(), limit).is_ok());
        // Kept text does count: a long message, or many small metadata entries.
        let long = format!(r#"{{"message":"{}"}}"#, "a".repeat(limit + 1));
        assert!(matches!(
            Event::decode_within(long.as_bytes(), limit),
            Err(DecodeError::TooLarge { .. })
        ));
        let entries: Vec<String> = (0..100).map(|i| format!(r#""g/{i}":"""#)).collect();
        let md = format!(r#"{{"metadata":{{{}}}}}"#, entries.join(","));
        assert!(matches!(
            Event::decode_within(md.as_bytes(), limit),
            Err(DecodeError::TooLarge { .. })
        ));
        // …but a null metadata frees what it held.
        let md = format!(
            r#"{{"metadata":{{{}}},"metadata":null}}"#,
            entries[..50].join(",")
        );
        assert!(
            Event::decode_within(md.as_bytes(), limit)
                .unwrap()
                .metadata
                .is_none()
        );
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
