//! The commit-status flow, written once: event → [`Plan`] (pure) → [`Forge::execute`] (the only
//! I/O). Each forge module supplies only what differs, through the private [`Protocol`] trait:
//! its address rules, state names, the read request and how to spot a duplicate in its answer,
//! and the write request. Adding a forge is one file plus one arm in [`Forge::new_with_env`].
//!
//! GitHub App authentication and Azure workload identity are the exceptions to "requests are
//! complete at plan time": the exchanged token is only known at execution, so
//! [`Forge::execute`] adds it (see [`github_app`], [`azure_identity`]; both exchanges are
//! sans-I/O too, and `exchanged` sends them).

mod azure_devops;
pub mod azure_identity;
mod bitbucket;
mod bitbucket_server;
mod encode;
mod exchanged;
mod gitea;
mod github;
pub(crate) mod github_app;
mod gitlab;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use sha1::{Digest as _, Sha1};

use crate::error::{Failure, classify, forge_message};
use crate::exchange::{Exchange, MAX_VALIDATED_BYTES, RateLimit, Validator};
use crate::request::Response;
use crate::transport::{self, NetworkConfig};
use crate::{
    ClientCache, ConfigError, Credentials, DeliveryError, ForgeRequest, PlanError, Retry, Secret,
    address::GitAddress, describe, revision,
};
use azure_identity::AzureAuth;
use github_app::AppAuth;

/// The Git forges Flux can post commit statuses to (Provider `spec.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
    /// Send nothing (Flux's behaviour for every forge but Gitea). Gitea is skipped too: Flux
    /// posts `pending` there, but one switch for all forges is easier to reason about.
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
    /// Link shown on the status (evaluated by the controller). `None` or blank: the forge's
    /// Flux default (none, `""` on Gitea, `https://bitbucket.org`, the Provider address on
    /// Bitbucket Server), and a body byte-identical to Flux's.
    pub target_url: Option<&'a str>,
    /// Description replacing the one derived from the reason (evaluated by the controller),
    /// still cut to the forge's limit. `None` or empty: the reason-derived one.
    pub description: Option<&'a str>,
    /// `status_id` is the result of the Provider's `spec.commitStatusExpr`: Bitbucket (Cloud
    /// and Server) then shows it as the status name instead of `kind/name` (issue 11,
    /// fluxcd/notification-controller#1268).
    pub status_id_from_expr: bool,
}

/// Metadata of a defaulted [`StatusEvent`].
static NO_METADATA: BTreeMap<String, String> = BTreeMap::new();

impl Default for StatusEvent<'_> {
    /// Every text empty and no metadata, for `..StatusEvent::default()` in struct literals.
    fn default() -> Self {
        Self {
            status_id: "",
            kind: "",
            name: "",
            reason: "",
            severity: "",
            metadata: &NO_METADATA,
            target_url: None,
            description: None,
            status_id_from_expr: false,
        }
    }
}

impl<'a> StatusEvent<'a> {
    /// The target URL, if one is set and not blank.
    pub(crate) fn link(&self) -> Option<&'a str> {
        self.target_url.map(str::trim).filter(|u| !u.is_empty())
    }
}

/// Result of a successful [`Forge::execute`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The status was written.
    Posted,
    /// The forge already shows exactly this status; nothing was written.
    AlreadySet,
    /// The write was refused because the status already is in that state (GitLab's HTTP 400
    /// "Cannot transition status via … from …"): nothing changed, and nothing needs to.
    AlreadyInState,
}

/// A planned status, complete and free of credentials: what [`Forge::requests`] builds the
/// exchange from at send time, with the credentials current then. Planning ([`Forge::plan`])
/// happens once; a status kept (stored, retried) keeps this.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// The forge it was planned for; another kind cannot send it.
    pub forge: ForgeKind,
    /// The commit status ID of the event.
    pub status_id: String,
    pub sha: String,
    /// In the forge's words.
    pub state: String,
    /// As sent (after the forge's length limit).
    pub description: String,
    /// The forge's identifier for the status: GitHub/Azure context name, GitLab name,
    /// Bitbucket key.
    pub context: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genre: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The link, already checked against the forge's rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
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
    forge: ForgeKind,
    wanted: Wanted,
}

