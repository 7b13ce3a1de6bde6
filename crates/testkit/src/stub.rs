//! A stateful, contract-validating stand-in for one forge's commit-status API, served over real
//! HTTP/1.1 (optionally HTTPS/mTLS) on 127.0.0.1, with scripted faults for retry tests.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use regex::Regex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::contract::{Contract, OperationMatch, RecordedRequest};
use crate::github_app::{AppApi, AppCall, is_app_path};
use crate::pki::ServerTls;

/// The forges the stub can impersonate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ForgeKind {
    GitHub,
    GitLab,
    BitbucketCloud,
    BitbucketServer,
    AzureDevOps,
    Gitea,
    Forgejo,
}

impl ForgeKind {
    pub const ALL: [ForgeKind; 7] = [
        ForgeKind::GitHub,
        ForgeKind::GitLab,
        ForgeKind::BitbucketCloud,
        ForgeKind::BitbucketServer,
        ForgeKind::AzureDevOps,
        ForgeKind::Gitea,
        ForgeKind::Forgejo,
    ];

    /// Name of the contract file describing this forge.
    pub fn contract_name(self) -> &'static str {
        match self {
            ForgeKind::GitHub => "github",
            ForgeKind::GitLab => "gitlab",
            ForgeKind::BitbucketCloud => "bitbucket-cloud",
            ForgeKind::BitbucketServer => "bitbucket-server",
            ForgeKind::AzureDevOps => "azure-devops",
            ForgeKind::Gitea => "gitea",
            ForgeKind::Forgejo => "forgejo",
        }
    }
}

/// Start-up options of a [`StubForge`].
#[derive(Clone, Debug, Default)]
pub struct StubOptions {
    /// Serve HTTPS with this configuration (which may require client certificates).
    pub tls: Option<ServerTls>,
    /// Version reported by Gitea/Forgejo's `GET /api/v1/version`. Defaults to `1.22.0` for
    /// Gitea and `11.0.3+gitea-1.22.0` for Forgejo (what Forgejo really reports).
    pub version: Option<String>,
}

/// Selects requests for a scripted response: method (or any) plus a regex on the raw path
/// (without the query string).
#[derive(Clone, Debug)]
pub struct Matcher {
    method: Option<String>,
    path: Regex,
}

impl Matcher {
    /// Panics on an invalid regex (a bug in the test).
    pub fn new(method: &str, path_regex: &str) -> Self {
        Self {
            method: Some(method.to_ascii_uppercase()),
            path: Regex::new(path_regex).expect("valid path regex"),
        }
    }

    pub fn any_method(path_regex: &str) -> Self {
        Self {
            method: None,
            path: Regex::new(path_regex).expect("valid path regex"),
        }
    }

    pub fn get(path_regex: &str) -> Self {
        Self::new("GET", path_regex)
    }

    pub fn post(path_regex: &str) -> Self {
        Self::new("POST", path_regex)
    }

    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.path.is_match(path)
    }
}

/// A canned answer, consumed once by the first request its [`Matcher`] accepts.
#[derive(Clone, Debug, Default)]
pub struct ScriptedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Waited before answering (on top of [`StubForge::set_delay`]).
    pub delay: Duration,
    /// Close the connection without any response (after `delay`), like a crashed upstream.
    pub disconnect: bool,
}

impl ScriptedResponse {
    /// Empty body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }

    pub fn json(status: u16, body: &Value) -> Self {
        Self::status(status)
            .with_header("content-type", "application/json; charset=utf-8")
            .with_body(serde_json::to_vec(body).expect("serialisable JSON"))
    }

    pub fn text(status: u16, body: &str) -> Self {
        Self::status(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.as_bytes().to_vec())
    }

