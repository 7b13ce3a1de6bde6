//! From Flux revision strings (`main@sha1:<hash>`, legacy `main/<hash>`, bare hashes) to the
//! commit SHA a forge can attach a status to.
//!
//! Flux first rewrites legacy forms into `<pointer>@<algo>:<hash>` and then takes the text after
//! the last `:`. The pointer and the algorithm label never influence the result, so the two
//! steps collapse into "after the last `:`, else after the last `/`, else the whole string".

use std::collections::BTreeMap;

use crate::PlanError;

/// Length of a SHA-1 Git object id in hex. SHA-256 ids (64) are rejected, as in Flux, because
/// every supported forge addresses commits by their SHA-1 name.
const SHA1_HEX_LEN: usize = 40;

/// Metadata keys that may carry the revision, in order of precedence (RFC-0008 `commit` set by an
/// object annotation, then the Git origin of an OCI artifact, then the source revision).
pub const REVISION_KEYS: [&str; 3] = ["commit", "originRevision", "revision"];

/// The commit SHA of an event: the first *present* key of [`REVISION_KEYS`], parsed with
/// [`parse`]. An unparsable value is an error even if a later key would parse (no fallback).
pub fn from_metadata(metadata: &BTreeMap<String, String>) -> Result<String, PlanError> {
    let value = REVISION_KEYS
        .iter()
        .find_map(|key| metadata.get(*key))
        .ok_or(PlanError::MissingRevision)?;
    parse(value).map(str::to_owned)
}

/// The commit hash inside a Flux revision string.
///
/// Accepts exactly 40 hexadecimal characters (case preserved). Flux accepts any 40 bytes; we
/// also require hex, so that a branch or tag name that happens to be 40 long is not posted to
/// the forge as a commit.
pub fn parse(revision: &str) -> Result<&str, PlanError> {
    let hash = match revision.rfind(':') {
        Some(i) => &revision[i + 1..],
        None => revision.rsplit('/').next().unwrap_or(revision),
    };
    if hash.len() == SHA1_HEX_LEN && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hash)
    } else {
        Err(PlanError::InvalidRevision(revision.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "a1afe267b54f38b46b487f6e938a6fd508278c07";
    const B: &str = "5394cb7f48332b2de7c17dd8b8384bbc84b7e738";

    #[test]
    fn accepted_forms() {
        let upper = B.to_uppercase();
        let cases: Vec<(String, &str)> = vec![
            (format!("sha1:{A}"), A),
            (format!("master@sha1:{A}"), A),
            (format!("environment/dev@sha1:{A}"), A),
            (format!("refs/pull/420/head@sha1:{B}"), B),
            (format!("master/{A}"), A),
            (format!("environment/dev/{A}"), A),
            (format!("HEAD/{B}"), B),
            (B.to_owned(), B),
            (format!("v1.2.3@sha1:{B}"), B),
            (format!("v1.2.3/{B}"), B),
            (format!("a:b:{B}"), B),
            (format!("/{B}"), B),
        ];
        for (input, want) in cases {
            assert_eq!(parse(&input), Ok(want), "input {input:?}");
        }
        let input = format!("main@sha1:{upper}");
        assert_eq!(
            parse(&input),
            Ok(upper.as_str()),
            "upper case passes unchanged"
        );
    }

    #[test]
    fn rejected_forms() {
        let hex64 = format!("{B}{}", &A[..24]);
        let cases = [
            "master".to_owned(),
            "badhash".to_owned(),
            "6.5.0".to_owned(),
            "6.5.0+5394cb7f4833".to_owned(),
            String::new(),
            format!("main@sha256:{hex64}"),
            format!("sha256:{hex64}"),
            format!("latest@sha256:{hex64}"),
            "sha1:5394cb7".to_owned(),
            "main/5394cb7".to_owned(),
            format!("main@{B}"),
            format!("@{B}"),
            format!(" {B}"),
            format!("main@sha1:{B}:"),
            // Deliberately stricter than Flux: 40 characters that are not hex.
            "z".repeat(40),
            format!("main@sha1:{}", "g".repeat(40)),
        ];
        for input in cases {
            let err = parse(&input).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("failed to extract commit hash from '{input}' revision")
            );
        }
    }

    #[test]
    fn util_parse_revision_vectors() {
        // TestUtil_ParseRevision (§7.4).
        for input in [
            format!("sha1:{A}"),
            format!("master@sha1:{A}"),
            format!("environment/dev@sha1:{A}"),
            format!("master/{A}"),
            format!("environment/dev/{A}"),
        ] {
            assert_eq!(parse(&input), Ok(A));
        }
        assert_eq!(
            parse("master").unwrap_err().to_string(),
            "failed to extract commit hash from 'master' revision"
        );
    }

    fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn lookup_order_and_no_fallback() {
        let oci = format!("latest@sha256:{B}{}", &A[..24]);
        let git = format!("main@sha1:{A}");
        assert_eq!(
            from_metadata(&meta(&[("revision", &oci), ("originRevision", &git)])),
            Ok(A.to_owned())
        );
        assert_eq!(
            from_metadata(&meta(&[("revision", &git), ("commit", B)])),
            Ok(B.to_owned())
        );
        // Present but empty counts as present, and there is no fallback to `revision`.
        assert_eq!(
            from_metadata(&meta(&[("commit", ""), ("revision", &git)])),
            Err(PlanError::InvalidRevision(String::new()))
        );
        assert_eq!(
            from_metadata(&meta(&[("dummybadrevision", "bad")])),
            Err(PlanError::MissingRevision)
        );
        assert_eq!(
            PlanError::MissingRevision.to_string(),
            "missing revision metadata"
        );
    }
}