impl Plan {
    /// The planned status, to keep and build this plan's requests from again
    /// ([`Forge::requests`]).
    pub fn status(&self) -> Status {
        let w = &self.wanted;
        Status {
            forge: self.forge,
            status_id: self.status_id.clone(),
            sha: w.sha.clone(),
            state: w.state.to_owned(),
            description: w.description.clone(),
            context: w.context.clone(),
            genre: w.genre.clone(),
            name: w.name.clone(),
            target_url: w.target_url.clone(),
        }
    }

    /// The plan without its duplicate-check read: the write alone, for forges where writing
    /// a state they already show does no harm (see the README, "One request per status").
    pub fn without_read(mut self) -> Self {
        self.read = None;
        self
    }

    /// A stable fingerprint of what would be written (URL + body), for the controller's "last
    /// posted" memory.
    pub fn fingerprint(&self) -> String {
        self.fingerprint_without("")
    }

    /// The fingerprint with every occurrence of `volatile` left out of the body: for a part
    /// that differs between deliveries of the same state (the controller's link to its own
    /// delivery page names the delivery), so that a repeat is still recognised.
    pub fn fingerprint_without(&self, volatile: &str) -> String {
        let body = self.write.body.as_deref().unwrap_or_default();
        let mut hasher = Sha1::new();
        hasher.update(self.write.method.as_str());
        hasher.update(b" ");
        hasher.update(self.write.url.as_bytes());
        hasher.update(b"\n");
        if volatile.is_empty() {
            hasher.update(body);
        } else {
            let needle = volatile.as_bytes();
            let mut rest = body;
            while let Some(i) = rest.windows(needle.len()).position(|w| w == needle) {
                hasher.update(&rest[..i]);
                rest = &rest[i + needle.len()..];
            }
            hasher.update(rest);
        }
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
    /// The status name of the Bitbucket forges (Bitbucket Server's duplicate rule compares
    /// it).
    pub name: Option<String>,
    /// The link the status carries, already checked against the forge's rules.
    pub target_url: Option<String>,
}

/// GitHub's duplicate rule, which Flux applies to Gitea and Azure DevOps too: among complete
/// entries `(is ours, state, description)`, in the forge's order (newest first), the first one
/// that is ours decides, and it is a duplicate iff its state and description are the wanted ones.
pub(crate) fn first_ours_is_same<'a>(
    complete: impl IntoIterator<Item = (bool, &'a str, &'a str)>,
    wanted: &Wanted,
) -> bool {
    complete
        .into_iter()
        .find(|(ours, _, _)| *ours)
        .is_some_and(|(_, state, description)| {
            state == wanted.state && description == wanted.description
        })
}