    pub fn disconnect() -> Self {
        Self {
            disconnect: true,
            ..Self::default()
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// What the stub answers.
#[derive(Clone, Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, body: &Value) -> Self {
        Self {
            status,
            headers: vec![(
                "content-type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body: serde_json::to_vec(body).expect("serialisable JSON"),
        }
    }

    fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

type Key = (String, String);

#[derive(Default)]
struct State {
    requests: Vec<RecordedRequest>,
    scripted: VecDeque<(Matcher, ScriptedResponse)>,
    delay: Duration,
    required_auth: Option<String>,
    /// Accepted create/update bodies per (repo, sha), in arrival order.
    posted: HashMap<Key, Vec<Value>>,
    /// The forge's stored entities per (repo, sha), oldest first.
    stored: HashMap<Key, Vec<Value>>,
    next_id: u64,
    /// When each recorded request arrived (same order as `requests`).
    arrivals: Vec<SystemTime>,
    /// A rate-limit budget kept like the forge's, once a test sets one.
    rate: Option<RateBudget>,
    /// GitHub's App API, once a test serves it (see [`StubForge::serve_github_app`]).
    app: Option<AppApi>,
}

/// A fixed-window rate-limit budget (GitHub's, Gitea's, GitLab's model).
#[derive(Clone, Copy, Debug)]
struct RateBudget {
    limit: u64,
    remaining: u64,
    /// Epoch seconds.
    reset_at: u64,
    window_secs: u64,
}

impl RateBudget {
    fn roll(&mut self, now: u64) {
        if now >= self.reset_at {
            self.remaining = self.limit;
            self.reset_at = now + self.window_secs;
        }
    }
}

impl State {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

struct Inner {
    kind: ForgeKind,
    contract: Contract,
    base_url: String,
    version: String,
    state: Mutex<State>,
    notify: Notify,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the recorded requests from the next assertion.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running forge stub. Dropping it stops the server and closes its connections.
pub struct StubForge {
    inner: Arc<Inner>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for StubForge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for StubForge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StubForge")
            .field("kind", &self.inner.kind)
            .field("base_url", &self.inner.base_url)
            .finish_non_exhaustive()
    }
}

impl StubForge {
    /// Binds 127.0.0.1:0 and starts serving. Must be called inside a tokio runtime.
    pub async fn start(kind: ForgeKind, opts: StubOptions) -> StubForge {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let version = opts.version.clone().unwrap_or_else(|| match kind {
            ForgeKind::Forgejo => "11.0.3+gitea-1.22.0".to_string(),
            _ => "1.22.0".to_string(),
        });
        let inner = Arc::new(Inner {
            kind,
            contract: Contract::load(kind.contract_name()),
            base_url: format!("{scheme}://{addr}"),
            version,
            state: Mutex::new(State::default()),
            notify: Notify::new(),
        });
        let acceptor = opts
            .tls
            .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
        let task = tokio::spawn(accept_loop(listener, acceptor, inner.clone()));
        StubForge { inner, addr, task }
    }

    pub fn kind(&self) -> ForgeKind {
        self.inner.kind
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http(s)://127.0.0.1:<port>`, no trailing slash.
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    pub fn contract(&self) -> &Contract {
        &self.inner.contract
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.state().requests.clone()
    }

    /// Forgets the recorded requests (stored statuses and scripts stay).
    pub fn clear_requests(&self) {
        let mut st = self.inner.state();
        st.requests.clear();
        st.arrivals.clear();
    }

    /// Every request received so far with the time it arrived, in arrival order.
    pub fn requests_with_times(&self) -> Vec<(SystemTime, RecordedRequest)> {
        let st = self.inner.state();
        st.arrivals
            .iter()
            .copied()
            .zip(st.requests.iter().cloned())
            .collect()
    }

    /// Keeps a rate-limit budget like the forge does: `remaining` requests until `reset_in`
    /// from now, then `limit` per `window`. Each request spends one (except GitHub's 304
    /// answers, which GitHub does not count); answers carry the forge's rate-limit headers
    /// (GitHub, Gitea/Forgejo and Azure `X-RateLimit-*`, GitLab `RateLimit-*`, Bitbucket Cloud
    /// `X-RateLimit-Limit`/`-NearLimit`); a request beyond the budget gets the forge's
    /// rate-limit answer (GitHub 403, the others 429) and changes nothing.
    pub fn set_rate_limit(&self, limit: u64, remaining: u64, reset_in: Duration, window: Duration) {
        self.inner.state().rate = Some(RateBudget {
            limit,
            remaining,
            reset_at: unix_secs() + reset_in.as_secs(),
            window_secs: window.as_secs().max(1),
        });
    }

    /// All contract violations of all requests so far.
    pub fn violations(&self) -> Vec<String> {
        self.inner
            .state()
            .requests
            .iter()
            .flat_map(|r| r.violations.iter().cloned())
            .collect()
    }

    /// Waits until at least `n` requests were recorded. `Err` carries what arrived by the
    /// deadline.
    pub async fn wait_for(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<RecordedRequest>, Vec<RecordedRequest>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let requests = self.requests();
            if requests.len() >= n {
                return Ok(requests);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(self.requests());
            }
        }
    }

    /// The status bodies accepted for `repo` at `sha`, in the order they were posted. `repo` is
    /// `owner/repo` (GitHub, Gitea, Forgejo), the decoded project id or path (GitLab),
    /// `workspace/repo_slug` (Bitbucket Cloud), `PROJECTKEY/slug` (Bitbucket Server) or
    /// `organization/project/repository` (Azure DevOps; the organization may span segments).
    /// Matching ignores case, like the forges do.
    pub fn statuses(&self, repo: &str, sha: &str) -> Vec<Value> {
        self.inner
            .state()
            .posted
            .get(&key(repo, sha))
            .cloned()
            .unwrap_or_default()
    }

    /// The forge-side records for `repo` at `sha`, oldest first, in the forge's response shape.
    pub fn stored(&self, repo: &str, sha: &str) -> Vec<Value> {
        self.inner
            .state()
            .stored
            .get(&key(repo, sha))
            .cloned()
            .unwrap_or_default()
    }

    /// Stores a status as if a client had posted `body` (the forge's create-request shape),
    /// without recording a request. For "a status already exists" scenarios.
    pub fn insert_status(&self, repo: &str, sha: &str, body: Value) {
        let inner = &self.inner;
        let mut st = inner.state();
        create_status(inner, &mut st, repo, sha, "", &body);
    }

    /// Queues a scripted answer; queued answers are used first-in first-out before the
    /// stateful behaviour, each by the first request its matcher accepts.
    pub fn push_response(&self, matcher: Matcher, response: ScriptedResponse) {
        self.inner.state().scripted.push_back((matcher, response));
    }

    /// Drops every scripted answer not used yet: the forge is healthy again.
    pub fn clear_scripted(&self) {
        self.inner.state().scripted.clear();
    }

    /// Delays every answer by `delay` (scripted answers add their own delay on top).
    pub fn set_delay(&self, delay: Duration) {
        self.inner.state().delay = delay;
    }

    /// Requires this exact value in `Authorization` (or GitLab's `PRIVATE-TOKEN`); any other
    /// request is answered with the forge's 401.
    pub fn require_auth(&self, header_value: impl Into<String>) {
        self.inner.state().required_auth = Some(header_value.into());
    }
}

// === GitHub's App API ===

impl StubForge {
    /// Serves GitHub's App API for the App of [`APP_ID`](crate::github_app::APP_ID) (or [`APP_CLIENT_ID`](crate::github_app::APP_CLIENT_ID)) and
    /// [`APP_KEY`](crate::github_app::APP_KEY), beside the commit-status API: `orgs` and `users` map owner logins to
    /// installation IDs. Its calls bypass the contract check and the rate-limit budget, are
    /// recorded with the others and, in more detail, in [`StubForge::app_calls`]; scripted
    /// answers still come first. Call it again to start over.
    pub fn serve_github_app(&self, orgs: &[(&str, u64)], users: &[(&str, u64)]) {
        self.inner.state().app = Some(AppApi::new(orgs, users));
    }

    /// Every App API call so far.
    pub fn app_calls(&self) -> Vec<AppCall> {
        self.inner
            .state()
            .app
            .as_ref()
            .map(AppApi::calls)
            .unwrap_or_default()
    }

    /// Installation tokens handed out so far.
    pub fn tokens_issued(&self) -> u32 {
        self.inner.state().app.as_ref().map_or(0, AppApi::issued)
    }

    /// Lifetime of the installation tokens handed out from now on (one hour unless set).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        if let Some(app) = self.inner.state().app.as_mut() {
            app.set_token_lifetime(lifetime);
        }
    }
}

fn key(repo: &str, sha: &str) -> Key {
    (repo.to_lowercase(), sha.to_lowercase())
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    inner: Arc<Inner>,
) {
    // Owning the connection tasks here means aborting this task aborts them too.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(_) => continue,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let inner = inner.clone();
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| handle(inner.clone(), req));
            let builder = hyper::server::conn::http1::Builder::new();
            match acceptor {
                Some(acceptor) => {
                    // A failed handshake (untrusted client, missing client cert) just ends the
                    // connection, which is what the client under test must observe.
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                    }
                }
                None => {
                    let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                }
            }
        });
    }
}

