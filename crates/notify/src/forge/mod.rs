//! The commit-status flow, written once: event → [`Plan`] (pure) → [`Forge::execute`] (the only
//! I/O). Each forge module supplies only what differs, through the private [`Protocol`] trait:
//! its address rules, state names, the read request and how to spot a duplicate in its answer,
//! and the write request. Adding a forge is one file plus one arm in [`Forge::new_with_env`].

mod azure_devops;
mod bitbucket;
mod encode;
mod github;
mod gitlab;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use sha1::{Digest as _, Sha1};

use crate::error::{Failure, classify, forge_message};
use crate::transport::{self, SendError};
use crate::{
    ClientCache, ConfigError, DeliveryError, ForgeConfig, ForgeRequest, PlanError, Retry,
    address::GitAddress, describe, revision,
};

/// The Git forges Flux can post commit statuses to (Provider `spec.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ForgeKind {
    /// github.com and GitHub Enterprise Server.
    GitHub,
    /// gitlab.com and self-managed GitLab.
    GitLab,
    /// Gitea and Forgejo.
    Gitea,
    /// Bitbucket Cloud.
    Bitbucket,
    /// Bitbucket Server / Data Center.
    BitbucketServer,
    /// Azure DevOps Services and Server.
    AzureDevOps,
}

impl ForgeKind {
    /// Every kind, in Flux's documentation order.
    pub const ALL: [ForgeKind; 6] = [
        ForgeKind::GitHub,
        ForgeKind::GitLab,
        ForgeKind::Gitea,
        ForgeKind::BitbucketServer,
        ForgeKind::Bitbucket,
        ForgeKind::AzureDevOps,
    ];

    /// The kind for a Provider `spec.type`; `None` for non-commit-status types.
    pub fn from_provider_type(t: &str) -> Option<ForgeKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == t)
    }

    /// The Provider `spec.type` string.
    pub fn as_str(&self) -> &'static str {
        match self {
            ForgeKind::GitHub => "github",
            ForgeKind::GitLab => "gitlab",
            ForgeKind::Gitea => "gitea",
            ForgeKind::Bitbucket => "bitbucket",
            ForgeKind::BitbucketServer => "bitbucketserver",
            ForgeKind::AzureDevOps => "azuredevops",
        }
    }
}

