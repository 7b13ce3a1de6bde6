//! Bitbucket Server / Data Center: the `/scm/` clone URL with its context path, Bearer or
//! Basic credentials, build statuses keyed by the SHA-1 of the status ID, the "same key,
//! state, description and name" duplicate rule, and Flux's own error wording.

use http::Method;
use percent_encoding::percent_decode_str;
use serde::Deserialize;

use super::encode::{JsonObject, path_segment, query_value};
use super::{
    Phase, Protocol, State, StatusEvent, Wanted, basic_auth, checked_target_url, header_safe,
    header_secrets, sha1_hex,
};
use crate::describe::{object_name, truncate_chars};
use crate::error::Failure;
use crate::transport::USER_AGENT;
use crate::{ConfigError, Credentials, ForgeKind, ForgeRequest, PlanError, Secret};

/// The marker between the context path and `PROJECTKEY/slug` in clone URLs.
const SCM: &str = "/scm/";
/// `name` is limited to 255 characters by the REST API.
const MAX_NAME_CHARS: usize = 255;
/// The contract advises 255 for descriptions (not enforced everywhere, so cut rather than fail).
const MAX_DESCRIPTION_CHARS: usize = 255;
/// `url` longer than this is refused with 400.
const MAX_URL_CHARS: usize = 450;

const READ_CONTEXT: &str = "could not get existing commit status";
const READ_CALL_CONTEXT: &str = "failed api call to check duplicate commit status";
const READ_DECODE_CONTEXT: &str =
    "could not unmarshal json response body for duplicate commit status";
const WRITE_CONTEXT: &str = "could not post build status: could not post build commit status";

#[derive(Debug)]
pub(crate) struct BitbucketServer {
    /// `<scheme>://<host>[:port]<context>/rest/api/latest/projects/<KEY>/repos/<slug>/commits`.
    base: String,
    /// The Provider address as given: Flux's status link.
    address: String,
    authorization: Secret,
    /// The password alone (Basic auth), scrubbed from errors like the header.
    password: Option<Secret>,
}

/// The REST base for commits of the repository a clone URL names, in Flux's words on failure.
fn commits_base(address: &str) -> Result<String, ConfigError> {
    let bad = |reason: String| ConfigError::BitbucketServerAddress(reason);
    let url = match url::Url::parse(address) {
        Ok(url) => url,
        // A path or an scp-like address has no scheme at all.
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            return Err(bad(
                "unsupported scheme type in address: . Must be http or https".to_owned(),
            ));
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "unsupported scheme type in address: {}. Must be http or https",
            url.scheme()
        )));
    }
    let path = url.path();
    let path = path.strip_suffix(".git").unwrap_or(path);
    let Some(at) = path.rfind(SCM) else {
        return Err(bad(
            "supplied provider address is not http(s) git clone url".to_owned(),
        ));
    };
    let context = &path[..at];
    let id = percent_decode_str(&path[at + SCM.len()..])
        .decode_utf8_lossy()
        .into_owned();
    let (project, slug) = match id.split('/').collect::<Vec<_>>()[..] {
        [project, slug] if !project.is_empty() && !slug.is_empty() => (project, slug),
        _ => return Err(bad(format!("invalid repository id \"{id}\""))),
    };
    let mut authority = url.host_str().unwrap_or_default().to_owned();
    if let Some(port) = url.port() {
        authority = format!("{authority}:{port}");
    }
    // User info and query of the clone URL are not carried over: credentials come from the
    // secret, and a query would end up in front of `?key=`.
    Ok(format!(
        "{}://{authority}{context}/rest/api/latest/projects/{}/repos/{}/commits",
        url.scheme(),
        path_segment(project),
        path_segment(slug)
    ))
}