async fn handle(
    inner: Arc<Inner>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let mut headers = std::collections::BTreeMap::<String, String>::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_ascii_lowercase())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let mut rec = RecordedRequest {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers,
        body,
        violations: Vec::new(),
    };

    let extra = extra_route(inner.kind, &rec).or_else(|| app_route(&inner, &rec));
    let check = if extra.is_some() {
        None
    } else {
        match inner.contract.check_request(&rec) {
            Ok(check) => {
                rec.violations = check.all();
                Some(check)
            }
            Err(v) => {
                rec.violations = v;
                None
            }
        }
    };

    let (delay, scripted, required_auth, rate) = {
        let mut st = inner.state();
        st.requests.push(rec.clone());
        st.arrivals.push(SystemTime::now());
        // The budget is checked (and spent) on arrival, before the request has any effect.
        let rate = match (&mut st.rate, &extra) {
            (Some(budget), None) => {
                budget.roll(unix_secs());
                let allowed = budget.remaining > 0;
                budget.remaining = budget.remaining.saturating_sub(1);
                Some((allowed, *budget))
            }
            _ => None,
        };
        let pos = st
            .scripted
            .iter()
            .position(|(m, _)| m.matches(&rec.method, &rec.path));
        let scripted = pos.and_then(|i| st.scripted.remove(i)).map(|(_, r)| r);
        (st.delay, scripted, st.required_auth.clone(), rate)
    };
    inner.notify.notify_waiters();

    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    // GitHub answers an unchanged conditional read with a 304 that costs nothing, even with the
    // budget spent; whether it is one is known once the read is served (reads change nothing).
    let free_if_unchanged = inner.kind == ForgeKind::GitHub
        && rec.method == "GET"
        && rec.header("if-none-match").is_some();
    let reply = if let Some((false, budget)) = rate.filter(|_| !free_if_unchanged) {
        rate_limited(inner.kind, &budget)
    } else if let Some(s) = scripted {
        if !s.delay.is_zero() {
            tokio::time::sleep(s.delay).await;
        }
        if s.disconnect {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "scripted disconnect",
            ));
        }
        Reply {
            status: s.status,
            headers: s.headers,
            body: s.body,
        }
    } else if let Some(extra) = extra {
        serve_extra(&inner, extra, &rec)
    } else {
        let has_credentials = match &check {
            Some(c) => c.auth.is_empty(),
            None => rec.header("authorization").is_some() || rec.header("private-token").is_some(),
        };
        let auth_ok = has_credentials
            && required_auth.as_deref().is_none_or(|want| {
                rec.header("authorization") == Some(want)
                    || rec.header("private-token") == Some(want)
            });
        if !auth_ok {
            unauthorized(&inner, &rec, has_credentials)
        } else if let Some(check) = check {
            let mut st = inner.state();
            serve(
                &inner,
                &mut st,
                &rec,
                &check.operation,
                !check.body.is_empty(),
            )
        } else {
            not_found(&inner)
        }
    };
    let mut reply = conditional(inner.kind, &rec, reply);
    let mut rate = rate;
    if let Some((allowed, budget)) = rate.as_mut()
        && free_if_unchanged
    {
        if reply.status == 304 {
            // GitHub does not count a 304 against the rate limit: give the request back.
            if *allowed {
                budget.remaining += 1;
                if let Some(kept) = inner.state().rate.as_mut() {
                    kept.remaining += 1;
                }
            }
        } else if !*allowed {
            reply = rate_limited(inner.kind, budget);
        }
    }
    let rate = rate.map(|(_, budget)| budget);
    let reply = decorate(inner.kind, reply, rate.as_ref());

    let mut builder = Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    Ok(builder
        .body(Full::new(Bytes::from(reply.body)))
        .expect("valid response"))
}

/// Headers the real forge puts on every answer: the rate-limit budget's, when one is kept.
fn decorate(kind: ForgeKind, reply: Reply, rate: Option<&RateBudget>) -> Reply {
    if let Some(b) = rate {
        let (limit, left, reset) = (b.limit.to_string(), b.remaining.to_string(), b.reset_at);
        return match kind {
            ForgeKind::GitHub => reply
                .header("x-ratelimit-limit", limit)
                .header("x-ratelimit-remaining", left)
                .header(
                    "x-ratelimit-used",
                    (b.limit.saturating_sub(b.remaining)).to_string(),
                )
                .header("x-ratelimit-reset", reset.to_string())
                .header("x-ratelimit-resource", "core")
                .header("x-github-api-version-selected", "2022-11-28"),
            ForgeKind::Gitea | ForgeKind::Forgejo | ForgeKind::AzureDevOps => reply
                .header("x-ratelimit-limit", limit)
                .header("x-ratelimit-remaining", left)
                .header("x-ratelimit-reset", reset.to_string()),
            ForgeKind::GitLab => reply
                .header("ratelimit-name", "throttle_authenticated_api")
                .header("ratelimit-limit", limit)
                .header(
                    "ratelimit-observed",
                    (b.limit.saturating_sub(b.remaining)).to_string(),
                )
                .header("ratelimit-remaining", left)
                .header("ratelimit-reset", reset.to_string()),
            // Bitbucket Cloud states neither the count nor the reset: "near" is under 20 % left.
            ForgeKind::BitbucketCloud => reply
                .header("x-ratelimit-limit", limit)
                .header("x-ratelimit-resource", "api-repo-read-write")
                .header(
                    "x-ratelimit-nearlimit",
                    (b.remaining * 5 < b.limit).to_string(),
                ),
            ForgeKind::BitbucketServer => reply,
        };
    }
    match kind {
        ForgeKind::GitHub => reply
            .header("x-ratelimit-limit", "5000")
            .header("x-ratelimit-remaining", "4999")
            .header("x-ratelimit-used", "1")
            .header("x-ratelimit-reset", (unix_secs() + 3600).to_string())
            .header("x-ratelimit-resource", "core")
            .header("x-github-api-version-selected", "2022-11-28"),
        _ => reply,
    }
}

/// The forge's answer to a request beyond its rate-limit budget.
fn rate_limited(kind: ForgeKind, budget: &RateBudget) -> Reply {
    let wait = budget
        .reset_at
        .saturating_sub(unix_secs())
        .max(1)
        .to_string();
    match kind {
        ForgeKind::GitHub => Reply::json(
            403,
            &json!({
                "message": "API rate limit exceeded for user ID 1. If you reach out to GitHub Support for help, please include the request ID.",
                "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
                "status": "403"
            }),
        ),
        ForgeKind::GitLab => Reply {
            status: 429,
            headers: vec![
                ("content-type".into(), "text/plain".into()),
                ("retry-after".into(), wait),
            ],
            body: b"Retry later\n".to_vec(),
        },
        ForgeKind::BitbucketCloud => Reply::json(
            429,
            &json!({"type": "error", "error": {"message": "Rate limit for this resource has been exceeded"}}),
        ),
        _ => {
            Reply::json(429, &json!({"message": "rate limit exceeded"})).header("retry-after", wait)
        }
    }
}

/// Forges whose read answers carry an `ETag` and honour `If-None-Match` (GitHub documents
/// conditional requests; GitLab's and Bitbucket Cloud's web stacks add weak ETags to API
/// answers). Gitea, Bitbucket Server and Azure DevOps send none for these endpoints.
fn sends_etags(kind: ForgeKind) -> bool {
    matches!(
        kind,
        ForgeKind::GitHub | ForgeKind::GitLab | ForgeKind::BitbucketCloud
    )
}

/// Adds the `ETag` of a 200 read answer, and answers `304 Not Modified` (no body) when the
/// request's `If-None-Match` names it.
fn conditional(kind: ForgeKind, rec: &RecordedRequest, reply: Reply) -> Reply {
    if !sends_etags(kind) || rec.method != "GET" || reply.status != 200 {
        return reply;
    }
    // A scripted answer that brings its own validator keeps it, alone.
    if reply
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("etag"))
    {
        return reply;
    }
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    reply.body.hash(&mut hasher);
    let etag = format!("W/\"{:016x}\"", hasher.finish());
    let matches = rec.header("if-none-match").is_some_and(|v| {
        v.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag.trim_start_matches("W/")
        })
    });
    if matches {
        return Reply::empty(304).header("etag", etag);
    }
    reply.header("etag", etag)
}

