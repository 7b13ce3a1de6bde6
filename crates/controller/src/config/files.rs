//! Standalone mode's configuration source: Provider, Alert and Secret manifests read from files
//! and directories, validated as the CRDs would, and watched for changes.
//!
//! A broken document is reported with its file, document index, object and field, and skipped;
//! everything else in the same file and the other files keeps working.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use uuid::Uuid;

use api::{Alert, FieldError, ObjectMeta, Provider, Secret};

use crate::config::catalog::Objects;
use crate::config::status_expr::check_provider;
use crate::config::yaml::yaml_error;

/// Namespace of the name-based UIDs given to objects without `metadata.uid`: fixed, so that a
/// Provider's UID, and the status names derived from it, survive restarts.
const UID_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_2c3e_9a44_5d0b_8e71_c0ff_ee00_f1a5);

/// Where a document came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    pub file: PathBuf,
    /// 0-based index of the YAML document in the file.
    pub document: usize,
}

/// One thing wrong with one document.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub origin: Origin,
    /// `Kind/namespace/name`, when the document got far enough to have one.
    pub object: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (document {})",
            self.origin.file.display(),
            self.origin.document
        )?;
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A non-fatal remark on a loaded object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Warning {
    pub origin: Origin,
    pub object: String,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (document {}): {}: {}: {}",
            self.origin.file.display(),
            self.origin.document,
            self.object,
            self.field,
            self.message
        )
    }
}

#[derive(Debug, Default)]
pub struct Load {
    pub objects: Objects,
    pub problems: Vec<Problem>,
    pub warnings: Vec<Warning>,
    pub files: usize,
}

/// The `*.yaml`/`*.yml` files under the given paths, sorted for a stable load order.
pub fn list_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = BTreeSet::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut files);
        } else {
            files.insert(p.clone());
        }
    }
    files.into_iter().collect()
}

fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        // Kubernetes ConfigMap volumes keep their data in `..data`-style hidden directories and
        // expose it through symlinks; skipping dot entries avoids loading every file twice.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.insert(path);
        }
    }
}

/// A cheap summary of the files' state, to notice changes a file-system watch missed.
pub fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    list_files(paths)
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let mtime = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map(|m| m.len()).unwrap_or(0);
            (f, mtime, len)
        })
        .collect()
}

/// Reads and validates everything under `paths`.
pub fn load(paths: &[PathBuf]) -> Load {
    let mut load = Load::default();
    let mut seen: BTreeMap<String, Origin> = BTreeMap::new();
    for file in list_files(paths) {
        load.files += 1;
        match std::fs::read(&file) {
            Ok(bytes) => load_file(
                &file,
                &String::from_utf8_lossy(&bytes),
                &mut load,
                &mut seen,
            ),
            Err(e) => load.problems.push(Problem {
                origin: Origin { file, document: 0 },
                object: None,
                field: None,
                message: format!("cannot read file: {e}"),
            }),
        }
    }
    load
}

/// Validates `text` as the contents of one file called `name`, exactly as [`load`] does for
/// each file it reads (without touching the file system; used by the fuzz target).
pub fn load_text(name: &str, text: &str) -> Load {
    let mut load = Load {
        files: 1,
        ..Load::default()
    };
    load_file(Path::new(name), text, &mut load, &mut BTreeMap::new());
    load
}

/// Every document of one file's text, in order; `seen` spans files (first definition wins).
fn load_file(file: &Path, text: &str, load: &mut Load, seen: &mut BTreeMap<String, Origin>) {
    for (document, doc) in split_documents(text).into_iter().enumerate() {
        let origin = Origin {
            file: file.to_path_buf(),
            document,
        };
        // Documents are slices of `text`: their offset gives the line they start on.
        let start = doc.as_ptr() as usize - text.as_ptr() as usize;
        let first_line = text[..start].matches('\n').count();
        load_document(&origin, first_line, doc, load, seen);
    }
}

