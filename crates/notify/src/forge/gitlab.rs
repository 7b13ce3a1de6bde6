//! GitLab (gitlab.com and self-managed, API v4): project id escaping, the statuses
//! list/create exchange, and GitLab's "any identical status" duplicate rule.

use http::Method;
use serde::Deserialize;

use super::encode::{JsonObject, path_segment, query_value};
use super::{
    Protocol, State, StatusEvent, Wanted, checked_target_url, header_safe, header_secrets,
    require_http,
};
use crate::address::GitAddress;
use crate::describe::truncate_chars;
use crate::transport::USER_AGENT;
use crate::{ConfigError, Credentials, ForgeKind, ForgeRequest, PlanError, Secret};

/// GitLab stores descriptions in a 255-character column.
const MAX_DESCRIPTION_CHARS: usize = 255;
/// The model validates `target_url` as an addressable http(s) URL of at most 255 characters.
const MAX_TARGET_URL_CHARS: usize = 255;

#[derive(Debug)]
pub(crate) struct GitLab {
    /// Ends with `/`.
    api: String,
    /// Full project path (any depth) or numeric id, escaped as one path segment.
    project: String,
    private_token: Secret,
}

/// go-gitlab escapes `.` too, so `group/my.repo` becomes `group%2Fmy%2Erepo`.
fn project_segment(id: &str) -> String {
    path_segment(id).replace('.', "%2E")
}

impl GitLab {
    pub(crate) fn new(address: &str, credentials: &Credentials) -> Result<Self, ConfigError> {
        let token = credentials
            .token_or_password()
            .ok_or(ConfigError::GitLabToken)?;
        let address = GitAddress::parse(address);
        if address.id.is_empty() {
            return Err(ConfigError::RepositoryId(address.id));
        }
        require_http(&address)?;
        Ok(Self {
            api: format!("{}/api/v4/", address.host),
            project: project_segment(&address.id),
            private_token: header_safe(token.to_owned())?,
        })
    }

    fn request(&self, method: Method, url: String) -> ForgeRequest {
        ForgeRequest::new(method, url)
            .header("PRIVATE-TOKEN", self.private_token.expose())
            .header("Accept", "application/json")
            .header("User-Agent", USER_AGENT)
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct CommitStatus {
    #[serde(default)]
    pub sha: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

pub(crate) fn duplicate(existing: &[CommitStatus], wanted: &Wanted) -> bool {
    let field = |v: &Option<String>| v.clone().unwrap_or_default();
    existing.iter().any(|s| {
        field(&s.sha) == wanted.sha
            && field(&s.status) == wanted.state
            && field(&s.description) == wanted.description
            && field(&s.name) == wanted.context
    })
}

impl Protocol for GitLab {
    fn kind(&self) -> ForgeKind {
        ForgeKind::GitLab
    }

    fn state_name(&self, state: State) -> &'static str {
        match state {
            State::Success => "success",
            State::Failure => "failed",
            State::InProgress => "running",
        }
    }

    fn wanted(
        &self,
        ev: &StatusEvent<'_>,
        sha: String,
        state: &'static str,
        description: String,
    ) -> Result<Wanted, PlanError> {
        let target_url = ev
            .link()
            .map(|u| checked_target_url(ForgeKind::GitLab, u, true, Some(MAX_TARGET_URL_CHARS)))
            .transpose()?;
        Ok(Wanted {
            sha,
            state,
            description: truncate_chars(&description, MAX_DESCRIPTION_CHARS),
            context: ev.status_id.to_owned(),
            genre: None,
            name: None,
            target_url,
        })
    }

    fn read_request(&self, wanted: &Wanted) -> ForgeRequest {
        let url = format!(
            "{}projects/{}/repository/commits/{}/statuses?name={}",
            self.api,
            self.project,
            path_segment(&wanted.sha),
            query_value(&wanted.context)
        );
        self.request(Method::GET, url)
    }

    fn is_duplicate(&self, wanted: &Wanted, body: &[u8]) -> Result<bool, serde_json::Error> {
        let existing: Vec<CommitStatus> = serde_json::from_slice(body)?;
        Ok(duplicate(&existing, wanted))
    }

    fn write_request(&self, wanted: &Wanted) -> ForgeRequest {
        let url = format!(
            "{}projects/{}/statuses/{}",
            self.api,
            self.project,
            path_segment(&wanted.sha)
        );
        // go-gitlab's field order (state, ref, name, context, target_url, description).
        let mut body = JsonObject::new(true)
            .str("state", wanted.state)
            .str("name", &wanted.context);
        if let Some(target_url) = &wanted.target_url {
            body = body.str("target_url", target_url);
        }
        let body = body.str("description", &wanted.description).finish();
        self.request(Method::POST, url)
            .json("application/json", body.into_bytes())
    }

    fn secret_values(&self) -> Vec<String> {
        header_secrets(&self.private_token)
    }

    fn read_context(&self) -> &'static str {
        "unable to list commit status"
    }

    fn write_context(&self) -> Option<&'static str> {
        None
    }

    /// GitLab refuses to move a pending/running job into the state it is already in (400
    /// "Cannot transition status via :run from :running"): the status is already what we want.
    fn write_was_noop(&self, status: u16, body: &[u8]) -> bool {
        status == 400 && String::from_utf8_lossy(body).contains("Cannot transition status")
    }
}