/// Endpoints the stub serves although they are outside the commit-status contracts.
#[derive(Clone, Copy, Debug)]
enum Extra {
    /// Gitea/Forgejo `GET /api/v1/version`, probed by the Gitea SDK at client creation.
    GiteaVersion,
    /// Azure DevOps `OPTIONS {org}/_apis`, the SDK's resource-location discovery.
    AzureLocations,
    /// GitHub's App API, when served.
    GitHubApp,
}

fn app_route(inner: &Inner, rec: &RecordedRequest) -> Option<Extra> {
    let served = inner.kind == ForgeKind::GitHub && inner.state().app.is_some();
    (served && is_app_path(&rec.method, &rec.path)).then_some(Extra::GitHubApp)
}

fn extra_route(kind: ForgeKind, rec: &RecordedRequest) -> Option<Extra> {
    match kind {
        ForgeKind::Gitea | ForgeKind::Forgejo
            if rec.method == "GET" && rec.path.ends_with("/api/v1/version") =>
        {
            Some(Extra::GiteaVersion)
        }
        ForgeKind::AzureDevOps
            if rec.method == "OPTIONS" && rec.path.trim_end_matches('/').ends_with("/_apis") =>
        {
            Some(Extra::AzureLocations)
        }
        _ => None,
    }
}

fn serve_extra(inner: &Inner, extra: Extra, rec: &RecordedRequest) -> Reply {
    match extra {
        Extra::GitHubApp => match inner.state().app.as_mut() {
            Some(app) => {
                let (status, body) = app.answer(rec, rfc3339);
                Reply::json(status, &body)
            }
            None => not_found(inner),
        },
        Extra::GiteaVersion => Reply::json(200, &json!({ "version": inner.version })),
        Extra::AzureLocations => Reply::json(
            200,
            &json!({
                "count": 1,
                "value": [{
                    "id": "428dd4fb-fda5-4722-af02-9313b80305da",
                    "area": "git",
                    "resourceName": "statuses",
                    "routeTemplate": "{project}/_apis/{area}/repositories/{repositoryId}/commits/{commitId}/{resource}",
                    "resourceVersion": 1,
                    "minVersion": "1.0",
                    "maxVersion": "7.1",
                    "releasedVersion": "7.1"
                }]
            }),
        ),
    }
}

/// The 401 (or Azure's 203 sign-in page) the forge sends for missing or wrong credentials.
fn unauthorized(inner: &Inner, _rec: &RecordedRequest, had_credentials: bool) -> Reply {
    match inner.kind {
        ForgeKind::GitHub => Reply::json(
            401,
            &json!({
                "message": if had_credentials { "Bad credentials" } else { "Requires authentication" },
                "documentation_url": "https://docs.github.com/rest",
                "status": "401"
            }),
        ),
        ForgeKind::GitLab => Reply::json(401, &json!({"message": "401 Unauthorized"})),
        // Bitbucket Cloud's body is empty or an error object; the challenge header is certain.
        ForgeKind::BitbucketCloud => {
            Reply::empty(401).header("www-authenticate", "Basic realm=\"Bitbucket.org HTTP\"")
        }
        ForgeKind::BitbucketServer => Reply::json(
            401,
            &json!({"errors": [{
                "context": null,
                "message": "Authentication failed. Please check your credentials and try again.",
                "exceptionName": "com.atlassian.bitbucket.auth.IncorrectPasswordAuthenticationException"
            }]}),
        ),
        ForgeKind::AzureDevOps if !had_credentials => Reply {
            status: 203,
            headers: vec![("content-type".into(), "text/html; charset=utf-8".into())],
            body: b"<!DOCTYPE html><html><head><title>Azure DevOps Services | Sign In</title></head><body>Sign In</body></html>".to_vec(),
        },
        ForgeKind::AzureDevOps => Reply::empty(401)
            .header("www-authenticate", "Bearer authorization_uri=https://login.microsoftonline.com/common")
            .header("www-authenticate", "Basic realm=\"https://dev.azure.com/\"")
            .header("x-tfs-processid", "00000000-0000-0000-0000-000000000000"),
        ForgeKind::Gitea | ForgeKind::Forgejo => Reply::json(
            401,
            &json!({"message": "token is required", "url": format!("{}/api/swagger", inner.base_url)}),
        ),
    }
}

fn not_found(inner: &Inner) -> Reply {
    not_found_msg(inner, "Not Found")
}

fn not_found_msg(inner: &Inner, what: &str) -> Reply {
    match inner.kind {
        ForgeKind::GitHub => Reply::json(
            404,
            &json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404"}),
        ),
        ForgeKind::GitLab => Reply::json(404, &json!({"message": format!("404 {what}")})),
        ForgeKind::BitbucketCloud => {
            Reply::json(404, &json!({"type": "error", "error": {"message": what}}))
        }
        ForgeKind::BitbucketServer => Reply::json(
            404,
            &json!({"errors": [{"context": null, "message": what, "exceptionName": "com.atlassian.bitbucket.NoSuchEntityException"}]}),
        ),
        ForgeKind::AzureDevOps => vss_error(404, what, "NotFoundException"),
        ForgeKind::Gitea | ForgeKind::Forgejo => Reply::json(
            404,
            &json!({"errors": [], "message": "The target couldn't be found.", "url": format!("{}/api/swagger", inner.base_url)}),
        ),
    }
}

fn vss_error(status: u16, message: &str, type_key: &str) -> Reply {
    Reply::json(
        status,
        &json!({
            "$id": "1",
            "innerException": null,
            "message": message,
            "typeName": format!("Microsoft.TeamFoundation.SourceControl.WebServer.{type_key}, Microsoft.TeamFoundation.SourceControl.WebServer"),
            "typeKey": type_key,
            "errorCode": 0,
            "eventId": 3000
        }),
    )
}

/// `(repo key, sha)` of a matched operation, per forge.
fn repo_and_sha(kind: ForgeKind, m: &OperationMatch) -> (String, String) {
    let p = |k: &str| m.path_params.get(k).cloned().unwrap_or_default();
    match kind {
        ForgeKind::GitHub => (
            format!("{}/{}", p("owner"), p("repo")),
            if m.path_params.contains_key("sha") {
                p("sha")
            } else {
                p("ref")
            },
        ),
        ForgeKind::GitLab => (p("id"), p("sha")),
        ForgeKind::BitbucketCloud => (
            format!("{}/{}", p("workspace"), p("repo_slug")),
            p("commit"),
        ),
        ForgeKind::BitbucketServer => {
            let repo = if m.path_params.contains_key("projectKey") {
                format!("{}/{}", p("projectKey"), p("repositorySlug"))
            } else {
                // The deprecated build-status API is keyed by commit only.
                String::new()
            };
            (repo, p("commitId"))
        }
        ForgeKind::AzureDevOps => {
            let org = m
                .path_params
                .get("organization")
                .or_else(|| m.path_params.get("collection"))
                .cloned()
                .unwrap_or_default();
            (
                format!("{org}/{}/{}", p("project"), p("repositoryId")),
                p("commitId"),
            )
        }
        ForgeKind::Gitea | ForgeKind::Forgejo => (
            format!("{}/{}", p("owner"), p("repo")),
            if m.path_params.contains_key("sha") {
                p("sha")
            } else {
                p("ref")
            },
        ),
    }
}