impl fmt::Display for ForgeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with events whose reason is `Progressing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ProgressingMode {
    /// Post the forge's in-progress state.
    #[default]
    Pending,
    /// Send nothing (Flux's behaviour for every forge but Gitea).
    Skip,
}

/// What a forge needs from one (event, alert, provider) triple; computed by the controller.
#[derive(Clone, Copy, Debug)]
pub struct StatusEvent<'a> {
    /// Commit status ID (GitHub context, GitLab name, Azure context.name; Bitbucket key = sha1
    /// hex of it).
    pub status_id: &'a str,
    /// `involvedObject.kind`.
    pub kind: &'a str,
    /// `involvedObject.name`.
    pub name: &'a str,
    /// Event reason (CamelCase).
    pub reason: &'a str,
    /// Event severity (`info`, `error`).
    pub severity: &'a str,
    /// Merged metadata: keys `commit`, `originRevision`, `revision`, `summary`, ...
    pub metadata: &'a BTreeMap<String, String>,
}

/// Result of a successful [`Forge::execute`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The status was written.
    Posted,
    /// The forge already shows exactly this status; nothing was written.
    AlreadySet,
}

/// The planned exchange: pure data, also what a dry run prints.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Commit the status is for.
    pub sha: String,
    /// State in the forge's words (`success`, `SUCCESSFUL`, `succeeded`, ...).
    pub state: String,
    /// Description as sent (after the forge's length limit).
    pub description: String,
    /// The commit status ID of the event.
    pub status_id: String,
    /// Request that reads what the forge already has, for the duplicate check.
    pub read: Option<ForgeRequest>,
    /// Request that writes the status.
    pub write: ForgeRequest,
    wanted: Wanted,
}

impl Plan {
    /// A stable fingerprint of what would be written (URL + body), for the controller's "last
    /// posted" memory.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha1::new();
        hasher.update(self.write.method.as_str());
        hasher.update(b" ");
        hasher.update(self.write.url.as_bytes());
        hasher.update(b"\n");
        hasher.update(self.write.body.as_deref().unwrap_or_default());
        hex::encode(hasher.finalize())
    }
}

// === the protocol seam ===

/// Host-neutral state; every forge names each one (exhaustive match per forge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Success,
    Failure,
    InProgress,
}

/// The status a plan wants the forge to show: everything the duplicate check compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub sha: String,
    pub state: &'static str,
    pub description: String,
    /// The forge's identifier for "our" status: GitHub/Azure context name, GitLab name,
    /// Bitbucket key.
    pub context: String,
    /// Azure DevOps context genre.
    pub genre: Option<String>,
}

/// Protocol knowledge for one forge. No I/O: builds requests and reads answers.
pub(crate) trait Protocol: Send + Sync + fmt::Debug {
    fn kind(&self) -> ForgeKind;

    fn state_name(&self, state: State) -> &'static str;

    /// Applies the forge's identifiers and length limits.
    fn wanted(
        &self,
        ev: &StatusEvent<'_>,
        sha: String,
        state: &'static str,
        description: String,
    ) -> Result<Wanted, PlanError>;

    /// Reads what the forge already has for this commit (and status).
    fn read_request(&self, wanted: &Wanted) -> ForgeRequest;

    /// From a 2xx answer to the read request: does the forge already show `wanted`?
    fn is_duplicate(&self, wanted: &Wanted, body: &[u8]) -> Result<bool, serde_json::Error>;

    /// Writes the status.
    fn write_request(&self, ev: &StatusEvent<'_>, wanted: &Wanted) -> ForgeRequest;

    /// Credential values as they appear on the wire, to scrub from error texts.
    fn secret_values(&self) -> Vec<String>;

    /// Flux's prefix for a failed read.
    fn read_context(&self) -> &'static str;

    /// Flux's prefix for a failed write, if Flux adds one.
    fn write_context(&self) -> Option<&'static str>;

    /// Whether a 404 to the read means "no status yet" rather than an error.
    fn absent_on_not_found(&self) -> bool {
        false
    }

    /// Whether an answer is a success.
    fn accepts(&self, status: u16) -> bool {
        (200..300).contains(&status)
    }

    /// Whether a refused write means the forge already is in that state.
    fn write_was_noop(&self, _status: u16, _body: &[u8]) -> bool {
        false
    }
}

/// `info` → success, `error` → failure; Progressing (when posted) wins over the severity.
fn state_for(kind: ForgeKind, severity: &str, progressing: bool) -> Result<State, PlanError> {
    match (progressing, severity) {
        (true, _) => Ok(State::InProgress),
        (false, "info") => Ok(State::Success),
        (false, "error") => Ok(State::Failure),
        (false, other) => Err(PlanError::UnsupportedSeverity {
            forge: kind,
            severity: other.to_owned(),
        }),
    }
}

/// The header value and, for `Basic`/`Bearer`, the credential part alone.
pub(crate) fn header_secrets(value: &crate::Secret) -> Vec<String> {
    let value = value.expose();
    let mut out = vec![value.to_owned()];
    if let Some((_, credential)) = value.split_once(' ') {
        out.push(credential.to_owned());
    }
    out
}

/// `Basic base64(user:password)`.
pub(crate) fn basic_auth(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// Refuses a credential that cannot travel in a header, at load time rather than per event.
pub(crate) fn header_safe(value: String) -> Result<crate::Secret, ConfigError> {
    http::HeaderValue::from_str(&value).map_err(|_| ConfigError::CredentialsNotHeaderSafe)?;
    Ok(crate::Secret::new(value))
}

/// Forges reached through their repository address need an HTTP base URL; Flux would accept
/// `git://` or a local path and fail on every event instead.
pub(crate) fn require_http(address: &GitAddress) -> Result<(), ConfigError> {
    match address.scheme.as_str() {
        "http" | "https" if !address.authority.is_empty() => Ok(()),
        other => Err(ConfigError::AddressScheme {
            scheme: other.to_owned(),
        }),
    }
}

/// Lower-case hex SHA-1 (Bitbucket keys).
pub(crate) fn sha1_hex(s: &str) -> String {
    hex::encode(Sha1::digest(s.as_bytes()))
}

// === impl Forge ===

/// A ready-to-use commit-status client for one Provider. Cheap to clone.
#[derive(Clone)]
pub struct Forge {
    inner: Arc<Inner>,
}

struct Inner {
    protocol: Box<dyn Protocol>,
    client: reqwest::Client,
    timeout: Duration,
    /// Credential values scrubbed from error texts.
    secrets: Vec<String>,
}