impl BitbucketServer {
    pub(crate) fn new(address: &str, credentials: &Credentials) -> Result<Self, ConfigError> {
        let base = commits_base(address)?;
        let username = credentials
            .username
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty());
        let (authorization, password) =
            match (credentials.token(), username, credentials.password()) {
                (Some(token), _, _) => (header_safe(format!("Bearer {token}"))?, None),
                (None, Some(user), Some(password)) => (
                    header_safe(basic_auth(user, password))?,
                    Some(Secret::new(password)),
                ),
                _ => return Err(ConfigError::BitbucketServerCredentials),
            };
        Ok(Self {
            base,
            address: address.to_owned(),
            authorization,
            password,
        })
    }

    fn builds_url(&self, sha: &str) -> String {
        format!("{}/{}/builds", self.base, path_segment(sha))
    }

    fn request(&self, method: Method, url: String) -> ForgeRequest {
        ForgeRequest::new(method, url)
            .header("Authorization", self.authorization.expose())
            .header("x-atlassian-token", "no-check")
            .header("x-requested-with", "XMLHttpRequest")
            .header("User-Agent", USER_AGENT)
    }
}

#[derive(Debug, Deserialize)]
struct BuildStatus {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// Go's `http.StatusText`.
fn reason_phrase(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or_default()
}

impl Protocol for BitbucketServer {
    fn kind(&self) -> ForgeKind {
        ForgeKind::BitbucketServer
    }

    fn state_name(&self, state: State) -> &'static str {
        match state {
            State::Success => "SUCCESSFUL",
            State::Failure => "FAILED",
            State::InProgress => "INPROGRESS",
        }
    }

    fn wanted(
        &self,
        ev: &StatusEvent<'_>,
        sha: String,
        state: &'static str,
        description: String,
    ) -> Result<Wanted, PlanError> {
        let description = truncate_chars(&description, MAX_DESCRIPTION_CHARS);
        let name = if ev.status_id_from_expr {
            truncate_chars(ev.status_id, MAX_NAME_CHARS)
        } else {
            truncate_chars(
                &format!("{} [{description}]", object_name(ev.kind, ev.name)),
                MAX_NAME_CHARS,
            )
        };
        let url = ev.link().unwrap_or(&self.address);
        let target_url =
            checked_target_url(ForgeKind::BitbucketServer, url, false, Some(MAX_URL_CHARS))?;
        // A SHA-1 hex key (40) is well within the 255 allowed.
        Ok(Wanted {
            sha,
            state,
            description,
            context: sha1_hex(ev.status_id),
            genre: None,
            name: Some(name),
            target_url: Some(target_url),
        })
    }

    fn read_request(&self, wanted: &Wanted) -> ForgeRequest {
        let url = format!(
            "{}?key={}",
            self.builds_url(&wanted.sha),
            query_value(&wanted.context)
        );
        self.request(Method::GET, url)
    }

    fn is_duplicate(&self, wanted: &Wanted, body: &[u8]) -> Result<bool, serde_json::Error> {
        let existing: BuildStatus = serde_json::from_slice(body)?;
        let field = |v: &Option<String>| v.clone().unwrap_or_default();
        Ok(field(&existing.key) == wanted.context
            && field(&existing.state) == wanted.state
            && field(&existing.description) == wanted.description
            && Some(field(&existing.name)) == wanted.name)
    }

    fn write_request(&self, wanted: &Wanted) -> ForgeRequest {
        // Flux encodes with `json.NewEncoder`: HTML escaped, newline at the end.
        let mut body = JsonObject::new(true)
            .str("description", &wanted.description)
            .str("key", &wanted.context)
            .str("name", wanted.name.as_deref().unwrap_or_default())
            .str("state", wanted.state)
            .str("url", wanted.target_url.as_deref().unwrap_or(&self.address))
            .finish();
        body.push('\n');
        self.request(Method::POST, self.builds_url(&wanted.sha))
            .json("application/json", body.into_bytes())
    }

    fn secret_values(&self) -> Vec<String> {
        let mut values = header_secrets(&self.authorization);
        values.extend(self.password.iter().map(|p| p.expose().to_owned()));
        values
    }