fn serve(
    inner: &Inner,
    st: &mut State,
    rec: &RecordedRequest,
    m: &OperationMatch,
    body_invalid: bool,
) -> Reply {
    let (repo, sha) = repo_and_sha(inner.kind, m);
    let body = rec.json();
    let is_create = matches!(rec.method.as_str(), "POST" | "PUT");
    if is_create {
        let Some(body) = body.filter(Value::is_object) else {
            return malformed_body(inner);
        };
        if body_invalid && let Some(reply) = rejects_body(inner, &body) {
            return reply;
        }
        if inner.kind == ForgeKind::BitbucketCloud && rec.method == "PUT" {
            let k = m.path_params.get("key").cloned().unwrap_or_default();
            let exists = st
                .stored
                .get(&key(&repo, &sha))
                .is_some_and(|v| v.iter().any(|s| s["key"] == k.as_str()));
            if !exists {
                return not_found_msg(inner, "Build status not found");
            }
            let mut body = body;
            body["key"] = Value::String(k);
            return create_status(inner, st, &repo, &sha, &m.base, &body).with_status(200);
        }
        return create_status(inner, st, &repo, &sha, &m.base, &body);
    }
    read_statuses(inner, st, rec, m, &repo, &sha)
}

impl Reply {
    fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
}

fn malformed_body(inner: &Inner) -> Reply {
    match inner.kind {
        ForgeKind::GitHub => Reply::json(
            400,
            &json!({"message": "Problems parsing JSON", "documentation_url": "https://docs.github.com/rest", "status": "400"}),
        ),
        ForgeKind::GitLab => Reply::json(
            400,
            &json!({"error": "state is missing, state does not have a valid value"}),
        ),
        ForgeKind::BitbucketCloud => Reply::json(
            400,
            &json!({"type": "error", "error": {"message": "Bad request", "detail": "The request body is not valid JSON."}}),
        ),
        ForgeKind::BitbucketServer => Reply::json(
            400,
            &json!({"errors": [{"context": null, "message": "Unexpected end-of-input: expected close marker for Object", "exceptionName": null}]}),
        ),
        ForgeKind::AzureDevOps => vss_error(
            400,
            "Value cannot be null.\r\nParameter name: gitCommitStatusToCreate",
            "ArgumentNullException",
        ),
        ForgeKind::Gitea | ForgeKind::Forgejo => Reply::json(
            422,
            &json!({"message": "invalid JSON body", "url": format!("{}/api/swagger", inner.base_url)}),
        ),
    }
}

fn str_field<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.get(name).and_then(Value::as_str)
}

/// The forge's validation error for a body that broke its contract, or `None` when the forge
/// stores whatever it gets (Gitea and Forgejo validate nothing).
fn rejects_body(inner: &Inner, body: &Value) -> Option<Reply> {
    let chars = |s: Option<&str>| s.map(|s| s.chars().count()).unwrap_or(0);
    match inner.kind {
        ForgeKind::GitHub => {
            let doc = "https://docs.github.com/rest/commits/statuses#create-a-commit-status";
            let state_ok = matches!(
                str_field(body, "state"),
                Some("error" | "failure" | "pending" | "success")
            );
            let (field, message) = if !state_ok {
                ("state", "state is not included in the list".to_string())
            } else if chars(str_field(body, "description")) > 140 {
                (
                    "description",
                    "description is too long (maximum is 140 characters)".to_string(),
                )
            } else if chars(str_field(body, "context")) > 255 {
                (
                    "context",
                    "context is too long (maximum is 255 characters)".to_string(),
                )
            } else {
                // Whatever else the contract flagged (types of optional fields), GitHub takes.
                return None;
            };
            Some(Reply::json(
                422,
                &json!({
                    "message": "Validation Failed",
                    "errors": [{"resource": "Status", "code": "custom", "field": field, "message": message}],
                    "documentation_url": doc,
                    "status": "422"
                }),
            ))
        }
        ForgeKind::GitLab => {
            let state = str_field(body, "state");
            let reply = match state {
                None => json!({"error": "state is missing, state does not have a valid value"}),
                Some("pending" | "running" | "success" | "failed" | "canceled" | "skipped")
                    if body.get("target_url").is_some() =>
                {
                    json!({"message": {"target_url": ["is blocked: Only allowed schemes are http, https"]}})
                }
                Some("pending" | "running" | "success" | "failed" | "canceled" | "skipped") => {
                    json!({"error": "invalid parameters"})
                }
                Some(_) => json!({"error": "state does not have a valid value"}),
            };
            Some(Reply::json(400, &reply))
        }
        ForgeKind::BitbucketCloud => {
            let (field, message) = if chars(str_field(body, "key")) > 40 {
                let n = chars(str_field(body, "key"));
                (
                    "key",
                    format!("Ensure this value has at most 40 characters (it has {n})."),
                )
            } else if str_field(body, "key").is_none() {
                ("key", "This field is required.".to_string())
            } else if !matches!(
                str_field(body, "state"),
                Some("INPROGRESS" | "SUCCESSFUL" | "FAILED" | "STOPPED")
            ) {
                ("state", "Select a valid choice.".to_string())
            } else if chars(str_field(body, "name")) > 255 {
                let n = chars(str_field(body, "name"));
                (
                    "name",
                    format!("Ensure this value has at most 255 characters (it has {n})."),
                )
            } else if str_field(body, "url").is_some_and(|u| url::Url::parse(u).is_err()) {
                ("url", "Enter a valid URL.".to_string())
            } else {
                return None;
            };
            Some(Reply::json(
                400,
                &json!({"type": "error", "error": {
                    "message": format!("{field}: {message}"),
                    "fields": {field: [message]}
                }}),
            ))
        }
        ForgeKind::BitbucketServer => {
            let too_long = |f: &str, max: usize| chars(str_field(body, f)) > max;
            let (context, message) =
                if str_field(body, "key").is_none_or(str::is_empty) || too_long("key", 255) {
                    ("key", "Key must not be blank or longer than 255 characters")
                } else if !matches!(
                    str_field(body, "state"),
                    Some("INPROGRESS" | "SUCCESSFUL" | "FAILED" | "CANCELLED" | "UNKNOWN")
                ) {
                    (
                        "state",
                        "State must be one of SUCCESSFUL, FAILED, INPROGRESS, CANCELLED, UNKNOWN",
                    )
                } else if str_field(body, "url").is_none_or(str::is_empty) || too_long("url", 450) {
                    ("url", "Url must not be blank or longer than 450 characters")
                } else {
                    ("buildStatus", "The build status is invalid")
                };
            Some(Reply::json(
                400,
                &json!({"errors": [{
                    "context": context,
                    "message": message,
                    "exceptionName": "com.atlassian.bitbucket.validation.ArgumentValidationException"
                }]}),
            ))
        }
        ForgeKind::AzureDevOps => {
            let name_ok = body["context"]["name"]
                .as_str()
                .is_some_and(|s| !s.is_empty());
            let message = if name_ok {
                "The status state is not valid."
            } else {
                "The value specified for the following variable must be non-null: Status.Context.Name."
            };
            Some(vss_error(400, message, "InvalidArgumentValueException"))
        }
        ForgeKind::Gitea | ForgeKind::Forgejo => None,
    }
}

