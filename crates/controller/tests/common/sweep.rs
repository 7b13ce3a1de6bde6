//! The secret sweep: every secret value in the manifests a test gave the controller is looked
//! for in everything the controller let out — each log line, the history API (outcomes and
//! pending), the delivery list page and every delivery page. [`super::Controller`] runs it when
//! it is dropped, so every test driving the binary through the harness is covered.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

/// Shorter values ("t", "pw") would match ordinary text; the suite's real secrets are longer.
const MIN_LEN: usize = 6;

/// Secret keys whose values are not secret (they are shown on purpose).
const PUBLIC_KEYS: [&str; 10] = [
    "username",
    "ca.crt",
    "caFile",
    "tls.crt",
    "certFile",
    "githubAppID",
    "githubAppInstallationID",
    "githubAppInstallationOwner",
    "githubAppBaseURL",
    "address",
];

/// The secret values of every Secret in the manifests under `paths`, as the controller would
/// load them.
pub fn secret_values(paths: &[PathBuf]) -> BTreeSet<String> {
    let paths: Vec<PathBuf> = paths
        .iter()
        .filter(|p| !p.as_os_str().is_empty())
        .cloned()
        .collect();
    let mut out = BTreeSet::new();
    for secret in controller::config::files::load(&paths).objects.secrets {
        for (key, value) in &secret.data {
            let value = String::from_utf8_lossy(value);
            out.extend(values_of(key, &value));
        }
    }
    out
}

/// What in one Secret key must never be shown: the value itself, the password of a
/// `user:password` token, a URL's password and query, each header value, each base64 line of a
/// PEM key.
pub fn values_of(key: &str, value: &str) -> Vec<String> {
    let value = value.trim();
    let mut out = Vec::new();
    if matches!(key, "address" | "proxy") {
        if let Ok(url) = url::Url::parse(value) {
            out.extend(url.password().map(str::to_owned));
            out.extend(url.query_pairs().map(|(_, v)| v.into_owned()));
        }
    } else if key == "headers" {
        out.extend(
            value
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().trim_matches('"').to_owned()),
        );
    } else if value.contains("-----BEGIN") {
        out.extend(
            value
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::to_owned),
        );
    } else if !PUBLIC_KEYS.contains(&key) {
        out.push(value.to_owned());
        if let Some((_, password)) = value.split_once(':') {
            out.push(password.to_owned());
        }
    }
    out.retain(|v| v.len() >= MIN_LEN);
    out
}

/// Fails if any secret occurs in `text`, naming where it was found.
pub fn assert_secret_free(place: &str, text: &str, secrets: &BTreeSet<String>) {
    for secret in secrets {
        if let Some(line) = text.lines().find(|l| l.contains(secret.as_str())) {
            panic!("secret {secret:?} found in {place}: {line}");
        }
    }
}

/// A blocking `GET` (HTTP/1.0, so the server closes the connection), for use in `Drop`:
/// the body, or `None` if nothing answered.
pub fn http_get(base: &str, path: &str) -> Option<String> {
    let authority = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    let mut stream = TcpStream::connect(authority).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

/// Everything the controller serves about its deliveries, as `(place, text)` pairs: the history
/// API (outcomes and pending), the list page and each delivery's page.
pub fn served_pages(base: &str) -> Vec<(String, String)> {
    let mut pages = Vec::new();
    let mut ids = BTreeSet::new();
    for path in [
        "/api/v1/deliveries?limit=1000",
        "/api/v1/deliveries?pending=true&limit=1000",
    ] {
        let Some(body) = http_get(base, path) else {
            continue;
        };
        if let Ok(serde_json::Value::Array(items)) = serde_json::from_str(&body) {
            for item in items {
                for key in ["delivery", "seq", "id"] {
                    ids.extend(item[key].as_u64());
                }
            }
        }
        pages.push((path.to_owned(), body));
    }
    let mut paths = vec!["/deliveries".to_owned()];
    paths.extend(ids.iter().map(|id| format!("/deliveries/{id}")));
    for path in paths {
        if let Some(body) = http_get(base, &path) {
            pages.push((path, body));
        }
    }
    pages
}