/// Which of the two exchanges failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Read,
    Write,
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
    fn write_request(&self, wanted: &Wanted) -> ForgeRequest;

    /// Credential values as they appear on the wire, to scrub from error texts.
    fn secret_values(&self) -> Vec<String>;

    /// Flux's prefix for a failed read.
    fn read_context(&self) -> &'static str;

    /// Flux's prefix for a failed write, if Flux adds one.
    fn write_context(&self) -> Option<&'static str>;

    /// Whether this answer to the read means "no status yet" (rather than an error, or a
    /// body to inspect).
    fn absent(&self, _status: u16) -> bool {
        false
    }

    /// The whole error message in Flux's wording, when this forge's notifier words it
    /// differently from the shared `<context>: <METHOD> <url>: <status> <message>`.
    fn failure_text(
        &self,
        _phase: Phase,
        _request: &ForgeRequest,
        _failure: &Failure,
    ) -> Option<String> {
        None
    }

    /// A plan error as this forge's Flux notifier reports it (some add a prefix).
    fn plan_error(&self, error: PlanError) -> PlanError {
        error
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

/// Checks a target URL against a forge's rules: an absolute http(s) URL when `absolute`, and
/// at most `max` characters.
pub(crate) fn checked_target_url(
    forge: ForgeKind,
    url: &str,
    absolute: bool,
    max: Option<usize>,
) -> Result<String, PlanError> {
    let refuse = |reason: String| PlanError::TargetUrl { forge, reason };
    if let Some(max) = max {
        let len = url.chars().count();
        if len > max {
            return Err(refuse(format!(
                "it is {len} characters long, at most {max} are allowed"
            )));
        }
    }
    if absolute {
        let ok = url::Url::parse(url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
        if !ok {
            return Err(refuse(format!("{url:?} is not an absolute http(s) URL")));
        }
    }
    Ok(url.to_owned())
}

// === impl Forge ===

/// Everything needed to build a [`Forge`].
#[derive(Clone, Debug)]
pub struct ForgeConfig {
    /// Provider type.
    pub kind: ForgeKind,
    /// Repository address (Provider `spec.address` or secret `address`).
    pub address: String,
    /// Credentials from the Provider's secret.
    pub credentials: Credentials,
    /// Timeout, proxy and TLS.
    pub network: NetworkConfig,
}

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
    /// GitHub App: the `Authorization` header is added at execution, with an installation
    /// token from the shared cache.
    app: Option<AppAuth>,
    /// Azure DevOps workload identity: likewise, with an Entra access token.
    azure: Option<AzureAuth>,
    /// The rate-limit budget left, as the forge last reported it (`-1`: never reported).
    remaining: std::sync::atomic::AtomicI64,
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
        let mut app = None;
        let mut azure = None;
        let protocol: Box<dyn Protocol> = match kind {
            ForgeKind::GitHub => {
                let (github, app_auth) =
                    github::GitHub::new(&address, &credentials, clients.app_tokens())?;
                app = app_auth;
                Box::new(github)
            }
            ForgeKind::GitLab => Box::new(gitlab::GitLab::new(&address, &credentials)?),
            ForgeKind::Gitea => Box::new(gitea::Gitea::new(&address, &credentials)?),
            ForgeKind::Bitbucket => {
                let api = env(bitbucket::API_BASE_ENV).filter(|v| !v.trim().is_empty());
                Box::new(bitbucket::Bitbucket::new(&address, &credentials, api)?)
            }
            ForgeKind::BitbucketServer => Box::new(bitbucket_server::BitbucketServer::new(
                &address,
                &credentials,
            )?),
            ForgeKind::AzureDevOps => {
                // Without a token, Flux falls back to workload identity.
                if credentials.token().is_none()
                    && let Some(wi) = clients.workload_identity()
                {
                    let namespace = credentials
                        .provider
                        .as_ref()
                        .map_or("", |p| p.namespace.as_str());
                    let source = wi
                        .source(namespace, credentials.service_account_name.as_deref())
                        .map_err(ConfigError::AzureWorkloadIdentity)?;
                    azure = Some(AzureAuth::new(
                        source,
                        env(azure_identity::AUTHORITY_HOST_ENV),
                        &network,
                        clients.app_tokens(),
                        credentials.provider.as_ref(),
                    ));
                }
                Box::new(azure_devops::AzureDevOps::new(
                    &address,
                    &credentials,
                    azure.is_some(),
                )?)
            }
        };
        let client = clients.client(&network)?;
        let mut secrets = credentials.values();
        secrets.extend(protocol.secret_values());
        if let Some(app) = &app {
            // Not a credential, but it tells Apps apart in `credential_fingerprint`.
            secrets.push(app.fingerprint.clone());
        }
        if let Some(azure) = &azure {
            secrets.push(azure.fingerprint());
        }
        Ok(Forge {
            inner: Arc::new(Inner {
                protocol,
                client,
                timeout: network.timeout,
                secrets,
                app,
                azure,
                remaining: std::sync::atomic::AtomicI64::new(-1),
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

    /// The rate-limit budget left on this forge's credential, as the forge last reported it
    /// in a response header; `None` until it has.
    pub fn rate_limit_remaining(&self) -> Option<u64> {
        u64::try_from(
            self.inner
                .remaining
                .load(std::sync::atomic::Ordering::Relaxed),
        )
        .ok()
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
        let sha = revision::from_metadata(ev.metadata).map_err(|e| protocol.plan_error(e))?;
        let state = protocol.state_name(state_for(protocol.kind(), ev.severity, is_progressing)?);
        let description = match ev.description.filter(|d| !d.is_empty()) {
            Some(custom) => custom.to_owned(),
            None => describe::description(ev.reason),
        };
        let wanted = protocol.wanted(ev, sha, state, description)?;
        Ok(Some(self.exchange_for(ev.status_id, wanted)))
    }

    /// The exchange of a status planned earlier ([`Plan::status`]), with this forge's current
    /// address and credentials. Pure; nothing is planned again.
    pub fn requests(&self, status: &Status) -> Result<Plan, PlanError> {
        let protocol = &self.inner.protocol;
        let refuse = |reason: String| PlanError::NotBuildable {
            planned: status.forge,
            forge: protocol.kind(),
            reason,
        };
        if status.forge != protocol.kind() {
            return Err(refuse("the provider's type changed".to_owned()));
        }
        let state = [State::Success, State::Failure, State::InProgress]
            .into_iter()
            .map(|s| protocol.state_name(s))
            .find(|name| *name == status.state)
            .ok_or_else(|| refuse(format!("unknown state {:?}", status.state)))?;
        let wanted = Wanted {
            sha: status.sha.clone(),
            state,
            description: status.description.clone(),
            context: status.context.clone(),
            genre: status.genre.clone(),
            name: status.name.clone(),
            target_url: status.target_url.clone(),
        };
        Ok(self.exchange_for(&status.status_id, wanted))
    }

    fn exchange_for(&self, status_id: &str, wanted: Wanted) -> Plan {
        let protocol = &self.inner.protocol;
        Plan {
            sha: wanted.sha.clone(),
            state: wanted.state.to_owned(),
            description: wanted.description.clone(),
            status_id: status_id.to_owned(),
            read: Some(protocol.read_request(&wanted)),
            write: protocol.write_request(&wanted),
            forge: protocol.kind(),
            wanted,
        }
    }

    /// The only I/O: read existing (dedup per forge), then write unless duplicate. Each HTTP
    /// request is bounded by `network.timeout`.
    pub async fn execute(&self, plan: &Plan) -> Result<Outcome, DeliveryError> {
        self.execute_with(plan, None).await.0
    }

    /// [`Forge::execute`], reporting what it cost and learnt ([`Exchange`]). With `validated`
    /// (kept from an earlier read of the same URL), the read is conditional (`If-None-Match`)
    /// and a `304 Not Modified` answer is taken to mean the kept answer still holds.
    pub async fn execute_with(
        &self,
        plan: &Plan,
        validated: Option<&Validator>,
    ) -> (Result<Outcome, DeliveryError>, Exchange) {
        let mut exchange = Exchange::default();
        let result = self.exchange(plan, validated, &mut exchange).await;
        (result, exchange)
    }

    async fn exchange(
        &self,
        plan: &Plan,
        validated: Option<&Validator>,
        exchange: &mut Exchange,
    ) -> Result<Outcome, DeliveryError> {
        let protocol = &self.inner.protocol;
        // One installation token for both requests, even one too close to expiry to cache.
        let mut token = None;
        if let Some(read) = &plan.read {
            let validated = validated.filter(|v| v.url == read.url);
            let conditional;
            let request = match validated {
                Some(v) => {
                    conditional = read.clone().header("If-None-Match", &v.etag);
                    &conditional
                }
                None => read,
            };
            let answer = self
                .send(request, Phase::Read, &mut token, exchange)
                .await?;
            let body = match validated {
                Some(v) if answer.status == 304 => {
                    exchange.not_modified = true;
                    Some(v.body.as_slice())
                }
                _ if protocol.absent(answer.status) => None,
                _ if protocol.accepts(answer.status) => {
                    exchange.validator = validator(read, &answer);
                    Some(answer.body.as_slice())
                }
                _ => return Err(self.refused(read, Phase::Read, &answer)),
            };
            if let Some(body) = body {
                match protocol.is_duplicate(&plan.wanted, body) {
                    Ok(true) => {
                        tracing::debug!(forge = %self.kind(), sha = %plan.sha, not_modified = exchange.not_modified, "commit status already set");
                        return Ok(Outcome::AlreadySet);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        let failure = Failure::Decode {
                            message: decode_message(&e),
                        };
                        return Err(self.error(read, Phase::Read, failure));
                    }
                }
            }
        }
        let write = &plan.write;
        let answer = self.send(write, Phase::Write, &mut token, exchange).await?;
        if protocol.accepts(answer.status) {
            tracing::debug!(forge = %self.kind(), sha = %plan.sha, state = %plan.state, "commit status posted");
            return Ok(Outcome::Posted);
        }
        if protocol.write_was_noop(answer.status, &answer.body) {
            tracing::debug!(forge = %self.kind(), sha = %plan.sha, state = %plan.state, "commit status already in this state");
            return Ok(Outcome::AlreadyInState);
        }
        Err(self.refused(write, Phase::Write, &answer))
    }

    /// Sends one request; with a GitHub App, authenticated with an installation token, and
    /// once more with a fresh token if the forge refuses the cached one (revoked, or the App's
    /// permissions changed).
    async fn send(
        &self,
        request: &ForgeRequest,
        phase: Phase,
        token: &mut Option<Secret>,
        exchange: &mut Exchange,
    ) -> Result<Response, DeliveryError> {
        if self.inner.app.is_none() && self.inner.azure.is_none() {
            return self.send_as(request, phase, None, exchange).await;
        }
        let current = match token.take() {
            Some(current) => current,
            None => self.exchanged_token(None).await?,
        };
        let answer = self
            .send_as(request, phase, Some(&current), exchange)
            .await?;
        if answer.status != 401 {
            *token = Some(current);
            return Ok(answer);
        }
        tracing::debug!(forge = %self.kind(), "exchanged token refused, getting a new one");
        let fresh = self.exchanged_token(Some(&current)).await?;
        let answer = self.send_as(request, phase, Some(&fresh), exchange).await;
        *token = Some(fresh);
        answer
    }

    /// A GitHub App installation token or an Azure workload-identity access token: the cached
    /// one while fresh and not `stale` (the one the forge just refused), else a new exchange.
    async fn exchanged_token(&self, stale: Option<&Secret>) -> Result<Secret, DeliveryError> {
        let (client, timeout) = (&self.inner.client, self.inner.timeout);
        match (&self.inner.app, &self.inner.azure) {
            (Some(app), _) => {
                app.slot
                    .get_or_fetch(stale, || exchanged::run(app.exchange(), client, timeout))
                    .await
            }
            (None, Some(azure)) => {
                azure
                    .slot
                    .get_or_fetch(stale, || async {
                        let identity = azure.identity().await?;
                        exchanged::run(azure.exchange(identity), client, timeout).await
                    })
                    .await
            }
            (None, None) => Err(DeliveryError::new(
                self.kind(),
                None,
                http::Method::POST,
                String::new(),
                Failure::Transport {
                    message: "no token source".to_owned(),
                    retry: Retry::No,
                },
            )),
        }
    }

    /// How an exchanged token travels: GitHub wants Bearer; Flux sends the Entra token to
    /// Azure DevOps the way its SDK sends a PAT (Basic, empty user).
    fn authorization(&self, token: &Secret) -> String {
        if self.inner.azure.is_some() {
            basic_auth("", token.expose())
        } else {
            format!("Bearer {}", token.expose())
        }
    }

    async fn send_as(
        &self,
        request: &ForgeRequest,
        phase: Phase,
        token: Option<&Secret>,
        exchange: &mut Exchange,
    ) -> Result<Response, DeliveryError> {
        tracing::trace!(forge = %self.kind(), method = %request.method, url = %request.url, "sending");
        let authorized;
        let request = match token {
            Some(token) => {
                let mut with_token = request.clone();
                with_token
                    .headers
                    .insert(0, ("Authorization".to_owned(), self.authorization(token)));
                authorized = with_token;
                &authorized
            }
            None => request,
        };
        match phase {
            Phase::Read => exchange.reads += 1,
            Phase::Write => exchange.writes += 1,
        }
        let answer = transport::send(&self.inner.client, request, self.inner.timeout).await;
        if let Ok(a) = &answer
            && let Some(rate) = RateLimit::from_headers(&a.headers, SystemTime::now())
        {
            if let Some(left) = rate.remaining {
                self.inner.remaining.store(
                    i64::try_from(left).unwrap_or(i64::MAX),
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            exchange.rate_limit = Some(rate);
        }
        answer.map_err(|e| self.error(request, phase, e.failure(self.inner.timeout)))
    }

    fn refused(&self, request: &ForgeRequest, phase: Phase, answer: &Response) -> DeliveryError {
        let class = classify(
            self.kind(),
            answer.status,
            &answer.headers,
            &answer.body,
            SystemTime::now(),
        );
        let mut message = forge_message(answer.status, &answer.body);
        if matches!(answer.status, 301 | 302 | 303 | 307 | 308) {
            message = redirect_refused(message, request, answer);
        }
        self.error(
            request,
            phase,
            Failure::Status {
                status: answer.status,
                message,
                class,
            },
        )
    }

    fn error(&self, request: &ForgeRequest, phase: Phase, failure: Failure) -> DeliveryError {
        let protocol = &self.inner.protocol;
        let context = match phase {
            Phase::Read => Some(protocol.read_context()),
            Phase::Write => protocol.write_context(),
        };
        let text = protocol.failure_text(phase, request, &failure);
        let mut secrets = self.inner.secrets.clone();
        // An installation token is not known at construction; scrub the one this request
        // carried.
        if (self.inner.app.is_some() || self.inner.azure.is_some())
            && let Some(header) = request.header_value("authorization")
        {
            secrets.push(header.to_owned());
            if let Some((_, token)) = header.split_once(' ') {
                secrets.push(token.to_owned());
            }
        }
        DeliveryError::new(
            self.kind(),
            context,
            request.method.clone(),
            request.url.clone(),
            failure,
        )
        .with_text(text)
        .scrub(&secrets)
    }
}

/// The answer's `ETag`, kept with the answer it validates (unless that is too large to keep).
fn validator(read: &ForgeRequest, answer: &Response) -> Option<Validator> {
    let etag = answer
        .headers
        .get(http::header::ETAG)?
        .to_str()
        .ok()?
        .trim();
    if etag.is_empty() || answer.body.len() > MAX_VALIDATED_BYTES {
        return None;
    }
    Some(Validator {
        url: read.url.clone(),
        etag: etag.to_owned(),
        body: answer.body.clone(),
    })
}

/// A 3xx answer the transport did not follow, said as such: where it pointed (without user
/// info or query) and why it was not followed.
fn redirect_refused(message: String, request: &ForgeRequest, answer: &Response) -> String {
    let target = answer
        .headers
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| url::Url::parse(&request.url).ok()?.join(l).ok())
        .map_or_else(
            || "no usable Location".to_owned(),
            |u| crate::address::redacted(u.as_str()),
        );
    let why = if request.method == http::Method::GET {
        "only redirects to HTTPS on the same origin are followed"
    } else {
        "a write never follows a redirect"
    };
    format!("{message}: redirect to {target} not followed ({why})")
}

/// serde's wording, except for an empty or cut-off body, which reads as Go's (Flux's error
/// texts quote `encoding/json`).
fn decode_message(e: &serde_json::Error) -> String {
    if e.is_eof() {
        "unexpected end of JSON input".to_owned()
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod status_tests;
#[cfg(test)]
mod tests;