/// Splits a YAML stream on `---` separator lines, as Kubernetes' YAML reader does, so that one
/// document's syntax error cannot hide its neighbours.
fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            docs.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    // A leading separator opens the first document; it does not end an empty one.
    if docs.len() > 1 && docs[0].trim().is_empty() && text.trim_start().starts_with("---") {
        docs.remove(0);
    }
    docs
}

fn load_document(
    origin: &Origin,
    first_line: usize,
    doc: &str,
    load: &mut Load,
    seen: &mut BTreeMap<String, Origin>,
) {
    let problem = |object: Option<String>, field: Option<String>, message: String| Problem {
        origin: origin.clone(),
        object,
        field,
        message,
    };
    let only_comments = doc
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    if only_comments {
        return;
    }
    let value: Value = match serde_saphyr::from_str(doc) {
        Ok(v) => v,
        Err(e) => {
            load.problems.push(problem(
                None,
                None,
                format!("invalid YAML: {}", yaml_error(&e, first_line)),
            ));
            return;
        }
    };
    let Value::Object(map) = &value else {
        if !value.is_null() {
            load.problems
                .push(problem(None, None, "document is not a YAML mapping".into()));
        }
        return;
    };
    let api_version = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
    let group = api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
    // Flux's group, or ours (the same kinds and schema, for running beside Flux).
    let is_notification = api::GROUPS.contains(&group);
    match (kind, api_version) {
        ("Provider" | "Alert", _) if is_notification => {
            let version = api_version.rsplit('/').next().unwrap_or_default();
            if !matches!(version, "v1beta3" | "v1beta2") {
                let name = object_name(kind, map);
                load.problems.push(problem(
                    Some(name),
                    Some("apiVersion".into()),
                    format!(
                        "unsupported version {api_version:?}: use {group}/v1beta3 (or v1beta2)"
                    ),
                ));
                return;
            }
        }
        ("Secret", "v1") => {}
        _ => {
            tracing::debug!(file = %origin.file.display(), document = origin.document, kind, api_version, "skipping a document of another kind");
            return;
        }
    }

    let mut value = value.clone();
    let meta = value.as_object_mut().and_then(|m| {
        m.entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()))
            .as_object_mut()
    });
    if let Some(meta) = meta {
        let ns_missing = meta
            .get("namespace")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        if ns_missing {
            meta.insert("namespace".into(), Value::String("default".into()));
        }
    }
    let name = object_name(kind, value.as_object().expect("checked above"));

    let field_problems = |errors: Vec<FieldError>, load: &mut Load| {
        for e in errors {
            load.problems
                .push(problem(Some(name.clone()), Some(e.field), e.message));
        }
    };

    match kind {
        "Provider" => {
            let mut provider: Provider = match typed(&value) {
                Ok(p) => p,
                Err(e) => return field_problems(vec![e], load),
            };
            let exprs = match check_provider(&provider) {
                Ok(exprs) => exprs,
                Err(errors) => return field_problems(errors, load),
            };
            if !register(&name, origin, seen, load) {
                return;
            }
            assign_uid(&mut provider.metadata, "Provider");
            load.objects.providers.push((provider, exprs));
        }
        "Alert" => {
            let mut alert: Alert = match typed(&value) {
                Ok(a) => a,
                Err(e) => return field_problems(vec![e], load),
            };
            let errors = alert.validate();
            if !errors.is_empty() {
                return field_problems(errors, load);
            }
            if !register(&name, origin, seen, load) {
                return;
            }
            for (i, src) in alert.spec.event_sources.iter().enumerate() {
                if src.match_labels.is_some() {
                    load.warnings.push(Warning {
                        origin: origin.clone(),
                        object: name.clone(),
                        field: format!("spec.eventSources[{i}].matchLabels"),
                        message: "matchLabels needs the involved object's labels, which only a cluster can provide: this event source matches nothing in standalone mode".into(),
                    });
                }
            }
            assign_uid(&mut alert.metadata, "Alert");
            load.objects.alerts.push(alert);
        }
        _ => {
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct RawSecret {
                #[serde(default)]
                metadata: ObjectMeta,
                #[serde(default, rename = "type")]
                type_: String,
                #[serde(default)]
                data: BTreeMap<String, String>,
                #[serde(default)]
                string_data: BTreeMap<String, String>,
            }
            let raw: RawSecret = match typed(&value) {
                Ok(s) => s,
                // serde quotes the offending value ("invalid type: integer `1234`"), which
                // here is likely a credential.
                Err(e) => {
                    let message = "invalid type: expected a string (the value is not shown: this is a Secret)";
                    return field_problems(vec![FieldError::new(e.field, message)], load);
                }
            };
            match Secret::from_parts(raw.metadata, raw.type_, &raw.data, &raw.string_data) {
                Ok(secret) => {
                    if register(&name, origin, seen, load) {
                        load.objects.secrets.push(secret);
                    }
                }
                Err(errors) => field_problems(errors, load),
            }
        }
    }
}