/// Stores a status the way the forge would and answers like its create endpoint.
fn create_status(
    inner: &Inner,
    st: &mut State,
    repo: &str,
    sha: &str,
    base: &str,
    body: &Value,
) -> Reply {
    let k = key(repo, sha);
    let now = now_rfc3339();
    let id = st.next_id();
    let base_url = format!("{}{}", inner.base_url, base);
    let stored = st.stored.entry(k.clone()).or_default();
    let reply = match inner.kind {
        ForgeKind::GitHub => {
            let context = str_field(body, "context").unwrap_or("default");
            let same_context = stored
                .iter()
                .filter(|s| {
                    s["context"]
                        .as_str()
                        .is_some_and(|c| c.eq_ignore_ascii_case(context))
                })
                .count();
            if same_context >= 1000 {
                return Reply::json(
                    422,
                    &json!({
                        "message": "Validation Failed",
                        "errors": [{"resource": "Status", "code": "custom", "message": "This SHA and context has reached the maximum number of statuses."}],
                        "documentation_url": "https://docs.github.com/rest/commits/statuses#create-a-commit-status",
                        "status": "422"
                    }),
                );
            }
            let url = format!("{base_url}/repos/{repo}/statuses/{sha}");
            let entity = json!({
                "url": url,
                "avatar_url": null,
                "id": id,
                "node_id": format!("SC_stub{id}"),
                "state": body["state"],
                "description": body.get("description").cloned().unwrap_or(Value::Null),
                "target_url": body.get("target_url").cloned().unwrap_or(Value::Null),
                "context": context,
                "created_at": now,
                "updated_at": now,
                "creator": example_user(inner),
            });
            stored.push(entity.clone());
            Reply::json(201, &entity).header("location", url)
        }
        ForgeKind::GitLab => {
            let name = str_field(body, "name")
                .or_else(|| str_field(body, "context"))
                .unwrap_or("default")
                .to_string();
            let state = str_field(body, "state").unwrap_or("").to_string();
            let r#ref = str_field(body, "ref").unwrap_or("main").to_string();
            let open = stored.iter_mut().rev().find(|s| {
                s["name"] == name.as_str()
                    && s["ref"] == r#ref.as_str()
                    && matches!(s["status"].as_str(), Some("pending" | "running"))
            });
            let finished = matches!(
                state.as_str(),
                "success" | "failed" | "canceled" | "skipped"
            );
            let entity = match open {
                Some(existing) => {
                    let from = existing["status"].as_str().unwrap_or("").to_string();
                    // Re-posting an open state is an invalid state-machine transition on GitLab.
                    if from == state || (from == "running" && state == "pending") {
                        let event = if state == "pending" { "enqueue" } else { "run" };
                        return Reply::json(
                            400,
                            &json!({"message": format!(
                                "Cannot transition status via :{event} from :{from} (Reason(s): Status cannot transition via \"{event}\")"
                            )}),
                        );
                    }
                    existing["status"] = Value::String(state.clone());
                    if let Some(d) = body.get("description") {
                        existing["description"] = d.clone();
                    }
                    if let Some(t) = body.get("target_url") {
                        existing["target_url"] = t.clone();
                    }
                    if state == "running" {
                        existing["started_at"] = Value::String(now.clone());
                    }
                    if finished {
                        existing["finished_at"] = Value::String(now.clone());
                    }
                    existing.clone()
                }
                None => {
                    let entity = json!({
                        "id": id,
                        "sha": sha,
                        "ref": r#ref,
                        "status": state,
                        "name": name,
                        "target_url": body.get("target_url").cloned().unwrap_or(Value::Null),
                        "description": body.get("description").cloned().unwrap_or(Value::Null),
                        "created_at": now,
                        "started_at": if state == "running" { Value::String(now.clone()) } else { Value::Null },
                        "finished_at": if finished { Value::String(now.clone()) } else { Value::Null },
                        "allow_failure": false,
                        "coverage": body.get("coverage").cloned().unwrap_or(Value::Null),
                        "pipeline_id": body.get("pipeline_id").cloned().unwrap_or(json!(1000 + id)),
                        "author": example_user(inner),
                    });
                    stored.push(entity.clone());
                    entity
                }
            };
            Reply::json(201, &entity)
        }
        ForgeKind::BitbucketCloud => {
            let k_ = str_field(body, "key").unwrap_or("").to_string();
            let commit_href = format!("{base_url}/repositories/{repo}/commit/{sha}");
            let mut entity = json!({
                "type": "build",
                "key": k_,
                "state": body["state"],
                "name": body.get("name").cloned().unwrap_or_else(|| json!(k_)),
                "description": body.get("description").cloned().unwrap_or(json!("")),
                "url": body.get("url").cloned().unwrap_or(json!("")),
                "created_on": now,
                "updated_on": now,
                "links": {
                    "self": {"href": format!("{commit_href}/statuses/build/{k_}")},
                    "commit": {"href": commit_href},
                }
            });
            if let Some(r) = body.get("refname") {
                entity["refname"] = r.clone();
            }
            // Creating with an existing key overwrites that status in place.
            match stored.iter_mut().find(|s| s["key"] == k_.as_str()) {
                Some(existing) => {
                    entity["created_on"] = existing["created_on"].clone();
                    *existing = entity.clone();
                }
                None => stored.push(entity.clone()),
            }
            Reply::json(201, &entity)
        }
        ForgeKind::BitbucketServer => {
            let k_ = str_field(body, "key").unwrap_or("").to_string();
            let millis = now_millis();
            let mut entity = body.clone();
            entity["updatedDate"] = json!(millis);
            if !repo.is_empty() {
                let (project, slug) = repo.split_once('/').unwrap_or((repo, ""));
                entity["projectKey"] = json!(project);
                entity["repositorySlug"] = json!(slug);
            }
            match stored.iter_mut().find(|s| s["key"] == k_.as_str()) {
                Some(existing) => {
                    entity["createdDate"] = existing["createdDate"].clone();
                    *existing = entity;
                }
                None => {
                    entity["createdDate"] = json!(millis);
                    stored.push(entity);
                }
            }
            Reply::empty(204)
        }
        ForgeKind::AzureDevOps => {
            let mut entity = json!({
                "id": id,
                "state": body.get("state").cloned().unwrap_or(json!("notSet")),
                "description": body.get("description").cloned().unwrap_or(json!("")),
                "context": body["context"],
                "creationDate": now,
                "updatedDate": now,
                "createdBy": example_user(inner),
                "url": format!("{base_url}/{repo}/commits/{sha}/statuses/{id}"),
            });
            if let Some(t) = body.get("targetUrl") {
                entity["targetUrl"] = t.clone();
            }
            stored.push(entity.clone());
            Reply::json(201, &entity)
        }
        ForgeKind::Gitea | ForgeKind::Forgejo => {
            // Gitea trims the text fields and stores everything else as-is.
            let text = |f: &str| json!(str_field(body, f).unwrap_or("").trim());
            let entity = json!({
                "id": id,
                "status": text("state"),
                "target_url": text("target_url"),
                "description": text("description"),
                "url": format!("{base_url}/repos/{repo}/statuses/{sha}"),
                "context": text("context"),
                "creator": example_user(inner),
                "created_at": now,
                "updated_at": now,
            });
            stored.push(entity.clone());
            Reply::json(201, &entity)
        }
    };
    if reply.status < 300 {
        st.posted.entry(k).or_default().push(body.clone());
    }
    reply
}

