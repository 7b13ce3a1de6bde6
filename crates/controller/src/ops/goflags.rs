//! Go flag-package semantics on top of clap (issue 11): `-flag` as well as `--flag`, Go's
//! boolean spellings, Flux's `--feature-gates` map, and the start-up checks Flux's `main.go`
//! makes on the flags it binds.

use std::collections::BTreeMap;
use std::ffi::OsString;

/// Feature gates Flux's notification-controller v1.9.3 knows, with their defaults.
pub const CACHE_SECRETS_AND_CONFIG_MAPS: &str = "CacheSecretsAndConfigMaps";
pub const DISABLE_CONFIG_WATCHERS: &str = "DisableConfigWatchers";
pub use crate::kube::workload_identity::OBJECT_LEVEL_WORKLOAD_IDENTITY;
const KNOWN_GATES: [&str; 3] = [
    CACHE_SECRETS_AND_CONFIG_MAPS,
    DISABLE_CONFIG_WATCHERS,
    OBJECT_LEVEL_WORKLOAD_IDENTITY,
];

/// Rewrites `-name` / `-name=value` to `--name…` when `name` is a long flag of `cmd` or of
/// one of its subcommands (Go's flag package treats one and two dashes alike; clap would read
/// `-name` as a cluster of short flags). Everything after `--` is left alone.
pub fn normalize_argv(
    cmd: &clap::Command,
    argv: impl IntoIterator<Item = OsString>,
) -> Vec<OsString> {
    // Long flag → whether its value may come as the next argument.
    let mut longs: std::collections::HashMap<String, bool> =
        [("help".to_owned(), false), ("version".to_owned(), false)]
            .into_iter()
            .collect();
    let mut collect = |c: &clap::Command| {
        for a in c.get_arguments() {
            if let Some(l) = a.get_long() {
                let separate = a.get_action().takes_values() && !a.is_require_equals_set();
                longs.insert(l.to_owned(), separate);
            }
        }
    };
    collect(cmd);
    for sub in cmd.get_subcommands() {
        collect(sub);
    }
    let mut out = Vec::new();
    let mut rest = false;
    let mut value_next = false;
    for (i, arg) in argv.into_iter().enumerate() {
        if i == 0 || rest || std::mem::take(&mut value_next) {
            out.push(arg);
            continue;
        }
        let Some(s) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if s == "--" {
            rest = true;
            out.push(arg);
            continue;
        }
        // A flag's value, given as the next argument, is never itself a flag (as in Go).
        let name = s.trim_start_matches('-');
        let bare = !name.contains('=');
        let known = longs.get(name.split('=').next().unwrap_or_default());
        value_next = s.starts_with('-') && bare && known.copied().unwrap_or(false);
        if known.is_some() && s.starts_with('-') && !s.starts_with("--") {
            out.push(format!("-{s}").into());
        } else {
            out.push(arg);
        }
    }
    out
}

/// A flag value, or a combination of flags, that cannot be used. The text is what the
/// operator sees (after clap's `invalid value ... for '--flag'` for a single value).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error("invalid size {0:?}: use bytes, or a number with Ki, Mi or Gi")]
    Size(String),
    #[error("invalid duration {0:?}: use a Go duration such as 30s, 5m or 1h")]
    Duration(String),
    #[error(
        "invalid boolean value {0:?}: use true or false (Go's 1, t, T, TRUE, True, 0, f, F, FALSE, False work too)"
    )]
    Bool(String),
    /// Kubernetes' `MapStringBool` wording.
    #[error("malformed pair, expect string=bool")]
    GatePair,
    #[error(
        "invalid value of {gate}: {value}, err: strconv.ParseBool: parsing {value:?}: invalid syntax"
    )]
    GateValue { gate: String, value: String },
    /// Flux's wording.
    #[error("unable to load feature gates: feature-gate '{0}' not supported")]
    UnknownGate(String),
    /// Flux's `auth.ErrInconsistentObjectLevelConfiguration`.
    #[error(
        "invalid configuration: cannot set default service accounts when the feature gate {} is not enabled",
        OBJECT_LEVEL_WORKLOAD_IDENTITY
    )]
    DefaultServiceAccountWithoutGate,
}