    fn read_context(&self) -> &'static str {
        READ_CONTEXT
    }

    fn write_context(&self) -> Option<&'static str> {
        Some(WRITE_CONTEXT)
    }

    /// No status for this key (404), or an answer without one (any 2xx but 200).
    fn absent(&self, status: u16) -> bool {
        status == 404 || ((200..300).contains(&status) && status != 200)
    }

    fn failure_text(
        &self,
        phase: Phase,
        request: &ForgeRequest,
        failure: &Failure,
    ) -> Option<String> {
        let detail = match failure {
            Failure::Status { status, .. } => format!("{status} - {}", reason_phrase(*status)),
            Failure::Timeout { after } => format!(
                "{} {}: request timed out after {after:?}",
                request.method, request.url
            ),
            Failure::Transport { message, .. } => {
                format!("{} {}: {message}", request.method, request.url)
            }
            Failure::Decode { message } => {
                return Some(format!("{READ_CONTEXT}: {READ_DECODE_CONTEXT}: {message}"));
            }
        };
        Some(match phase {
            Phase::Read => format!("{READ_CONTEXT}: {READ_CALL_CONTEXT}: {detail}"),
            Phase::Write => format!("{WRITE_CONTEXT}: {detail}"),
        })
    }

    fn plan_error(&self, error: PlanError) -> PlanError {
        match error {
            PlanError::InvalidRevision(_) => PlanError::Context {
                context: "could not parse revision",
                inner: Box::new(error),
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_urls() {
        // TestBitbucketServer_NewBitbucketServer / build URL vectors (§7.9).
        let sha_path = "/rest/api/latest/projects/projectfoo/repos/repobar/commits";
        for (address, base) in [
            (
                "https://example.com:7990/scm/projectfoo/repobar.git",
                format!("https://example.com:7990{sha_path}"),
            ),
            (
                "https://example.com:7990/context1/scm/projectfoo/repobar.git",
                format!("https://example.com:7990/context1{sha_path}"),
            ),
            (
                "https://example.com:7990/context1/context2/context3/scm/projectfoo/repobar.git",
                format!("https://example.com:7990/context1/context2/context3{sha_path}"),
            ),
            (
                "https://example.com:7990/scm/scm/projectfoo/repobar.git",
                format!("https://example.com:7990/scm{sha_path}"),
            ),
            (
                "https://example.com:7990/scm/context2/scm/scm/projectfoo/repobar.git",
                format!("https://example.com:7990/scm/context2/scm{sha_path}"),
            ),
            (
                "http://bb.local/scm/PRJ/my-repo",
                "http://bb.local/rest/api/latest/projects/PRJ/repos/my-repo/commits".to_owned(),
            ),
            (
                "https://user@bb.example.com/scm/PRJ/my%20repo.git?x=1",
                "https://bb.example.com/rest/api/latest/projects/PRJ/repos/my%20repo/commits"
                    .to_owned(),
            ),
        ] {
            assert_eq!(commits_base(address).unwrap(), base, "{address}");
        }
        for (address, error) in [
            (
                "https://example.com:7990/context1/context2/context3/projectfoo/repobar.git",
                "could not parse git address: supplied provider address is not http(s) git clone url",
            ),
            (
                "ssh://git@mybitbucket:2222/ap/fluxcd-sandbox.git",
                "could not parse git address: unsupported scheme type in address: ssh. Must be http or https",
            ),
            (
                "https://example.com:7990/scm/projectfoo/repobar/invalid.git",
                "could not parse git address: invalid repository id \"projectfoo/repobar/invalid\"",
            ),
            (
                "/scm/projectfoo/repobar.git",
                "could not parse git address: unsupported scheme type in address: . Must be http or https",
            ),
            (
                "https://example.com/scm/projectfoo/",
                "could not parse git address: invalid repository id \"projectfoo/\"",
            ),
        ] {
            assert_eq!(
                commits_base(address).unwrap_err().to_string(),
                error,
                "{address}"
            );
        }
    }
}
