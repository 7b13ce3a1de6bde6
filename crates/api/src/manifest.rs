//! `Provider`, `Alert` (`notification.toolkit.fluxcd.io/v1beta3` and `v1beta2`, same spec) and
//! core `v1` `Secret`, with the checks Flux's CRDs make (`flux-crds/`), so an object that a
//! cluster would refuse is refused here too, naming the field at fault.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use base64::Engine;
use kube::CustomResource;
use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Every `spec.type` Flux's Provider CRD accepts (v1.9.3 plus the two types on `main`).
pub const PROVIDER_TYPES: &[&str] = &[
    "slack",
    "discord",
    "msteams",
    "rocket",
    "generic",
    "generic-hmac",
    "github",
    "gitlab",
    "gitea",
    "giteapullrequestcomment",
    "bitbucketserver",
    "bitbucket",
    "azuredevops",
    "googlechat",
    "googlepubsub",
    "webex",
    "sentry",
    "azureeventhub",
    "telegram",
    "lark",
    "matrix",
    "opsgenie",
    "alertmanager",
    "grafana",
    "githubdispatch",
    "githubpullrequestcomment",
    "gitlabmergerequestcomment",
    "pagerduty",
    "datadog",
    "nats",
    "zulip",
    "otel",
    "zoom",
    "incident.io",
];

/// The provider types that post commit statuses.
pub const COMMIT_STATUS_PROVIDER_TYPES: &[&str] = &[
    "github",
    "gitlab",
    "gitea",
    "bitbucketserver",
    "bitbucket",
    "azuredevops",
];

/// Event source kinds the Alert CRD accepts.
pub const EVENT_SOURCE_KINDS: &[&str] = &[
    "Bucket",
    "GitRepository",
    "Kustomization",
    "HelmRelease",
    "HelmChart",
    "HelmRepository",
    "ImageRepository",
    "ImagePolicy",
    "ImageUpdateAutomation",
    "OCIRepository",
    "ArtifactGenerator",
    "ExternalArtifact",
];

/// The default `spec.timeout` of a Provider.
pub const DEFAULT_PROVIDER_TIMEOUT: Duration = Duration::from_secs(15);

static INTERVAL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$").expect("static regex"));
static TIMEOUT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([0-9]+(\.[0-9]+)?(ms|s|m))+$").expect("static regex"));
static PROXY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(http|https)://.*$").expect("static regex"));

/// A problem with one field of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.eventSources[1].kind`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ObjectMeta {
    fn validate(&self, errors: &mut Vec<FieldError>) {
        if self.name.is_empty() {
            errors.push(FieldError::new("metadata.name", "Required value"));
        } else if !is_dns_subdomain(&self.name) {
            errors.push(FieldError::new(
                "metadata.name",
                "must be a lowercase RFC 1123 subdomain of at most 253 characters",
            ));
        }
        if !self.namespace.is_empty() && !is_dns_label(&self.namespace) {
            errors.push(FieldError::new(
                "metadata.namespace",
                "must be a lowercase RFC 1123 label of at most 63 characters",
            ));
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LocalObjectReference {
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provider {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ProviderSpec,
}

/// The Provider spec. The derive also yields [`ProviderResource`], the Kubernetes object; its
/// CRD is shaped to match Flux's by [`crate::crd`].
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource,
)]
#[kube(
    group = "notification.toolkit.fluxcd.io",
    version = "v1beta3",
    kind = "Provider",
    root = "ProviderResource",
    namespaced,
    category = "all",
    category = "fluxcd",
    category = "fluxcd-notifications"
)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSpec {
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_secret_ref: Option<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_status_expr: Option<String>,
}

impl ProviderSpec {
    /// Whether this provider posts commit statuses.
    pub fn is_commit_status(&self) -> bool {
        COMMIT_STATUS_PROVIDER_TYPES.contains(&self.type_.as_str())
    }

    /// `spec.timeout`, or Flux's 15 s default. Assumes `validate` passed.
    pub fn timeout(&self) -> Duration {
        self.timeout
            .as_deref()
            .and_then(parse_duration)
            .unwrap_or(DEFAULT_PROVIDER_TIMEOUT)
    }

