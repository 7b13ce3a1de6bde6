//! The human text of a commit status: Flux's description (the event reason split at case
//! changes and lower-cased) and the `kind/name` label Bitbucket shows.

/// Character classes used to cut a reason into runs. Go's `unicode.IsLower`/`IsUpper`/`IsDigit`
/// are approximated by Rust's `char` predicates; they agree on every reason Flux emits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Lower,
    Upper,
    Digit,
    Other,
}

fn class(c: char) -> Class {
    if c.is_lowercase() {
        Class::Lower
    } else if c.is_uppercase() {
        Class::Upper
    } else if c.is_numeric() {
        Class::Digit
    } else {
        Class::Other
    }
}

/// Splits a CamelCase string into words the way Flux does (the `fatih/camelcase` algorithm):
/// maximal runs of one class, then the last capital of an upper-case run moves to a following
/// lower-case run (`PDFLoader` → `PDF`, `Loader`). Spaces and punctuation form runs of their own.
pub fn split_camel_case(s: &str) -> Vec<String> {
    let mut runs: Vec<Vec<char>> = Vec::new();
    let mut last = None;
    for c in s.chars() {
        let k = class(c);
        match runs.last_mut() {
            Some(run) if last == Some(k) => run.push(c),
            _ => runs.push(vec![c]),
        }
        last = Some(k);
    }
    for i in 0..runs.len().saturating_sub(1) {
        let upper_then_lower = matches!(runs[i].first(), Some(c) if class(*c) == Class::Upper)
            && matches!(runs[i + 1].first(), Some(c) if class(*c) == Class::Lower);
        if upper_then_lower && let Some(c) = runs[i].pop() {
            runs[i + 1].insert(0, c);
        }
    }
    runs.into_iter()
        .filter(|run| !run.is_empty())
        .map(|run| run.into_iter().collect())
        .collect()
}

/// Per-character lower-casing, like Go's `strings.ToLower` (no context-dependent final sigma).
fn lower(s: &str) -> String {
    s.chars().flat_map(char::to_lowercase).collect()
}

/// The commit status description Flux derives from an event reason:
/// `HealthCheckFailed` → `health check failed`. The event message is never used.
pub fn description(reason: &str) -> String {
    lower(&split_camel_case(reason).join(" "))
}

/// The lower-cased `kind/name` label (Bitbucket's status `name`).
pub fn object_name(kind: &str, name: &str) -> String {
    lower(&format!("{kind}/{name}"))
}

/// Cuts `s` to at most `max` characters (not bytes), never splitting a character.
pub fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flux_description_vectors() {
        let cases = [
            ("ApplySucceeded", "apply succeeded"),
            ("ReconciliationSucceeded", "reconciliation succeeded"),
            ("ReconciliationFailed", "reconciliation failed"),
            ("HealthCheckFailed", "health check failed"),
            ("BuildFailed", "build failed"),
            ("ArtifactFailed", "artifact failed"),
            ("DependencyNotReady", "dependency not ready"),
            ("PruneFailed", "prune failed"),
            ("Progressing", "progressing"),
            ("ProgressingWithRetry", "progressing with retry"),
            ("InstallSucceeded", "install succeeded"),
            ("UpgradeFailed", "upgrade failed"),
            ("DriftDetected", "drift detected"),
            ("PDFLoader", "pdf loader"),
            ("HTTPRequestFailed", "http request failed"),
            ("Test123Foo", "test 123 foo"),
            ("v1Beta2", "v 1 beta 2"),
            ("aB", "a b"),
            ("ABC", "abc"),
            ("reason", "reason"),
            ("event-happened", "event - happened"),
            ("Already-Applied ok", "already - applied   ok"),
            ("ÜberFailed", "über failed"),
            ("", ""),
        ];
        for (reason, want) in cases {
            assert_eq!(description(reason), want, "reason {reason:?}");
        }
    }

    #[test]
    fn split_keeps_case() {
        assert_eq!(split_camel_case("PDFLoader"), ["PDF", "Loader"]);
        assert_eq!(
            split_camel_case("Already-Applied ok"),
            ["Already", "-", "Applied", " ", "ok"]
        );
        assert!(split_camel_case("").is_empty());
    }

    #[test]
    fn name_and_description() {
        // TestUtil_NameAndDescription (§7.4).
        assert_eq!(
            object_name("Kustomization", "gitops-system"),
            "kustomization/gitops-system"
        );
        assert_eq!(description("ApplySucceeded"), "apply succeeded");
    }

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("héllo", 5), "héllo");
        assert_eq!(truncate_chars("héllo", 50), "héllo");
        assert_eq!(truncate_chars(&"ü".repeat(200), 140).chars().count(), 140);
    }
}