fn object_name(kind: &str, map: &serde_json::Map<String, Value>) -> String {
    let meta = map.get("metadata");
    let get = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let ns = match get("namespace") {
        "" => "default",
        ns => ns,
    };
    format!("{kind}/{ns}/{}", get("name"))
}

/// Deserialises with the path of the offending field in the error.
fn typed<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "(object)".to_string()
        } else {
            path
        };
        FieldError::new(field, e.into_inner().to_string())
    })
}

/// The first definition of an object wins; a second one is a problem, not a silent override.
fn register(
    name: &str,
    origin: &Origin,
    seen: &mut BTreeMap<String, Origin>,
    load: &mut Load,
) -> bool {
    if let Some(first) = seen.get(name) {
        load.problems.push(Problem {
            origin: origin.clone(),
            object: Some(name.to_string()),
            field: Some("metadata.name".into()),
            message: format!(
                "duplicate object: already defined in {} (document {})",
                first.file.display(),
                first.document
            ),
        });
        return false;
    }
    seen.insert(name.to_string(), origin.clone());
    true
}

fn assign_uid(meta: &mut ObjectMeta, kind: &str) {
    if meta.uid.is_empty() {
        let name = format!("{kind}/{}/{}", meta.namespace, meta.name);
        meta.uid = Uuid::new_v5(&UID_NAMESPACE, name.as_bytes()).to_string();
    }
}

/// How long to wait for a burst of file events to settle before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml::without_quoted;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn splits_like_kubernetes() {
        assert_eq!(split_documents("a: 1\n---\nb: 2\n").len(), 2);
        assert_eq!(split_documents("---\na: 1\n---\nb: 2\n---\n").len(), 3);
        assert_eq!(split_documents("a: '---'\n").len(), 1);
    }

    #[test]
    fn loads_valid_and_reports_invalid_with_location() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "all.yaml",
            r#"apiVersion: notification.toolkit.fluxcd.io/v1beta3
kind: Provider
metadata:
  name: gh
spec:
  type: github
  address: https://github.com/o/r
  secretRef:
    name: tok
---
apiVersion: v1
kind: Secret
metadata:
  name: tok
stringData:
  token: ghp_x
---
apiVersion: notification.toolkit.fluxcd.io/v1beta2
kind: Alert
metadata:
  name: bad
  namespace: apps
spec:
  providerRef:
    name: gh
  eventSources:
    - kind: Deployment
      name: x
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ignored
---
apiVersion: notification.toolkit.fluxcd.io/v1beta3
kind: Alert
metadata:
  name: good
spec:
  providerRef:
    name: gh
  eventSources:
    - kind: Kustomization
      name: '*'
      matchLabels: {app: x}