    /// The CRD's schema checks on the spec, including the CEL rule that restricts
    /// `commitStatusExpr` to commit-status types.
    pub fn validate(&self, errors: &mut Vec<FieldError>) {
        if self.type_.is_empty() {
            errors.push(FieldError::new("spec.type", "Required value"));
        } else if !PROVIDER_TYPES.contains(&self.type_.as_str()) {
            errors.push(FieldError::new(
                "spec.type",
                format!(
                    "Unsupported value: {:?}: supported values: {}",
                    self.type_,
                    quoted_list(PROVIDER_TYPES)
                ),
            ));
        }
        if let Some(i) = &self.interval
            && !INTERVAL.is_match(i)
        {
            errors.push(FieldError::new(
                "spec.interval",
                format!("Invalid value: {i:?}: should match '{}'", INTERVAL.as_str()),
            ));
        }
        if let Some(t) = &self.timeout
            && !TIMEOUT.is_match(t)
        {
            errors.push(FieldError::new(
                "spec.timeout",
                format!("Invalid value: {t:?}: should match '{}'", TIMEOUT.as_str()),
            ));
        }
        for (field, value) in [
            ("spec.channel", &self.channel),
            ("spec.username", &self.username),
            ("spec.address", &self.address),
            ("spec.proxy", &self.proxy),
        ] {
            if let Some(v) = value
                && v.len() > 2048
            {
                errors.push(FieldError::new(
                    field,
                    format!("Too long: may not be longer than 2048 (it has {})", v.len()),
                ));
            }
        }
        if let Some(p) = &self.proxy
            && !PROXY.is_match(p)
        {
            errors.push(FieldError::new(
                "spec.proxy",
                format!(
                    "Invalid value: {:?}: should match '{}'",
                    without_userinfo(p),
                    PROXY.as_str()
                ),
            ));
        }
        for (field, r) in [
            ("spec.secretRef.name", &self.secret_ref),
            ("spec.proxySecretRef.name", &self.proxy_secret_ref),
            ("spec.certSecretRef.name", &self.cert_secret_ref),
        ] {
            if let Some(r) = r
                && r.name.is_empty()
            {
                errors.push(FieldError::new(field, "Required value"));
            }
        }
        if self.commit_status_expr.is_some() && !self.is_commit_status() {
            errors.push(FieldError::new(
                "spec.commitStatusExpr",
                "spec.commitStatusExpr is only supported for the 'github', 'gitlab', 'gitea', \
                 'bitbucketserver', 'bitbucket', 'azuredevops' provider types",
            ));
        }
    }
}

impl Provider {
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        self.metadata.validate(&mut errors);
        self.spec.validate(&mut errors);
        errors
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: AlertSpec,
}

/// The Alert spec; the derive also yields [`AlertResource`].
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource,
)]
#[kube(
    group = "notification.toolkit.fluxcd.io",
    version = "v1beta3",
    kind = "Alert",
    root = "AlertResource",
    namespaced,
    category = "all",
    category = "fluxcd",
    category = "fluxcd-notifications"
)]
#[serde(rename_all = "camelCase")]
pub struct AlertSpec {
    #[serde(default)]
    pub provider_ref: LocalObjectReference,
    #[serde(default = "default_severity")]
    pub event_severity: String,
    #[serde(default)]
    pub event_sources: Vec<CrossNamespaceObjectReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inclusion_list: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclusion_list: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub event_metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

fn default_severity() -> String {
    "info".into()
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CrossNamespaceObjectReference {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
}

impl Alert {
    /// The CRD's checks, plus ours: inclusion and exclusion expressions must compile (Flux
    /// would silently treat a broken one as non-matching on every event).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        self.metadata.validate(&mut errors);
        let spec = &self.spec;
        if spec.provider_ref.name.is_empty() {
            errors.push(FieldError::new("spec.providerRef.name", "Required value"));
        }
        if !matches!(spec.event_severity.as_str(), "info" | "error") {
            errors.push(FieldError::new(
                "spec.eventSeverity",
                format!(
                    "Unsupported value: {:?}: supported values: \"info\", \"error\"",
                    spec.event_severity
                ),
            ));
        }
        for (i, src) in spec.event_sources.iter().enumerate() {
            let at = |f: &str| format!("spec.eventSources[{i}].{f}");
            if src.kind.is_empty() {
                errors.push(FieldError::new(at("kind"), "Required value"));
            } else if !EVENT_SOURCE_KINDS.contains(&src.kind.as_str()) {
                errors.push(FieldError::new(
                    at("kind"),
                    format!(
                        "Unsupported value: {:?}: supported values: {}",
                        src.kind,
                        quoted_list(EVENT_SOURCE_KINDS)
                    ),
                ));
            }
            if src.name.is_empty() {
                errors.push(FieldError::new(at("name"), "Required value"));
            } else if src.name.len() > 253 {
                errors.push(FieldError::new(
                    at("name"),
                    "Too long: may not be longer than 253",
                ));
            }
            if let Some(ns) = &src.namespace {
                if ns.is_empty() {
                    errors.push(FieldError::new(
                        at("namespace"),
                        "Invalid value: \"\": should be at least 1 chars long",
                    ));
                } else if ns.len() > 253 {
                    errors.push(FieldError::new(
                        at("namespace"),
                        "Too long: may not be longer than 253",
                    ));
                }
            }
        }
        for (list, field) in [
            (&spec.inclusion_list, "inclusionList"),
            (&spec.exclusion_list, "exclusionList"),
        ] {
            for (i, expr) in list.iter().enumerate() {
                if let Err(e) = Regex::new(expr) {
                    errors.push(FieldError::new(
                        format!("spec.{field}[{i}]"),
                        format!("invalid regular expression {expr:?}: {}", first_line(&e)),
                    ));
                }
            }
        }
        if spec.summary.chars().count() > 255 {
            errors.push(FieldError::new(
                "spec.summary",
                "Too long: may not be longer than 255",
            ));
        }
        errors
    }
}

/// A core `v1` Secret with `data` decoded and `stringData` merged over it, as the API server
/// does on write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Secret {
    pub metadata: ObjectMeta,
    pub type_: String,
    pub data: BTreeMap<String, Vec<u8>>,
}