/// Go's `strconv.ParseBool`, which Go's (and pflag's) boolean flags use.
pub fn parse_go_bool(s: &str) -> Result<bool, FlagError> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(FlagError::Bool(s.to_owned())),
    }
}

/// One `--feature-gates` value: comma-separated `Name=bool` pairs, as Kubernetes'
/// `MapStringBool` flag parses them (with its error texts).
pub fn parse_feature_gates(s: &str) -> Result<Vec<(String, bool)>, FlagError> {
    let mut out = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(FlagError::GatePair);
        };
        let (k, v) = (k.trim(), v.trim());
        let b = match v {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
            "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
            _ => {
                return Err(FlagError::GateValue {
                    gate: k.to_owned(),
                    value: v.to_owned(),
                });
            }
        };
        out.push((k.to_owned(), b));
    }
    Ok(out)
}

/// The feature gates in effect: Flux's defaults (all off) with the command line applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeatureGates {
    gates: BTreeMap<&'static str, bool>,
}

impl FeatureGates {
    /// Repeated `--feature-gates` flags merge (later pairs win), as pflag's map flag does; a
    /// gate this controller does not know is refused with Flux's wording.
    pub fn resolve(values: &[Vec<(String, bool)>]) -> Result<Self, FlagError> {
        let mut gates: BTreeMap<&'static str, bool> =
            KNOWN_GATES.iter().map(|g| (*g, false)).collect();
        for (name, on) in values.iter().flatten() {
            let Some(known) = KNOWN_GATES.iter().find(|g| **g == name.as_str()) else {
                return Err(FlagError::UnknownGate(name.clone()));
            };
            gates.insert(known, *on);
        }
        Ok(Self { gates })
    }

    pub fn enabled(&self, gate: &str) -> bool {
        self.gates.get(gate).copied().unwrap_or(false)
    }

    /// The gates switched on, for the start-up log.
    pub fn on(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.gates.iter().filter(|(_, on)| **on).map(|(g, _)| *g)
    }
}

/// Flux's `auth.ErrInconsistentObjectLevelConfiguration`, checked at start.
pub fn check_default_service_account(
    gates: &FeatureGates,
    default_service_account: &str,
) -> Result<(), FlagError> {
    if !default_service_account.is_empty() && !gates.enabled(OBJECT_LEVEL_WORKLOAD_IDENTITY) {
        return Err(FlagError::DefaultServiceAccountWithoutGate);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_merge_and_refuse_unknown() {
        let a =
            parse_feature_gates("ObjectLevelWorkloadIdentity=true,CacheSecretsAndConfigMaps=true")
                .unwrap();
        let b = parse_feature_gates("CacheSecretsAndConfigMaps=false").unwrap();
        let g = FeatureGates::resolve(&[a, b]).unwrap();
        assert!(g.enabled(OBJECT_LEVEL_WORKLOAD_IDENTITY));
        assert!(!g.enabled(CACHE_SECRETS_AND_CONFIG_MAPS));
        let err = FeatureGates::resolve(&[parse_feature_gates("Nope=true").unwrap()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unable to load feature gates: feature-gate 'Nope' not supported"
        );
        assert_eq!(
            parse_feature_gates("Foo").unwrap_err().to_string(),
            "malformed pair, expect string=bool"
        );
        assert_eq!(
            parse_feature_gates("Foo=yes").unwrap_err().to_string(),
            "invalid value of Foo: yes, err: strconv.ParseBool: parsing \"yes\": invalid syntax"
        );
        assert!(check_default_service_account(&g, "sa").is_ok());
        let off = FeatureGates::resolve(&[]).unwrap();
        assert!(check_default_service_account(&off, "sa").unwrap_err().to_string().contains(
            "cannot set default service accounts when the feature gate ObjectLevelWorkloadIdentity is not enabled"
        ));
    }

    #[test]
    fn go_bools() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(t), Ok(true));
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(f), Ok(false));
        }
        assert!(parse_go_bool("yes").is_err());
    }
}
