//! Azure DevOps Services and Server: organisation/collection URL from the address, the
//! statuses list/create exchange at API version 6.0, and the "first status with our name and
//! genre" duplicate rule.

use http::Method;
use serde::Deserialize;

use super::encode::{JsonObject, path_segment};
use super::{
    Protocol, State, StatusEvent, Wanted, basic_auth, checked_target_url, header_secrets,
    require_http,
};
use crate::address::GitAddress;
use crate::transport::USER_AGENT;
use crate::{ConfigError, Credentials, ForgeKind, ForgeRequest, PlanError, Secret};

/// The version Flux's SDK negotiates; Azure DevOps Server 2020 supports nothing newer.
const API_VERSION: &str = "6.0";
/// The repository segment marker in Azure DevOps clone URLs.
const GIT_MARKER: &str = "_git";
const GENRE: &str = "fluxcd";

#[derive(Debug)]
pub(crate) struct AzureDevOps {
    /// `https://dev.azure.com/<org>`, `https://<org>.visualstudio.com` or
    /// `https://<server>/[tfs/]<collection>`, lower-cased, without trailing `/`.
    org_url: String,
    project: String,
    repo: String,
    /// `None` with workload identity: the access token is added at execution.
    authorization: Option<Secret>,
}

impl AzureDevOps {
    pub(crate) fn new(
        address: &str,
        credentials: &Credentials,
        workload_identity: bool,
    ) -> Result<Self, ConfigError> {
        let token = credentials.token();
        if token.is_none() && !workload_identity {
            return Err(ConfigError::AzureDevOpsToken);
        }
        let address = GitAddress::parse(address);
        let (collection, project, repo) = split_repository_id(&address)
            .ok_or_else(|| ConfigError::RepositoryId(address.id.clone()))?;
        require_http(&address)?;
        let org_url = if collection.is_empty() {
            address.host.clone()
        } else {
            format!("{}/{collection}", address.host)
        };
        Ok(Self {
            org_url: org_url.to_lowercase().trim_end_matches('/').to_owned(),
            project,
            repo,
            // A PAT is the password of a user-less basic auth.
            authorization: token.map(|t| Secret::new(basic_auth("", t))),
        })
    }

    fn statuses_url(&self, sha: &str) -> String {
        format!(
            "{}/{}/_apis/git/repositories/{}/commits/{}/statuses?api-version={API_VERSION}",
            self.org_url,
            path_segment(&self.project),
            path_segment(&self.repo),
            path_segment(sha)
        )
    }

    fn request(&self, method: Method, url: String) -> ForgeRequest {
        let request = ForgeRequest::new(method, url);
        let request = match &self.authorization {
            Some(a) => request.header("Authorization", a.expose()),
            None => request,
        };
        request
            .header(
                "Accept",
                format!("application/json;api-version={API_VERSION}"),
            )
            .header("X-TFS-FedAuthRedirect", "Suppress")
            .header("User-Agent", USER_AGENT)
    }
}

/// `(collection path, project, repository)`.
///
/// Exactly four segments keep Flux's rule (`org/project/<ignored>/repo`). Otherwise the `_git`
/// marker is located: the repository follows it, the project precedes it, and whatever comes
/// before the project is the collection path (empty for `<org>.visualstudio.com`, `tfs/<coll>`
/// for Azure DevOps Server). Flux rejects these last two forms.
fn split_repository_id(address: &GitAddress) -> Option<(String, String, String)> {
    let parts = address.segments();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    if let [org, project, _, repo] = parts[..] {
        return Some((org.to_owned(), project.to_owned(), repo.to_owned()));
    }
    let marker = parts.iter().position(|p| *p == GIT_MARKER)?;
    if marker == 0 || marker + 2 != parts.len() {
        return None;
    }
    let collection = parts[..marker - 1].join("/");
    // dev.azure.com serves every organisation under its first path segment.
    if collection.is_empty() && address.hostname().eq_ignore_ascii_case("dev.azure.com") {
        return None;
    }
    Some((
        collection,
        parts[marker - 1].to_owned(),
        parts[marker + 1].to_owned(),
    ))
}

#[derive(Debug, Deserialize)]
struct StatusList {
    #[serde(default)]
    value: Vec<GitStatus>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct GitStatus {
    #[serde(default)]
    pub context: Option<StatusContext>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct StatusContext {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub genre: Option<String>,
}

/// The first complete status with our name and genre decides (the list is newest first).
pub(crate) fn duplicate(existing: &[GitStatus], wanted: &Wanted) -> bool {
    let genre = wanted.genre.as_deref().unwrap_or(GENRE);
    let complete = existing.iter().filter_map(|s| {
        let context = s.context.as_ref()?;
        let ours = context.name.as_deref()? == wanted.context && context.genre.as_deref()? == genre;
        Some((ours, s.state.as_deref()?, s.description.as_deref()?))
    });
    super::first_ours_is_same(complete, wanted)
}

impl Protocol for AzureDevOps {
    fn kind(&self) -> ForgeKind {
        ForgeKind::AzureDevOps
    }

    fn state_name(&self, state: State) -> &'static str {
        match state {
            State::Success => "succeeded",
            // Flux maps failures to `error`, not `failed`; existing statuses say so too.
            State::Failure => "error",
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
        let genre = match ev.metadata.get("summary") {
            Some(summary) => format!("{GENRE}:{summary}"),
            None => GENRE.to_owned(),
        };
        // Azure DevOps documents no rule for `targetUrl`; it only renders it as a link.
        let target_url = ev
            .link()
            .map(|u| checked_target_url(ForgeKind::AzureDevOps, u, false, None))
            .transpose()?;
        Ok(Wanted {
            sha,
            state,
            description,
            context: ev.status_id.to_owned(),
            genre: Some(genre),
            name: None,
            target_url,
        })
    }

    fn read_request(&self, wanted: &Wanted) -> ForgeRequest {
        self.request(Method::GET, self.statuses_url(&wanted.sha))
    }

    fn is_duplicate(&self, wanted: &Wanted, body: &[u8]) -> Result<bool, serde_json::Error> {
        let existing: StatusList = serde_json::from_slice(body)?;
        Ok(duplicate(&existing.value, wanted))
    }

    fn write_request(&self, wanted: &Wanted) -> ForgeRequest {
        let context = JsonObject::new(true)
            .str("genre", wanted.genre.as_deref().unwrap_or(GENRE))
            .str("name", &wanted.context);
        // The SDK's field order: `targetUrl` follows `state`, and is left out when unset.
        let mut body = JsonObject::new(true)
            .object("context", context)
            .str("description", &wanted.description)
            .str("state", wanted.state);
        if let Some(target_url) = &wanted.target_url {
            body = body.str("targetUrl", target_url);
        }
        let body = body.finish();
        self.request(Method::POST, self.statuses_url(&wanted.sha))
            .json("application/json;charset=utf-8", body.into_bytes())
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

    /// 203 carries Azure's HTML sign-in page: the credentials were not accepted.
    fn accepts(&self, status: u16) -> bool {
        (200..300).contains(&status) && status != 203
    }
}