impl fmt::Debug for Forge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forge")
            .field("protocol", &self.inner.protocol)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl Forge {
    /// Parse address + credentials + network into a ready forge. Error Display strings = Flux's
    /// constructor errors.
    pub fn new(config: ForgeConfig, clients: &ClientCache) -> Result<Forge, ConfigError> {
        Self::new_with_env(config, clients, |name| std::env::var(name).ok())
    }

    /// [`Forge::new`] with an explicit environment lookup (`BITBUCKET_API_BASE_URL`), so tests
    /// can point a forge at a stub without touching the process environment.
    pub fn new_with_env(
        config: ForgeConfig,
        clients: &ClientCache,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Forge, ConfigError> {
        let ForgeConfig {
            kind,
            address,
            credentials,
            network,
        } = config;
        let protocol: Box<dyn Protocol> = match kind {
            ForgeKind::GitHub => Box::new(github::GitHub::new(&address, &credentials)?),
            ForgeKind::GitLab => Box::new(gitlab::GitLab::new(&address, &credentials)?),
            ForgeKind::Bitbucket => {
                let api = env(bitbucket::API_BASE_ENV).filter(|v| !v.trim().is_empty());
                Box::new(bitbucket::Bitbucket::new(&address, &credentials, api)?)
            }
            ForgeKind::AzureDevOps => {
                Box::new(azure_devops::AzureDevOps::new(&address, &credentials)?)
            }
            ForgeKind::Gitea | ForgeKind::BitbucketServer => {
                return Err(ConfigError::Unsupported(kind));
            }
        };
        let client = clients.client(&network)?;
        let mut secrets = credentials.values();
        secrets.extend(protocol.secret_values());
        Ok(Forge {
            inner: Arc::new(Inner {
                protocol,
                client,
                timeout: network.timeout,
                secrets,
            }),
        })
    }

    /// A short, stable fingerprint of the credentials (never the credentials themselves), so
    /// deliveries sharing a rate-limit budget can be grouped.
    pub fn credential_fingerprint(&self) -> String {
        use sha1::{Digest, Sha1};
        let mut h = Sha1::new();
        for s in &self.inner.secrets {
            h.update(s.as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..8])
    }

    /// The forge kind.
    pub fn kind(&self) -> ForgeKind {
        self.inner.protocol.kind()
    }

    /// Pure. `Ok(None)` = nothing to send (Progressing event with [`ProgressingMode::Skip`]).
    pub fn plan(
        &self,
        ev: &StatusEvent<'_>,
        progressing: ProgressingMode,
    ) -> Result<Option<Plan>, PlanError> {
        let protocol = &self.inner.protocol;
        // Flux rejects an empty ID when building the notifier, before looking at the event.
        if ev.status_id.is_empty() {
            return Err(PlanError::EmptyStatusId);
        }
        let is_progressing = ev.reason == "Progressing";
        if is_progressing && progressing == ProgressingMode::Skip {
            return Ok(None);
        }
        let sha = revision::from_metadata(ev.metadata)?;
        let state = protocol.state_name(state_for(protocol.kind(), ev.severity, is_progressing)?);
        let description = describe::description(ev.reason);
        let wanted = protocol.wanted(ev, sha, state, description)?;
        Ok(Some(Plan {
            sha: wanted.sha.clone(),
            state: wanted.state.to_owned(),
            description: wanted.description.clone(),
            status_id: ev.status_id.to_owned(),
            read: Some(protocol.read_request(&wanted)),
            write: protocol.write_request(ev, &wanted),
            wanted,
        }))
    }

    /// The only I/O: read existing (dedup per forge), then write unless duplicate. Each HTTP
    /// request is bounded by `network.timeout`.
    pub async fn execute(&self, plan: &Plan) -> Result<Outcome, DeliveryError> {
        let protocol = &self.inner.protocol;
        if let Some(read) = &plan.read {
            let context = Some(protocol.read_context());
            let answer = self.send(read, context).await?;
            let absent = answer.status == 404 && protocol.absent_on_not_found();
            if !absent {
                if !protocol.accepts(answer.status) {
                    return Err(self.refused(read, context, &answer));
                }
                match protocol.is_duplicate(&plan.wanted, &answer.body) {
                    Ok(true) => {
                        tracing::debug!(forge = %self.kind(), sha = %plan.sha, "commit status already set");
                        return Ok(Outcome::AlreadySet);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        let failure = Failure::Decode {
                            message: e.to_string(),
                        };
                        return Err(self.error(read, context, failure));
                    }
                }
            }
        }
        let write = &plan.write;
        let context = protocol.write_context();
        let answer = self.send(write, context).await?;
        if protocol.accepts(answer.status) {
            tracing::debug!(forge = %self.kind(), sha = %plan.sha, state = %plan.state, "commit status posted");
            return Ok(Outcome::Posted);
        }
        if protocol.write_was_noop(answer.status, &answer.body) {
            return Ok(Outcome::AlreadySet);
        }
        Err(self.refused(write, context, &answer))
    }

    async fn send(
        &self,
        request: &ForgeRequest,
        context: Option<&'static str>,
    ) -> Result<transport::Response, DeliveryError> {
        tracing::trace!(forge = %self.kind(), method = %request.method, url = %request.url, "sending");
        transport::send(&self.inner.client, request, self.inner.timeout)
            .await
            .map_err(|e| {
                let failure = match e {
                    SendError::Timeout => Failure::Timeout {
                        after: self.inner.timeout,
                    },
                    SendError::Transport { message, retry } => {
                        Failure::Transport { message, retry }
                    }
                };
                self.error(request, context, failure)
            })
    }

    fn refused(
        &self,
        request: &ForgeRequest,
        context: Option<&'static str>,
        answer: &transport::Response,
    ) -> DeliveryError {
        let retry: Retry = classify(
            self.kind(),
            answer.status,
            &answer.headers,
            &answer.body,
            SystemTime::now(),
        );
        let message = forge_message(answer.status, &answer.body);
        self.error(
            request,
            context,
            Failure::Status {
                status: answer.status,
                message,
                retry,
            },
        )
    }

    fn error(
        &self,
        request: &ForgeRequest,
        context: Option<&'static str>,
        failure: Failure,
    ) -> DeliveryError {
        DeliveryError::new(
            self.kind(),
            context,
            request.method.clone(),
            request.url.clone(),
            failure,
        )
        .scrub(&self.inner.secrets)
    }
}

#[cfg(test)]
mod tests;