impl Secret {
    /// Builds a Secret from its `data` (base64) and `stringData` maps.
    pub fn from_parts(
        metadata: ObjectMeta,
        type_: String,
        data: &BTreeMap<String, String>,
        string_data: &BTreeMap<String, String>,
    ) -> Result<Secret, Vec<FieldError>> {
        let mut errors = Vec::new();
        metadata.validate(&mut errors);
        let mut decoded = BTreeMap::new();
        for (k, v) in data {
            // The API server accepts standard base64 with padding; whitespace is not allowed.
            match base64::engine::general_purpose::STANDARD.decode(v.as_bytes()) {
                Ok(bytes) => {
                    decoded.insert(k.clone(), bytes);
                }
                Err(e) => errors.push(FieldError::new(
                    format!("data[{k}]"),
                    format!("invalid base64 value: {e}"),
                )),
            }
        }
        for (k, v) in string_data {
            decoded.insert(k.clone(), v.clone().into_bytes());
        }
        if errors.is_empty() {
            Ok(Secret {
                metadata,
                type_,
                data: decoded,
            })
        } else {
            Err(errors)
        }
    }

    /// A key's value as UTF-8 text (lossy: credentials are text).
    pub fn string(&self, key: &str) -> Option<String> {
        self.data
            .get(key)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// Parses a Go duration restricted to the units the CRD patterns allow (`ms`, `s`, `m`, `h`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    if !INTERVAL.is_match(s) {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let (scale, len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else {
            (3600.0, 1)
        };
        total += value * scale;
        rest = &rest[len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// A URL as it may be shown: no user info (a proxy password), no query.
fn without_userinfo(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = rest[..authority_end]
        .rfind('@')
        .map_or(rest, |at| &rest[at + 1..]);
    if scheme.is_empty() {
        rest.to_string()
    } else {
        format!("{scheme}://{rest}")
    }
}

fn quoted_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn first_line(e: &regex::Error) -> String {
    e.to_string()
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63
        && !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(spec: ProviderSpec) -> Provider {
        Provider {
            api_version: "notification.toolkit.fluxcd.io/v1beta3".into(),
            kind: "Provider".into(),
            metadata: ObjectMeta {
                name: "p".into(),
                ..Default::default()
            },
            spec,
        }
    }

    #[test]
    fn provider_crd_rules() {
        let ok = ProviderSpec {
            type_: "github".into(),
            ..Default::default()
        };
        assert!(provider(ok.clone()).validate().is_empty());
        let bad = |spec: ProviderSpec| {
            provider(spec)
                .validate()
                .into_iter()
                .map(|e| e.field)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            bad(ProviderSpec {
                type_: "nope".into(),
                ..ok.clone()
            }),
            ["spec.type"]
        );
        assert_eq!(
            bad(ProviderSpec {
                timeout: Some("1h".into()),
                ..ok.clone()
            }),
            ["spec.timeout"]
        );
        assert_eq!(
            bad(ProviderSpec {
                interval: Some("x".into()),
                ..ok.clone()
            }),
            ["spec.interval"]
        );
        assert_eq!(
            bad(ProviderSpec {
                proxy: Some("ftp://x".into()),
                ..ok.clone()
            }),
            ["spec.proxy"]
        );
        let mut errors = Vec::new();
        ProviderSpec {
            proxy: Some("socks5h://user:Pr0xyPass@proxy:1080/?t=Pr0xyPass".into()),
            ..ok.clone()
        }
        .validate(&mut errors);
        assert_eq!(
            errors[0].message,
            "Invalid value: \"socks5h://proxy:1080/\": should match '^(http|https)://.*$'"
        );
        assert_eq!(
            bad(ProviderSpec {
                address: Some("a".repeat(2049)),
                ..ok.clone()
            }),
            ["spec.address"]
        );
        assert!(
            bad(ProviderSpec {
                address: Some("a".repeat(2048)),
                ..ok.clone()
            })
            .is_empty()
        );
        assert_eq!(
            bad(ProviderSpec {
                type_: "slack".into(),
                commit_status_expr: Some("'x'".into()),
                ..Default::default()
            }),
            ["spec.commitStatusExpr"]
        );
        for t in COMMIT_STATUS_PROVIDER_TYPES {
            let spec = ProviderSpec {
                type_: (*t).into(),
                commit_status_expr: Some("'x'".into()),
                ..Default::default()
            };
            assert!(provider(spec).validate().is_empty(), "{t}");
        }
        assert!(
            bad(ProviderSpec {
                type_: "incident.io".into(),
                ..Default::default()
            })
            .is_empty()
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s"), Some(Duration::from_secs(15)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), None);
        let spec = ProviderSpec {
            timeout: Some("30s".into()),
            ..Default::default()
        };
        assert_eq!(spec.timeout(), Duration::from_secs(30));
        assert_eq!(ProviderSpec::default().timeout(), Duration::from_secs(15));
    }

    #[test]
    fn alert_rules() {
        let mut a = Alert {
            api_version: "notification.toolkit.fluxcd.io/v1beta3".into(),
            kind: "Alert".into(),
            metadata: ObjectMeta {
                name: "a".into(),
                ..Default::default()
            },
            spec: AlertSpec {
                provider_ref: LocalObjectReference { name: "p".into() },
                event_severity: "info".into(),
                event_sources: vec![CrossNamespaceObjectReference {
                    kind: "Kustomization".into(),
                    name: "*".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        };
        assert!(a.validate().is_empty());
        a.spec.event_sources[0].kind = "Deployment".into();
        a.spec.inclusion_list = vec!["[".into()];
        a.spec.event_severity = "warn".into();
        let fields: Vec<_> = a.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "spec.eventSeverity",
                "spec.eventSources[0].kind",
                "spec.inclusionList[0]"
            ]
        );
    }

    #[test]
    fn secret_data_and_string_data() {
        let data = BTreeMap::from([("token".to_string(), "Z2hwX3g=".to_string())]);
        let sd = BTreeMap::from([("address".to_string(), "https://x".to_string())]);
        let meta = ObjectMeta {
            name: "s".into(),
            ..Default::default()
        };
        let s = Secret::from_parts(meta.clone(), String::new(), &data, &sd).unwrap();
        assert_eq!(s.string("token").as_deref(), Some("ghp_x"));
        assert_eq!(s.string("address").as_deref(), Some("https://x"));
        let bad = BTreeMap::from([("token".to_string(), "!!".to_string())]);
        let err = Secret::from_parts(meta, String::new(), &bad, &BTreeMap::new()).unwrap_err();
        assert_eq!(err[0].field, "data[token]");
    }
}

/// The Provider spec served under our own API group, [`crate::OWN_GROUP`]: the same fields and
/// validation as Flux's; only the group differs, so Flux's notification-controller never sees
/// these objects.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource,
)]
#[kube(
    group = "notification.commit-status-controller.dev",
    version = "v1beta3",
    kind = "Provider",
    root = "OwnProviderResource",
    namespaced,
    category = "all",
    category = "commit-status"
)]
#[serde(transparent)]
pub struct OwnProviderSpec(pub ProviderSpec);

/// The Alert spec under our own API group.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource,
)]
#[kube(
    group = "notification.commit-status-controller.dev",
    version = "v1beta3",
    kind = "Alert",
    root = "OwnAlertResource",
    namespaced,
    category = "all",
    category = "commit-status"
)]
#[serde(transparent)]
pub struct OwnAlertSpec(pub AlertSpec);
