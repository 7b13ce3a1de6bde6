//! Bitbucket Cloud: access tokens (Bearer) or `user:API-token` credentials (Basic), the fixed
//! API host, build statuses keyed by
//! the SHA-1 of the status ID, and the "same state and description" duplicate rule.

use http::Method;
use serde::Deserialize;

use super::encode::{JsonObject, path_segment};
use super::{
    Protocol, State, StatusEvent, Wanted, basic_auth, checked_target_url, header_safe,
    header_secrets, sha1_hex,
};
use crate::address::GitAddress;
use crate::describe::{object_name, truncate_chars};
use crate::transport::USER_AGENT;
use crate::{ConfigError, Credentials, ForgeKind, ForgeRequest, PlanError, Secret};

/// Overrides the API base, as the Go SDK does (tests, proxies).
pub(crate) const API_BASE_ENV: &str = "BITBUCKET_API_BASE_URL";
const DEFAULT_API_BASE: &str = "https://api.bitbucket.org/2.0";
/// Flux's constant status link; Bitbucket requires an absolute URL.
const STATUS_URL: &str = "https://bitbucket.org";
/// Longer names are rejected with 400 (reported by Atlassian integrators).
const MAX_NAME_CHARS: usize = 255;

#[derive(Debug)]
pub(crate) struct Bitbucket {
    /// Without trailing `/`.
    api: String,
    owner: String,
    repo: String,
    authorization: Secret,
    /// The secret part alone (API token, or the access token), scrubbed from errors like the
    /// whole header.
    password: Secret,
}

impl Bitbucket {
    /// The address host is ignored: Bitbucket Cloud has one API host.
    pub(crate) fn new(
        address: &str,
        credentials: &Credentials,
        api_base: Option<String>,
    ) -> Result<Self, ConfigError> {
        let token = credentials.token().ok_or(ConfigError::BitbucketToken)?;
        let address = GitAddress::parse(address);
        // Repository, project and workspace access tokens have no `:` and go as Bearer; API
        // tokens (and the retired app passwords) come with the account's email or username.
        let (authorization, password) = match token.split(':').collect::<Vec<_>>()[..] {
            [access] => (header_safe(format!("Bearer {access}"))?, access),
            [user, password] if !user.is_empty() && !password.is_empty() => {
                (Secret::new(basic_auth(user, password)), password)
            }
            _ => return Err(ConfigError::BitbucketTokenFormat),
        };
        let (owner, repo) = match address.segments()[..] {
            [owner, repo] if !owner.is_empty() && !repo.is_empty() => {
                (owner.to_owned(), repo.to_owned())
            }
            _ => return Err(ConfigError::RepositoryId(address.id)),
        };
        let api = api_base.unwrap_or_else(|| DEFAULT_API_BASE.to_owned());
        Ok(Self {
            api: api.trim().trim_end_matches('/').to_owned(),
            owner,
            repo,
            authorization,
            password: Secret::new(password),
        })
    }

    fn statuses_url(&self, sha: &str) -> String {
        format!(
            "{}/repositories/{}/{}/commit/{}/statuses/build",
            self.api,
            path_segment(&self.owner),
            path_segment(&self.repo),
            path_segment(sha)
        )
    }

    fn request(&self, method: Method, url: String) -> ForgeRequest {
        ForgeRequest::new(method, url)
            .header("Authorization", self.authorization.expose())
            .header("User-Agent", USER_AGENT)
    }
}

#[derive(Debug, Deserialize)]
struct BuildStatus {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

impl Protocol for Bitbucket {
    fn kind(&self) -> ForgeKind {
        ForgeKind::Bitbucket
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
        // Bitbucket refuses a relative `url` with 400 ("Enter a valid URL").
        let target_url = ev
            .link()
            .map(|u| checked_target_url(ForgeKind::Bitbucket, u, true, None))
            .transpose()?;
        let name = if ev.status_id_from_expr {
            truncate_chars(ev.status_id, MAX_NAME_CHARS)
        } else {
            truncate_chars(&object_name(ev.kind, ev.name), MAX_NAME_CHARS)
        };
        // The key is limited to 40 characters; a SHA-1 hex of the ID always fits.
        Ok(Wanted {
            sha,
            state,
            description,
            context: sha1_hex(ev.status_id),
            genre: None,
            name: Some(name),
            target_url,
        })
    }

    fn read_request(&self, wanted: &Wanted) -> ForgeRequest {
        let url = format!(
            "{}/{}",
            self.statuses_url(&wanted.sha),
            path_segment(&wanted.context)
        );
        self.request(Method::GET, url)
    }

    fn is_duplicate(&self, wanted: &Wanted, body: &[u8]) -> Result<bool, serde_json::Error> {
        let existing: BuildStatus = serde_json::from_slice(body)?;
        Ok(existing.state.as_deref() == Some(wanted.state)
            && existing.description.as_deref().unwrap_or_default() == wanted.description)
    }

    fn write_request(&self, wanted: &Wanted) -> ForgeRequest {
        let body = JsonObject::new(true)
            .str("key", &wanted.context)
            .str("url", wanted.target_url.as_deref().unwrap_or(STATUS_URL))
            .str("state", wanted.state)
            .str("name", wanted.name.as_deref().unwrap_or_default())
            .str("description", &wanted.description)
            .finish();
        self.request(Method::POST, self.statuses_url(&wanted.sha))
            .json("application/json", body.into_bytes())
    }

    fn secret_values(&self) -> Vec<String> {
        let mut values = header_secrets(&self.authorization);
        values.push(self.password.expose().to_owned());
        values
    }

    fn read_context(&self) -> &'static str {
        "could not get commit status"
    }

    fn write_context(&self) -> Option<&'static str> {
        None
    }

    /// No status for this key yet.
    fn absent(&self, status: u16) -> bool {
        status == 404
    }
}
