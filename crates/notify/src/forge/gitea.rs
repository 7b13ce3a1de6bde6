//! Gitea and Forgejo (API v1): `owner/repo` from the address, the statuses list/create
//! exchange of the Gitea SDK, and GitHub's "first status with our context" duplicate rule read
//! from Gitea's `status` field.
//!
//! Flux's SDK client probes `GET /api/v1/version` when the notifier is built. We do not: a
//! forge is built without I/O, the probe only refuses servers older than Gitea 1.11 (2020),
//! and it costs a round trip per event in Flux. A TLS or reachability problem therefore shows
//! on the first delivery instead of at construction.

use http::Method;
use serde::Deserialize;

use super::encode::{JsonObject, path_segment};
use super::{
    Protocol, State, StatusEvent, Wanted, checked_target_url, header_safe, header_secrets,
    require_http,
};
use crate::address::GitAddress;
use crate::transport::USER_AGENT;
use crate::{ConfigError, Credentials, ForgeKind, ForgeRequest, PlanError, Secret};

/// First page only, as Flux; Gitea caps pages at 50 by default anyway.
const LIST_PAGE_SIZE: u32 = 50;

#[derive(Debug)]
pub(crate) struct Gitea {
    /// `<scheme>://<host>/api/v1/`.
    api: String,
    owner: String,
    repo: String,
    authorization: Secret,
}

impl Gitea {
    pub(crate) fn new(address: &str, credentials: &Credentials) -> Result<Self, ConfigError> {
        let token = credentials
            .token_or_password()
            .ok_or(ConfigError::GiteaToken)?;
        let address = GitAddress::parse(address);
        // A Gitea served under a sub-path puts that path into the id, which then fails here,
        // as in Flux.
        let (owner, repo) = match address.segments()[..] {
            [owner, repo] if !owner.is_empty() && !repo.is_empty() => {
                (owner.to_owned(), repo.to_owned())
            }
            _ => return Err(ConfigError::RepositoryId(address.id)),
        };
        require_http(&address)?;
        Ok(Self {
            api: format!("{}/api/v1/", address.host),
            owner,
            repo,
            authorization: header_safe(format!("token {token}"))?,
        })
    }

    fn repo_url(&self) -> String {
        format!(
            "{}repos/{}/{}",
            self.api,
            path_segment(&self.owner),
            path_segment(&self.repo)
        )
    }

    /// The SDK sends `Content-Type: application/json` on every call, bodiless ones included.
    fn request(&self, method: Method, url: String) -> ForgeRequest {
        ForgeRequest::new(method, url)
            .header("Authorization", self.authorization.expose())
            .header("User-Agent", USER_AGENT)
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct CommitStatus {
    #[serde(default)]
    pub context: Option<String>,
    /// Gitea calls the state `status` in answers (and `state` in requests).
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// The first status with our context decides; empty fields count as missing, as the SDK's
/// zero values do in Flux's check.
pub(crate) fn duplicate(existing: &[CommitStatus], wanted: &Wanted) -> bool {
    fn present(v: &Option<String>) -> Option<&str> {
        v.as_deref().filter(|s| !s.is_empty())
    }
    let complete = existing.iter().filter_map(|s| {
        Some((
            present(&s.context)? == wanted.context,
            present(&s.status)?,
            present(&s.description)?,
        ))
    });
    super::first_ours_is_same(complete, wanted)
}

impl Protocol for Gitea {
    fn kind(&self) -> ForgeKind {
        ForgeKind::Gitea
    }

    fn state_name(&self, state: State) -> &'static str {
        match state {
            State::Success => "success",
            State::Failure => "failure",
            State::InProgress => "pending",
        }
    }

    fn wanted(
        &self,
        ev: &StatusEvent<'_>,
        sha: String,
        state: &'static str,
        description: String,
    ) -> Result<Wanted, PlanError> {
        // Gitea stores TEXT columns and validates nothing, so no limit applies.
        let target_url = ev
            .link()
            .map(|u| checked_target_url(ForgeKind::Gitea, u, false, None))
            .transpose()?;
        Ok(Wanted {
            sha,
            state,
            description,
            context: ev.status_id.to_owned(),
            genre: None,
            name: None,
            target_url,
        })
    }

    fn read_request(&self, wanted: &Wanted) -> ForgeRequest {
        let url = format!(
            "{}/commits/{}/statuses?limit={LIST_PAGE_SIZE}&page=1",
            self.repo_url(),
            path_segment(&wanted.sha)
        );
        self.request(Method::GET, url)
            .header("Content-Type", "application/json")
    }

    fn is_duplicate(&self, wanted: &Wanted, body: &[u8]) -> Result<bool, serde_json::Error> {
        let existing: Vec<CommitStatus> = serde_json::from_slice(body)?;
        Ok(duplicate(&existing, wanted))
    }

    fn write_request(&self, wanted: &Wanted) -> ForgeRequest {
        let url = format!("{}/statuses/{}", self.repo_url(), path_segment(&wanted.sha));
        // The SDK marshals with `json.Marshal`: HTML escaped, no trailing newline, and the
        // empty `target_url` always present.
        let body = JsonObject::new(true)
            .str("state", wanted.state)
            .str(
                "target_url",
                wanted.target_url.as_deref().unwrap_or_default(),
            )
            .str("description", &wanted.description)
            .str("context", &wanted.context)
            .finish();
        self.request(Method::POST, url)
            .json("application/json", body.into_bytes())
    }

    fn secret_values(&self) -> Vec<String> {
        header_secrets(&self.authorization)
    }

    fn read_context(&self) -> &'static str {
        "could not list commit statuses"
    }

    fn write_context(&self) -> Option<&'static str> {
        None
    }
}