"#,
        );
        write(dir.path(), "broken.yml", "kind: [\n");
        write(dir.path(), "notes.txt", "not yaml");
        let load = load(&[dir.path().to_path_buf()]);
        assert_eq!(load.files, 2);
        assert_eq!(load.objects.providers.len(), 1);
        assert_eq!(load.objects.secrets.len(), 1);
        assert_eq!(load.objects.alerts.len(), 1);
        let p = &load.objects.providers[0].0;
        assert_eq!(p.metadata.namespace, "default");
        assert_eq!(
            p.metadata.uid,
            Uuid::new_v5(&UID_NAMESPACE, b"Provider/default/gh").to_string()
        );
        let texts: Vec<String> = load.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(texts[0].contains("all.yaml (document 2): Alert/apps/bad: spec.eventSources[0].kind: Unsupported value"), "{texts:?}");
        assert!(
            texts[1].contains("broken.yml (document 0): invalid YAML"),
            "{texts:?}"
        );
        assert_eq!(load.warnings.len(), 1);
        assert_eq!(load.warnings[0].field, "spec.eventSources[0].matchLabels");
    }

    #[test]
    fn yaml_errors_give_the_position_but_no_source_text() {
        let secret = "ghp_SourceTextMustNotLeak1234";
        let broken = [
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\nstringData:\n  token: \"{secret}\n"
            ),
            format!("apiVersion: v1\nkind: Secret\nstringData:\n  token: {secret}\n   bad: [\n"),
            format!("apiVersion: v1\nkind: Secret\nstringData:\n  token: {secret}\n\ttab: x\n"),
            format!("stringData: {{token: {secret}, token: {secret}}}\n"),
            format!("stringData:\n  token: *{secret}\n"),
            format!("stringData:\n  token: &{secret} x\n  other: &{secret} y\n  t: *{secret}x\n"),
            format!("stringData:\n  token: \"{secret}\\q\"\n"),
            format!("stringData:\n  - {secret}\n  token: x\n"),
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\nstringData:\n  token: {{a: {secret}}}\n"
            ),
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData:\n  token: 12345678901234\n"
                .to_string(),
        ];
        for (i, text) in broken.iter().enumerate() {
            let text = format!("apiVersion: v1\nkind: ConfigMap\n---\n{text}");
            let load = load_text("secrets.yaml", &text);
            assert_eq!(load.problems.len(), 1, "{i}: {:?}", load.problems);
            let shown = load.problems[0].to_string();
            assert!(
                shown.starts_with("secrets.yaml (document 1): "),
                "{i}: {shown}"
            );
            for leak in [secret, "SourceText", "12345678901234"] {
                assert!(!shown.contains(leak), "{i}: {shown}");
            }
            assert!(!shown.contains('\n'), "{i}: {shown}");
        }
        let load = load_text("s.yaml", &format!("a: 1\n---\nb: 2\nc: \"{secret}\n"));
        let shown = load.problems[0].to_string();
        assert!(
            shown.ends_with("(document 1): invalid YAML: line 4, column 4: unclosed quote"),
            "{shown}"
        );
        assert_eq!(
            without_quoted("can't find 'x' in `y`, \"z\", expected ':' or 'abc"),
            "can't find … in …, …, expected ':' or …"
        );
    }

    #[test]
    fn type_errors_name_the_field_and_duplicates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.yaml",
            "apiVersion: notification.toolkit.fluxcd.io/v1beta3\nkind: Alert\nmetadata: {name: a}\nspec:\n  providerRef: {name: p}\n  eventSources: []\n  eventMetadata: {version: [1]}\n---\napiVersion: notification.toolkit.fluxcd.io/v1beta3\nkind: Provider\nmetadata: {name: p}\nspec: {type: github, commitStatusExpr: \"event.involvedObject.kind == 'x'\"}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s}\n",
        );
        let load = load(&[dir.path().to_path_buf()]);
        let fields: Vec<_> = load
            .problems
            .iter()
            .map(|p| p.field.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            fields,
            [
                "spec.eventMetadata.version",
                "spec.commitStatusExpr",
                "metadata.name"
            ]
        );
        assert_eq!(load.objects.secrets.len(), 1);
    }
}