/// The user object the contract's own examples show, so responses keep the forge's shape.
fn example_user(inner: &Inner) -> Value {
    let c = &inner.contract;
    let pick = |pointer: &str| c.document().pointer(pointer).cloned();
    let found = match inner.kind {
        ForgeKind::GitHub => pick("/components/examples/status/value/creator"),
        ForgeKind::GitLab => pick(
            "/paths/~1api~1v4~1projects~1{id}~1statuses~1{sha}/post/responses/200/examples/application~1json/author",
        ),
        ForgeKind::AzureDevOps => pick(
            "/paths/~1{organization}~1{project}~1_apis~1git~1repositories~1{repositoryId}~1commits~1{commitId}~1statuses/post/responses/201/examples/application~1json/createdBy",
        ),
        ForgeKind::Gitea | ForgeKind::Forgejo => pick(
            "/paths/~1repos~1{owner}~1{repo}~1statuses~1{sha}/post/responses/201/examples/application~1json/creator",
        ),
        ForgeKind::BitbucketCloud | ForgeKind::BitbucketServer => None,
    };
    found.unwrap_or(Value::Null)
}

fn query_usize(rec: &RecordedRequest, name: &str) -> Option<usize> {
    rec.query_param(name).and_then(|v| v.parse().ok())
}

/// One page of `items` plus the `Link` header pointing at the neighbours.
fn paginate(
    inner: &Inner,
    rec: &RecordedRequest,
    items: Vec<Value>,
    page_param: &str,
    size_param: &str,
    default_size: usize,
    max_size: usize,
) -> (Vec<Value>, usize, usize, usize, Option<String>) {
    let size = query_usize(rec, size_param)
        .unwrap_or(default_size)
        .clamp(1, max_size);
    let page = query_usize(rec, page_param).unwrap_or(1).max(1);
    let total = items.len();
    let pages = total.div_ceil(size).max(1);
    let chunk: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * size)
        .take(size)
        .collect();
    let link_to = |p: usize| {
        let mut q: Vec<(String, String)> = rec
            .query_pairs()
            .into_iter()
            .filter(|(k, _)| k != page_param)
            .collect();
        q.push((page_param.to_string(), p.to_string()));
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(q)
            .finish();
        format!("{}{}?{}", inner.base_url, rec.path, qs)
    };
    let mut links = Vec::new();
    if page < pages {
        links.push(format!("<{}>; rel=\"next\"", link_to(page + 1)));
        links.push(format!("<{}>; rel=\"last\"", link_to(pages)));
    }
    if page > 1 {
        links.push(format!("<{}>; rel=\"first\"", link_to(1)));
        links.push(format!("<{}>; rel=\"prev\"", link_to(page - 1)));
    }
    let link = (!links.is_empty()).then(|| links.join(", "));
    (chunk, page, size, total, link)
}

fn with_link(reply: Reply, link: Option<String>) -> Reply {
    match link {
        Some(l) => reply.header("link", l),
        None => reply,
    }
}

