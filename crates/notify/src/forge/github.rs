//! GitHub and GitHub Enterprise Server: API base from the address, the statuses list/create
//! exchange, and GitHub's "first status with our context" duplicate rule.

use http::Method;
use serde::Deserialize;

use super::encode::{JsonObject, path_segment};
use super::github_app::AppAuth;
use super::{
    Phase, Protocol, State, StatusEvent, Wanted, checked_target_url, header_safe, header_secrets,
    require_http,
};
use crate::address::GitAddress;
use crate::describe::truncate_chars;
use crate::error::Failure;
use crate::token_cache::TokenCache;
use crate::transport::USER_AGENT;
use crate::{ConfigError, Credentials, ForgeKind, ForgeRequest, PlanError, Secret};

/// GitHub rejects longer descriptions with 422 ("description is too long").
const MAX_DESCRIPTION_CHARS: usize = 140;
/// Longer contexts get a 422 (observed, undocumented).
const MAX_CONTEXT_CHARS: usize = 255;
/// GitHub's per-(commit, context) cap, and the words of its 422 when it is reached.
const STATUS_CAP: u32 = 1000;
const STATUS_CAP_MESSAGE: &str = "reached the maximum number of statuses";
/// First page only, as Flux; a status we posted is among the newest.
const LIST_PAGE_SIZE: u32 = 50;

#[derive(Debug)]
pub(crate) struct GitHub {
    /// Ends with `/`.
    api: String,
    owner: String,
    repo: String,
    /// `None` with a GitHub App: the installation token is added at execution.
    authorization: Option<Secret>,
}

impl GitHub {
    /// A token (or password) wins over App settings, as in Flux.
    pub(crate) fn new(
        address: &str,
        credentials: &Credentials,
        app_tokens: &TokenCache,
    ) -> Result<(Self, Option<AppAuth>), ConfigError> {
        let (authorization, app) = match (credentials.token_or_password(), &credentials.github_app)
        {
            (Some(token), _) => (Some(header_safe(format!("Bearer {token}"))?), None),
            (None, Some(app)) if !app.app_id.trim().is_empty() => (
                None,
                Some(AppAuth::new(
                    app,
                    app_tokens,
                    credentials.provider.as_ref(),
                )?),
            ),
            (None, _) => return Err(ConfigError::GitHubCredentials),
        };
        let address = GitAddress::parse(address);
        let (owner, repo) = match address.segments()[..] {
            [owner, repo] if !owner.is_empty() && !repo.is_empty() => {
                (owner.to_owned(), repo.to_owned())
            }
            _ => return Err(ConfigError::GitHubRepositoryId(address.id)),
        };
        require_http(&address)?;
        let github = Self {
            api: api_base(&address),
            owner,
            repo,
            authorization,
        };
        Ok((github, app))
    }

    fn repo_url(&self) -> String {
        format!(
            "{}repos/{}/{}",
            self.api,
            path_segment(&self.owner),
            path_segment(&self.repo)
        )
    }

    fn request(&self, method: Method, url: String) -> ForgeRequest {
        let mut request = ForgeRequest::new(method, url);
        if let Some(authorization) = &self.authorization {
            request = request.header("Authorization", authorization.expose());
        }
        request
            .header("Accept", "application/vnd.github.v3+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .header("User-Agent", USER_AGENT)
    }
}

/// github.com → the public API host; anything else is GitHub Enterprise Server under
/// `/api/v3/`, unless the address already names an API host (go-github's rule).
fn api_base(address: &GitAddress) -> String {
    let authority = address.authority.as_str();
    if authority == "github.com" {
        "https://api.github.com/".to_owned()
    } else if authority.starts_with("api.") || authority.contains(".api.") {
        format!("{}/", address.host)
    } else {
        format!("{}/api/v3/", address.host)
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct RepoStatus {
    pub context: Option<String>,
    pub state: Option<String>,
    pub description: Option<String>,
}

/// The first complete status with our context decides; an older one further down the list is
/// history, not the current state.
pub(crate) fn duplicate(existing: &[RepoStatus], wanted: &Wanted) -> bool {
    let complete = existing.iter().filter_map(|s| {
        Some((
            s.context.as_deref()? == wanted.context,
            s.state.as_deref()?,
            s.description.as_deref()?,
        ))
    });
    super::first_ours_is_same(complete, wanted)
}

impl Protocol for GitHub {
    fn kind(&self) -> ForgeKind {
        ForgeKind::GitHub
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
        let len = ev.status_id.chars().count();
        if len > MAX_CONTEXT_CHARS {
            return Err(PlanError::StatusIdTooLong {
                forge: ForgeKind::GitHub,
                len,
                max: MAX_CONTEXT_CHARS,
            });
        }
        // GitHub documents no limit or format for `target_url`.
        let target_url = ev
            .link()
            .map(|u| checked_target_url(ForgeKind::GitHub, u, false, None))
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
            "{}/commits/{}/statuses?per_page={LIST_PAGE_SIZE}",
            self.repo_url(),
            path_segment(&wanted.sha)
        );
        self.request(Method::GET, url)
    }

    fn is_duplicate(&self, wanted: &Wanted, body: &[u8]) -> Result<bool, serde_json::Error> {
        let existing: Vec<RepoStatus> = serde_json::from_slice(body)?;
        Ok(duplicate(&existing, wanted))
    }

    fn write_request(&self, wanted: &Wanted) -> ForgeRequest {
        let url = format!("{}/statuses/{}", self.repo_url(), path_segment(&wanted.sha));
        // go-github encodes without HTML escaping and ends the body with a newline.
        // go-github's field order; `target_url` is omitted when empty, as Flux never sets it.
        let mut body = JsonObject::new(false).str("state", wanted.state);
        if let Some(target_url) = &wanted.target_url {
            body = body.str("target_url", target_url);
        }
        let mut body = body
            .str("description", &wanted.description)
            .str("context", &wanted.context)
            .finish();
        body.push('\n');
        self.request(Method::POST, url)
            .json("application/json", body.into_bytes())
    }

    fn secret_values(&self) -> Vec<String> {
        self.authorization
            .as_ref()
            .map(header_secrets)
            .unwrap_or_default()
    }

    fn read_context(&self) -> &'static str {
        "could not list commit statuses"
    }

    fn write_context(&self) -> Option<&'static str> {
        Some("could not create commit status")
    }

    /// GitHub keeps at most 1,000 statuses per (commit, context) and refuses the next with a
    /// 422 that reads like a validation error; say what it means, since it is permanent.
    fn failure_text(
        &self,
        phase: Phase,
        request: &ForgeRequest,
        failure: &Failure,
    ) -> Option<String> {
        match (phase, failure) {
            (
                Phase::Write,
                Failure::Status {
                    status: 422,
                    message,
                    ..
                },
            ) if message.contains(STATUS_CAP_MESSAGE) => Some(format!(
                "could not create commit status: {} {}: 422 {message}: GitHub keeps at most \
                     {STATUS_CAP} statuses per commit and context, and this commit has reached \
                     that cap; the status cannot be posted (not retried)",
                request.method, request.url
            )),
            _ => None,
        }
    }
}