fn read_statuses(
    inner: &Inner,
    st: &mut State,
    rec: &RecordedRequest,
    m: &OperationMatch,
    repo: &str,
    sha: &str,
) -> Reply {
    let stored = st.stored.get(&key(repo, sha)).cloned().unwrap_or_default();
    let newest_first: Vec<Value> = stored.iter().rev().cloned().collect();
    match (inner.kind, m.operation_id.as_str()) {
        (ForgeKind::GitHub, "repos/list-commit-statuses-for-ref") => {
            let (page, _, _, _, link) =
                paginate(inner, rec, newest_first, "page", "per_page", 30, 100);
            with_link(Reply::json(200, &Value::Array(page)), link)
        }
        (ForgeKind::GitHub, _) => {
            let mut latest: Vec<Value> = Vec::new();
            for s in &newest_first {
                let ctx = s["context"].as_str().unwrap_or("").to_lowercase();
                if !latest
                    .iter()
                    .any(|l| l["context"].as_str().unwrap_or("").to_lowercase() == ctx)
                {
                    latest.push(s.clone());
                }
            }
            let states: Vec<&str> = latest.iter().filter_map(|s| s["state"].as_str()).collect();
            let combined = if states.iter().any(|s| matches!(*s, "error" | "failure")) {
                "failure"
            } else if states.is_empty() || states.contains(&"pending") {
                "pending"
            } else {
                "success"
            };
            let total = latest.len();
            let statuses: Vec<Value> = latest
                .into_iter()
                .map(|mut s| {
                    if let Some(o) = s.as_object_mut() {
                        o.remove("creator");
                    }
                    s
                })
                .collect();
            let (page, _, _, _, link) = paginate(inner, rec, statuses, "page", "per_page", 30, 100);
            let repository = inner
                .contract
                .document()
                .pointer("/components/examples/combined-commit-status/value/repository")
                .cloned()
                .unwrap_or(Value::Null);
            let base = format!("{}{}/repos/{repo}", inner.base_url, m.base);
            with_link(
                Reply::json(
                    200,
                    &json!({
                        "state": combined,
                        "statuses": page,
                        "sha": sha,
                        "total_count": total,
                        "repository": repository,
                        "commit_url": format!("{base}/commits/{sha}"),
                        "url": format!("{base}/commits/{sha}/status"),
                    }),
                ),
                link,
            )
        }
        (ForgeKind::GitLab, _) => {
            let name = rec.query_param("name");
            let r#ref = rec.query_param("ref");
            let all = rec.query_param("all").as_deref() == Some("true");
            let pipeline = rec.query_param("pipeline_id");
            let mut items: Vec<Value> = stored
                .iter()
                .filter(|s| name.as_deref().is_none_or(|n| s["name"] == n))
                .filter(|s| r#ref.as_deref().is_none_or(|r| s["ref"] == r))
                .filter(|s| {
                    pipeline.as_deref().is_none_or(|p| {
                        s["pipeline_id"].as_i64().map(|n| n.to_string()).as_deref() == Some(p)
                    })
                })
                .cloned()
                .collect();
            if !all {
                // Without `all`, GitLab shows only the latest job per name (older ones are
                // "retried").
                let mut latest: Vec<Value> = Vec::new();
                for s in items.iter().rev() {
                    if !latest
                        .iter()
                        .any(|l| l["name"] == s["name"] && l["ref"] == s["ref"])
                    {
                        latest.push(s.clone());
                    }
                }
                latest.reverse();
                items = latest;
            }
            if rec.query_param("order_by").as_deref() == Some("pipeline_id") {
                items.sort_by_key(|s| s["pipeline_id"].as_i64().unwrap_or(0));
            }
            if rec.query_param("sort").as_deref() == Some("desc") {
                items.reverse();
            }
            let (page_items, page, size, total, link) =
                paginate(inner, rec, items, "page", "per_page", 20, 100);
            let pages = total.div_ceil(size).max(1);
            let reply = Reply::json(200, &Value::Array(page_items))
                .header("x-page", page.to_string())
                .header("x-per-page", size.to_string())
                .header("x-total", total.to_string())
                .header("x-total-pages", pages.to_string())
                .header(
                    "x-next-page",
                    if page < pages {
                        (page + 1).to_string()
                    } else {
                        String::new()
                    },
                )
                .header(
                    "x-prev-page",
                    if page > 1 {
                        (page - 1).to_string()
                    } else {
                        String::new()
                    },
                );
            with_link(reply, link)
        }
        (ForgeKind::BitbucketCloud, "getCommitBuildStatus") => {
            let k = m.path_params.get("key").cloned().unwrap_or_default();
            match stored.iter().find(|s| s["key"] == k.as_str()) {
                Some(s) => Reply::json(200, s),
                None => not_found_msg(inner, &format!("No build status found for key {k}")),
            }
        }
        (ForgeKind::BitbucketCloud, _) => {
            let (page_items, page, size, total, _) =
                paginate(inner, rec, newest_first, "page", "pagelen", 10, 100);
            let mut body =
                json!({"size": total, "page": page, "pagelen": size, "values": page_items});
            if page * size < total {
                let next = format!(
                    "{}{}?{}",
                    inner.base_url,
                    rec.path,
                    url::form_urlencoded::Serializer::new(String::new())
                        .append_pair("page", &(page + 1).to_string())
                        .append_pair("pagelen", &size.to_string())
                        .finish()
                );
                body["next"] = json!(next);
            }
            Reply::json(200, &body)
        }
        (ForgeKind::BitbucketServer, "get" | "get_v1_0") => {
            let k = rec.query_param("key").unwrap_or_default();
            match stored.iter().find(|s| s["key"] == k.as_str()) {
                Some(s) => Reply::json(200, s),
                None => Reply::json(
                    404,
                    &json!({"errors": [{
                        "context": null,
                        "message": format!("No build status could be found for key \"{k}\""),
                        "exceptionName": "com.atlassian.bitbucket.build.status.NoSuchBuildStatusException"
                    }]}),
                ),
            }
        }
        (ForgeKind::BitbucketServer, _) => {
            let start = query_usize(rec, "start").unwrap_or(0);
            let limit = query_usize(rec, "limit").unwrap_or(25).max(1);
            let values: Vec<Value> = newest_first
                .iter()
                .skip(start)
                .take(limit)
                .cloned()
                .collect();
            let last = start + values.len() >= newest_first.len();
            let mut body = json!({
                "size": values.len(), "limit": limit, "start": start, "isLastPage": last, "values": values
            });
            if !last {
                body["nextPageStart"] = json!(start + limit);
            }
            Reply::json(200, &body)
        }
        (ForgeKind::AzureDevOps, _) => {
            let mut items = newest_first;
            if rec.query_param("latestOnly").as_deref() == Some("true") {
                let mut latest: Vec<Value> = Vec::new();
                for s in items {
                    if !latest.iter().any(|l| l["context"] == s["context"]) {
                        latest.push(s);
                    }
                }
                items = latest;
            }
            let skip = query_usize(rec, "skip").unwrap_or(0);
            let top = query_usize(rec, "top").unwrap_or(1000);
            let value: Vec<Value> = items.into_iter().skip(skip).take(top).collect();
            Reply::json(200, &json!({"count": value.len(), "value": value}))
        }
        (ForgeKind::Gitea | ForgeKind::Forgejo, "repoGetCombinedStatusByRef") => {
            let mut latest: Vec<Value> = Vec::new();
            for s in &newest_first {
                if !latest.iter().any(|l| l["context"] == s["context"]) {
                    latest.push(s.clone());
                }
            }
            let base = format!("{}{}/repos/{repo}", inner.base_url, m.base);
            if latest.is_empty() {
                // Gitea answers an empty combined status, which its own schema does not allow.
                return Reply::json(
                    200,
                    &json!({"state": "", "sha": "", "total_count": 0, "statuses": null, "repository": null, "commit_url": "", "url": ""}),
                );
            }
            let rank = |s: &str| match s {
                "error" | "failure" => 4,
                "warning" => 3,
                "pending" => 2,
                "success" => 1,
                _ => 0,
            };
            let worst = latest
                .iter()
                .filter_map(|s| s["status"].as_str())
                .max_by_key(|s| rank(s))
                .unwrap_or("")
                .to_string();
            let total = latest.len();
            let (page, _, _, _, link) = paginate(inner, rec, latest, "page", "limit", 30, 50);
            with_link(
                Reply::json(
                    200,
                    &json!({
                        "state": worst,
                        "sha": sha,
                        "total_count": total,
                        "statuses": page,
                        "commit_url": format!("{base}/commits/{sha}"),
                        "url": format!("{base}/commits/{sha}/status"),
                    }),
                ),
                link,
            )
        }
        (ForgeKind::Gitea | ForgeKind::Forgejo, _) => {
            let mut items = match rec.query_param("sort").as_deref() {
                Some("oldest" | "leastupdate" | "leastindex") => stored,
                _ => newest_first,
            };
            if let Some(state) = rec.query_param("state") {
                items.retain(|s| s["status"] == state.as_str());
            }
            let total = items.len();
            let (page, _, _, _, link) = paginate(inner, rec, items, "page", "limit", 30, 50);
            with_link(
                Reply::json(200, &Value::Array(page)).header("x-total-count", total.to_string()),
                link,
            )
        }
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for now, UTC.
fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for `at`, UTC.
fn rfc3339(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm), to avoid a date crate for one format.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_shape() {
        let s = now_rfc3339();
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.starts_with("20"), "{s}");
        assert!(s.ends_with('Z'));
    }

    #[test]
    fn matcher_matches_method_and_path() {
        let m = Matcher::post(r"/statuses/[0-9a-f]+$");
        assert!(m.matches("POST", "/repos/o/r/statuses/abc"));
        assert!(!m.matches("GET", "/repos/o/r/statuses/abc"));
        assert!(Matcher::any_method("statuses").matches("PUT", "/x/statuses/y"));
    }
}
