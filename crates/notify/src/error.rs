//! Everything that can go wrong, split by when it is found: [`ConfigError`] when a provider is
//! loaded, [`PlanError`] when an event is turned into a status, [`DeliveryError`] when the forge
//! is called. Only delivery errors can be retried: [`DeliveryError::class`] says why (transient,
//! rate limited, permanent) and [`DeliveryError::retry`] how.
//!
//! Display strings of the first two follow Flux word for word where Flux has an equivalent, so
//! that Warning events read the same after a migration.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use crate::ForgeKind;

/// A provider configuration that can never work; found once, when the forge is built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The forge kind exists in the API but has no implementation yet.
    #[error("provider {0} is not supported yet")]
    Unsupported(ForgeKind),
    /// GitHub: neither `token` nor `password` in the secret.
    #[error("github token or github app details must be specified")]
    GitHubCredentials,
    /// GitLab: neither `token` nor `password` in the secret.
    #[error("gitlab token cannot be empty")]
    GitLabToken,
    /// Bitbucket Cloud: no `token` in the secret.
    #[error("bitbucket token cannot be empty")]
    BitbucketToken,
    /// Bitbucket Cloud: the token is neither an access token nor `<user>:<secret>`.
    #[error(
        "invalid token format, expected an access token (repository, project or workspace; sent as Bearer) or <username or email>:<API token> (sent as Basic)"
    )]
    BitbucketTokenFormat,
    /// Azure DevOps: no `token`, and no cluster to get a workload-identity token from.
    #[error(
        "failed to acquire azure devops token: the secret has no token, and workload identity needs Kubernetes mode (a ServiceAccount token from the cluster); standalone mode (--manifests) has no cluster"
    )]
    AzureDevOpsToken,
    /// Azure DevOps workload identity cannot be set up for this Provider (Flux's wording).
    #[error("failed to acquire azure devops token: {0}")]
    AzureWorkloadIdentity(String),
    /// GitHub's wording (single quotes): the id is not exactly `owner/repo`.
    #[error("invalid repository id: '{0}'")]
    GitHubRepositoryId(String),
    /// Bitbucket, Azure DevOps and GitLab wording (double quotes).
    #[error("invalid repository id \"{0}\"")]
    RepositoryId(String),
    /// The address does not use `http`/`https` (or `ssh`, which becomes `https`).
    #[error("unsupported scheme type in address: {scheme}. Must be http or https")]
    AddressScheme {
        /// The scheme found.
        scheme: String,
    },
    /// A credential that cannot be put in an HTTP header (for example a newline inside).
    #[error("credentials contain characters that are not allowed in an HTTP header")]
    CredentialsNotHeaderSafe,
    /// The proxy URL is unusable. Never contains the URL itself (it may hold a password).
    #[error("invalid proxy URL: {0}")]
    ProxyUrl(String),
    /// The CA bundle is not PEM or holds no certificate.
    #[error("invalid CA certificate: {0}")]
    CaCertificate(String),
    /// The client certificate or key is missing its pair or is not PEM.
    #[error("invalid client certificate: {0}")]
    ClientCertificate(String),
    /// The HTTP client could not be built from the TLS/proxy settings.
    #[error("failed to build HTTP client: {0}")]
    HttpClient(String),
    /// Gitea (and Forgejo): neither `token` nor `password` in the secret.
    #[error("gitea token cannot be empty")]
    GiteaToken,
    /// Bitbucket Server: the address cannot be read as an HTTP(S) clone URL. Flux's wording
    /// (`could not parse git address: ...`).
    #[error("could not parse git address: {0}")]
    BitbucketServerAddress(String),
    /// Bitbucket Server: neither a token nor a username and password.
    #[error("invalid credentials, expected to be one of username/password or API Token")]
    BitbucketServerCredentials,
    /// GitHub App: neither `githubAppInstallationID` nor `githubAppInstallationOwner`.
    #[error("app installation owner or ID must be provided to use github app authentication")]
    GitHubAppInstallationMissing,
    /// GitHub App: both `githubAppInstallationID` and `githubAppInstallationOwner`.
    #[error(
        "only one of app installation owner or ID must be provided to use github app authentication"
    )]
    GitHubAppInstallationAmbiguous,
    /// GitHub App: the installation ID is not a number (it is a path segment of the token call).
    #[error("app installation ID must be a number to use github app authentication")]
    GitHubAppInstallationId,
    /// GitHub App: no `githubAppPrivateKey`.
    #[error("private key must be provided to use github app authentication")]
    GitHubAppPrivateKeyMissing,
    /// GitHub App: the private key is not a usable PEM RSA key. Never contains key material.
    #[error("could not parse private key: {0}")]
    GitHubAppPrivateKey(String),
    /// GitHub App: `githubAppBaseURL` is not an absolute http(s) URL.
    #[error("invalid github app base URL: {0}")]
    GitHubAppBaseUrl(String),
}

/// Why an event cannot become a commit status on this forge. Not retryable: the same event
/// will fail the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The commit status ID (default or from `commitStatusExpr`) is empty.
    #[error("commit status cannot be empty")]
    EmptyStatusId,
    /// None of `commit`, `originRevision`, `revision` is in the metadata.
    #[error("missing revision metadata")]
    MissingRevision,
    /// The chosen revision holds no 40-character SHA-1.
    #[error("failed to extract commit hash from '{0}' revision")]
    InvalidRevision(String),
    /// A severity other than `info` or `error`.
    #[error("{}", unsupported_severity(.forge))]
    UnsupportedSeverity {
        /// The forge whose state mapping failed.
        forge: ForgeKind,
        /// The severity received.
        severity: String,
    },
    /// The status ID is longer than the forge accepts; sending it would only earn a 422.
    #[error("commit status ID is {len} characters long, {forge} accepts at most {max}")]
    StatusIdTooLong {
        /// The forge whose limit applies.
        forge: ForgeKind,
        /// Length in characters.
        len: usize,
        /// The forge's limit.
        max: usize,
    },
    /// The target URL (a link on the status) is one the forge would refuse.
    #[error("target URL is not accepted by {forge}: {reason}")]
    TargetUrl {
        /// The forge whose rule applies.
        forge: ForgeKind,
        /// What is wrong with it.
        reason: String,
    },
    /// Another plan error under the prefix the forge's Flux notifier puts before it
    /// (Bitbucket Server: `could not parse revision: ...`).
    #[error("{context}: {inner}")]
    Context {
        /// Flux's prefix.
        context: &'static str,
        /// The error itself.
        inner: Box<PlanError>,
    },
    /// A planned [`crate::forge::Status`] this forge cannot build requests from: it was
    /// planned for another forge kind (the Provider changed its type since), or names a state
    /// the forge has no word for.
    #[error("cannot send a status planned for {planned} with a {forge} provider: {reason}")]
    NotBuildable {
        /// The forge the status was planned for.
        planned: ForgeKind,
        /// The forge asked to build its requests.
        forge: ForgeKind,
        /// What does not fit.
        reason: String,
    },
}

fn unsupported_severity(forge: &ForgeKind) -> &'static str {
    match forge {
        ForgeKind::GitHub => "can't convert to github state",
        ForgeKind::GitLab => "can't convert to gitlab state",
        ForgeKind::Gitea => "can't convert to gitea state",
        ForgeKind::Bitbucket => "can't convert to bitbucket state",
        ForgeKind::BitbucketServer => {
            "couldn't convert to bitbucket server state: bitbucket server state generated on info or error events only"
        }
        ForgeKind::AzureDevOps => "can't convert to azure devops state",
    }
}

/// What to do about a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Permanent: the same request will fail the same way (bad credentials, unknown repo,
    /// rejected body).
    No,
    /// Transient: try again after the caller's own backoff.
    Backoff,
    /// Transient, and the forge said when: not before this delay.
    After(Duration),
}

/// Why an exchange failed, as far as trying again goes. Callers decide from this alone, never
/// from HTTP status codes, so the forge layer is the one place that knows what an answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The same request will fail the same way.
    Permanent,
    /// Worth trying again; `after`: the forge said not before this long.
    Transient {
        /// The forge's `Retry-After`, if it sent one.
        after: Option<Duration>,
    },
    /// The credential's rate-limit budget is spent; `after`: until it resets, if the forge said.
    /// Every request on the same credential would be refused until then.
    RateLimited {
        /// Until the budget resets (`Retry-After` or a reset header), if the forge said.
        after: Option<Duration>,
    },
}

impl From<Class> for Retry {
    fn from(class: Class) -> Retry {
        match class {
            Class::Permanent => Retry::No,
            Class::Transient { after: None } | Class::RateLimited { after: None } => Retry::Backoff,
            Class::Transient { after: Some(d) } | Class::RateLimited { after: Some(d) } => {
                Retry::After(d)
            }
        }
    }
}

impl From<Retry> for Class {
    fn from(retry: Retry) -> Class {
        match retry {
            Retry::No => Class::Permanent,
            Retry::Backoff => Class::Transient { after: None },
            Retry::After(d) => Class::Transient { after: Some(d) },
        }
    }
}

/// A failed exchange with the forge. `Display` reads like Flux's message, including the forge's
/// own answer, and never contains a credential.
#[derive(Clone)]
pub struct DeliveryError {
    forge: ForgeKind,
    context: Option<&'static str>,
    method: http::Method,
    url: String,
    failure: Failure,
    /// The whole message in the forge's Flux wording, when it differs from the shared format
    /// (Bitbucket Server's `<code> - <reason>`).
    text: Option<String>,
}

#[derive(Clone, Debug)]
pub(crate) enum Failure {
    /// The forge answered with a status we do not accept.
    Status {
        status: u16,
        message: String,
        class: Class,
    },
    /// No complete answer within the per-request timeout.
    Timeout { after: Duration },
    /// Connection, TLS or protocol failure before an answer.
    Transport { message: String, retry: Retry },
    /// The answer was not what the forge's API documents.
    Decode { message: String },
}

impl DeliveryError {
    pub(crate) fn new(
        forge: ForgeKind,
        context: Option<&'static str>,
        method: http::Method,
        url: String,
        failure: Failure,
    ) -> Self {
        Self {
            forge,
            context,
            method,
            url,
            failure,
            text: None,
        }
    }

    /// Replaces the rendered message; classification (`retry`, `status`) is unchanged.
    pub(crate) fn with_text(mut self, text: Option<String>) -> Self {
        self.text = text;
        self
    }

    /// Replaces every occurrence of the given values (credentials) in the text. The forge's
    /// answer is copied into the message, and some servers echo what they were sent.
    /// Values shorter than [`MIN_SCRUB_LEN`] are left alone: replacing every `t` of a message
    /// would destroy it, and such a value protects nothing.
    pub(crate) fn scrub(mut self, secrets: &[String]) -> Self {
        let clean = |s: &mut String| {
            for secret in secrets.iter().filter(|s| s.len() >= MIN_SCRUB_LEN) {
                if s.contains(secret.as_str()) {
                    *s = s.replace(secret.as_str(), "*****");
                }
            }
        };
        clean(&mut self.url);
        if let Some(text) = &mut self.text {
            clean(text);
        }
        match &mut self.failure {
            Failure::Status { message, .. }
            | Failure::Transport { message, .. }
            | Failure::Decode { message } => clean(message),
            Failure::Timeout { .. } => {}
        }
        self
    }

    /// How the caller should react.
    pub fn retry(&self) -> Retry {
        self.class().into()
    }

    /// Why the exchange failed: transient, rate limited (and until when), or permanent.
    pub fn class(&self) -> Class {
        match &self.failure {
            Failure::Status { class, .. } => *class,
            Failure::Transport { retry, .. } => (*retry).into(),
            Failure::Timeout { .. } => Class::Transient { after: None },
            Failure::Decode { .. } => Class::Permanent,
        }
    }

    /// The HTTP status the forge answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match &self.failure {
            Failure::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The forge that was called.
    pub fn forge(&self) -> ForgeKind {
        self.forge
    }

    /// Whether the request ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(self.failure, Failure::Timeout { .. })
    }
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(text) = &self.text {
            return f.write_str(text);
        }
        if let Some(context) = self.context {
            write!(f, "{context}: ")?;
        }
        write!(f, "{} {}: ", self.method, self.url)?;
        match &self.failure {
            Failure::Status {
                status, message, ..
            } => write!(f, "{status} {message}"),
            Failure::Timeout { after } => write!(f, "request timed out after {after:?}"),
            Failure::Transport { message, .. } => f.write_str(message),
            Failure::Decode { message } => write!(f, "could not decode the response: {message}"),
        }
    }
}

impl fmt::Debug for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryError")
            .field("forge", &self.forge)
            .field("context", &self.context)
            .field("method", &self.method)
            .field("url", &self.url)
            .field("failure", &self.failure)
            .field("text", &self.text)
            .finish()
    }
}

impl std::error::Error for DeliveryError {}

/// Shortest credential value scrubbed from error texts.
const MIN_SCRUB_LEN: usize = 4;

// === response classification ===

/// Longest forge message copied into an error; enough for GitHub's validation details.
const MAX_MESSAGE_CHARS: usize = 500;

/// GitHub asks for at least a minute when a secondary limit hits without `Retry-After`.
const SECONDARY_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// Values above this in a reset header are epoch seconds, below it a delay (GitHub sends epoch
/// seconds, the IETF `RateLimit-Reset` draft a delay).
const EPOCH_THRESHOLD: u64 = 1_000_000_000;

/// Values above this in a reset header are epoch milliseconds (a delay or epoch seconds this
/// large would be more than 30,000 years away).
const EPOCH_MS_THRESHOLD: u64 = 1_000_000_000_000;

/// Whether an unaccepted answer is worth retrying, why, and when.
pub(crate) fn classify(
    forge: ForgeKind,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Class {
    let rate_limited = status == 429 || (status == 403 && is_rate_limit_403(headers, body));
    let transient = rate_limited
        || status == 408
        || (status >= 500 && status != 501)
        // GitLab: "Another update to this commit status is in progress" (a per-SHA lock).
        || (status == 409 && forge == ForgeKind::GitLab);
    if !transient {
        return Class::Permanent;
    }
    let after = retry_after(headers, now);
    if !rate_limited {
        return Class::Transient { after };
    }
    let after = after
        .or_else(|| {
            ["x-ratelimit-reset", "ratelimit-reset"]
                .iter()
                .find_map(|name| reset_delay(headers, name, now))
        })
        .or((status == 403).then_some(SECONDARY_RATE_LIMIT_WAIT));
    Class::RateLimited { after }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// GitHub answers an exhausted primary or secondary rate limit with 403 instead of 429.
fn is_rate_limit_403(headers: &HeaderMap, body: &[u8]) -> bool {
    header(headers, "x-ratelimit-remaining") == Some("0")
        || String::from_utf8_lossy(body)
            .to_ascii_lowercase()
            .contains("secondary rate limit")
}

/// `Retry-After` as delay-seconds or HTTP-date (any of the three formats of RFC 9110).
/// The value is what the forge asked for; the caller caps it (`--max-retry-delay`).
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = header(headers, "retry-after")?;
    if let Some(secs) = whole_number(value) {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    at.duration_since(now).ok().filter(|d| !d.is_zero())
}

fn reset_delay(headers: &HeaderMap, name: &str, now: SystemTime) -> Option<Duration> {
    let value = whole_number(header(headers, name)?)?;
    if value > EPOCH_THRESHOLD {
        until(reset_epoch_secs(value, 0), now)
    } else {
        Some(Duration::from_secs(value))
    }
}

/// A reset header's value as epoch seconds: a delay (added to `now_secs`), epoch seconds, or
/// epoch milliseconds, told apart by size. Never overflows.
pub(crate) fn reset_epoch_secs(value: u64, now_secs: u64) -> u64 {
    if value > EPOCH_MS_THRESHOLD {
        value / 1000
    } else if value > EPOCH_THRESHOLD {
        value
    } else {
        now_secs.saturating_add(value)
    }
}

/// A string of ASCII digits as a number, saturating instead of failing on overflow: a
/// 30-digit `Retry-After` still means "a long time", which the caller caps.
pub(crate) fn whole_number(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(value.parse::<u64>().unwrap_or(u64::MAX))
}

fn until(epoch_secs: u64, now: SystemTime) -> Option<Duration> {
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    // A reset already in the past says nothing useful; let the caller back off.
    epoch_secs
        .checked_sub(now)
        .filter(|d| *d > 0)
        .map(Duration::from_secs)
}

/// The forge's own explanation of an error answer: the JSON `message` (GitHub, GitLab, Azure),
/// `error.message` (Bitbucket) or `error`, GitHub's `errors` list, else a short plain-text
/// body, else the reason phrase. HTML pages (Azure's sign-in page) are never copied.
pub(crate) fn forge_message(status: u16, body: &[u8]) -> String {
    let message = json_message(body)
        .or_else(|| text_message(body))
        .unwrap_or_default();
    // GitLab repeats the code in its message ("401 Unauthorized"); the code is printed anyway.
    let message = message
        .strip_prefix(&format!("{status} "))
        .unwrap_or(&message)
        .trim();
    if message.is_empty() {
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason());
        return reason.unwrap_or_default().to_owned();
    }
    sanitize(message)
}

fn json_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let as_text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut message = value
        .get("message")
        .map(as_text)
        .or_else(|| value.pointer("/error/message").map(as_text))
        .or_else(|| value.get("error").map(as_text))?;
    if let Some(errors) = value
        .get("errors")
        .and_then(|e| e.as_array())
        .filter(|e| !e.is_empty())
    {
        let details: Vec<String> = errors
            .iter()
            .map(|e| e.get("message").map_or_else(|| as_text(e), as_text))
            .collect();
        message = format!("{message} [{}]", details.join(", "));
    }
    Some(message)
}

fn text_message(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() || text.starts_with('<') {
        return None;
    }
    text.lines().next().map(str::to_owned)
}

fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE_CHARS)
        .collect();
    if s.chars().count() > MAX_MESSAGE_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    const NOW: u64 = 1_700_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    #[test]
    fn classification_table() {
        let gh = ForgeKind::GitHub;
        let reset = (NOW + 120).to_string();
        let cases: Vec<(ForgeKind, u16, HeaderMap, &str, Retry)> = vec![
            (gh, 401, headers(&[]), "", Retry::No),
            (
                gh,
                403,
                headers(&[]),
                "{\"message\":\"Resource not accessible\"}",
                Retry::No,
            ),
            (gh, 404, headers(&[]), "", Retry::No),
            (gh, 422, headers(&[]), "", Retry::No),
            (
                ForgeKind::AzureDevOps,
                203,
                headers(&[]),
                "<html>",
                Retry::No,
            ),
            (gh, 400, headers(&[]), "", Retry::No),
            (gh, 409, headers(&[]), "", Retry::No),
            (ForgeKind::GitLab, 409, headers(&[]), "", Retry::Backoff),
            (gh, 408, headers(&[]), "", Retry::Backoff),
            (gh, 500, headers(&[]), "", Retry::Backoff),
            (gh, 501, headers(&[]), "", Retry::No),
            (gh, 502, headers(&[]), "", Retry::Backoff),
            (
                gh,
                503,
                headers(&[("retry-after", "7")]),
                "",
                Retry::After(Duration::from_secs(7)),
            ),
            (gh, 429, headers(&[]), "", Retry::Backoff),
            (
                gh,
                429,
                headers(&[("retry-after", "30")]),
                "",
                Retry::After(Duration::from_secs(30)),
            ),
            (
                gh,
                429,
                headers(&[("retry-after", "Tue, 14 Nov 2023 22:14:20 GMT")]),
                "",
                Retry::After(Duration::from_secs(60)),
            ),
            (
                gh,
                403,
                headers(&[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", &reset),
                ]),
                "",
                Retry::After(Duration::from_secs(120)),
            ),
            (
                gh,
                403,
                headers(&[]),
                "{\"message\":\"You have exceeded a secondary rate limit.\"}",
                Retry::After(SECONDARY_RATE_LIMIT_WAIT),
            ),
            (
                ForgeKind::GitLab,
                429,
                headers(&[("ratelimit-reset", &reset)]),
                "Retry later",
                Retry::After(Duration::from_secs(120)),
            ),
            (
                ForgeKind::GitLab,
                429,
                headers(&[("ratelimit-reset", "15")]),
                "",
                Retry::After(Duration::from_secs(15)),
            ),
            // A reset header on a plain server error is not a promise of recovery.
            (
                gh,
                502,
                headers(&[("x-ratelimit-reset", &reset)]),
                "",
                Retry::Backoff,
            ),
            // A reset time already passed.
            (
                gh,
                429,
                headers(&[("x-ratelimit-reset", "1600000000")]),
                "",
                Retry::Backoff,
            ),
            // Epoch milliseconds are read as such, not as a wait of 50,000 years.
            (
                gh,
                429,
                headers(&[("x-ratelimit-reset", &((NOW + 90) * 1000).to_string())]),
                "",
                Retry::After(Duration::from_secs(90)),
            ),
            (
                ForgeKind::GitLab,
                429,
                headers(&[("ratelimit-reset", "1600000000000")]),
                "",
                Retry::Backoff,
            ),
            // Too many digits for any integer type: still a (long) wait, never a parse panic.
            (
                gh,
                503,
                headers(&[("retry-after", "99999999999999999999999999")]),
                "",
                Retry::After(Duration::from_secs(u64::MAX)),
            ),
            (
                gh,
                429,
                headers(&[("x-ratelimit-reset", "99999999999999999999999999")]),
                "",
                Retry::After(Duration::from_secs(u64::MAX / 1000 - NOW)),
            ),
            // The obsolete HTTP date formats, and values that are no wait at all.
            (
                gh,
                503,
                headers(&[("retry-after", "Tuesday, 14-Nov-23 22:14:20 GMT")]),
                "",
                Retry::After(Duration::from_secs(60)),
            ),
            (
                gh,
                503,
                headers(&[("retry-after", "Tue Nov 14 22:14:20 2023")]),
                "",
                Retry::After(Duration::from_secs(60)),
            ),
            (
                gh,
                503,
                headers(&[("retry-after", "-5")]),
                "",
                Retry::Backoff,
            ),
            (
                gh,
                503,
                headers(&[("retry-after", "1.5")]),
                "",
                Retry::Backoff,
            ),
            (
                gh,
                503,
                headers(&[("retry-after", "Tue, 14 Nov 2023 22:00:00 GMT")]),
                "",
                Retry::Backoff,
            ),
        ];
        for (forge, status, h, body, want) in cases {
            let class = classify(forge, status, &h, body.as_bytes(), now());
            assert_eq!(Retry::from(class), want, "{status} {h:?}");
            // Exactly the answers saying the credential's budget is spent are rate limits.
            let rate_limited = status == 429 || (status == 403 && want != Retry::No);
            assert_eq!(
                matches!(class, Class::RateLimited { .. }),
                rate_limited,
                "{status} {h:?}: {class:?}"
            );
        }
    }

    #[test]
    fn messages() {
        assert_eq!(
            forge_message(
                422,
                br#"{"message":"Validation Failed","errors":[{"resource":"Status","code":"custom","field":"description","message":"description is too long (maximum is 140 characters)"}]}"#
            ),
            "Validation Failed [description is too long (maximum is 140 characters)]"
        );
        assert_eq!(
            forge_message(401, br#"{"message":"401 Unauthorized"}"#),
            "Unauthorized"
        );
        assert_eq!(
            forge_message(
                403,
                br#"{"type":"error","error":{"message":"Your credentials lack one or more required privilege scopes."}}"#
            ),
            "Your credentials lack one or more required privilege scopes."
        );
        assert_eq!(
            forge_message(203, b"<html><body>Sign in</body></html>"),
            "Non Authoritative Information"
        );
        assert_eq!(forge_message(404, b""), "Not Found");
        assert_eq!(forge_message(429, b"Retry later\n"), "Retry later");
        assert_eq!(
            forge_message(400, br#"{"message":{"state":["is invalid"]}}"#),
            "{\"state\":[\"is invalid\"]}"
        );
        assert_eq!(
            forge_message(400, br#"{"error":"state does not have a valid value"}"#),
            "state does not have a valid value"
        );
        assert_eq!(forge_message(599, b""), "");
        assert!(
            forge_message(500, "a".repeat(2000).as_bytes())
                .chars()
                .count()
                <= MAX_MESSAGE_CHARS + 1
        );
    }

    #[test]
    fn plan_error_strings() {
        let e = |forge| PlanError::UnsupportedSeverity {
            forge,
            severity: "trace".into(),
        };
        assert_eq!(
            e(ForgeKind::GitHub).to_string(),
            "can't convert to github state"
        );
        assert_eq!(
            e(ForgeKind::GitLab).to_string(),
            "can't convert to gitlab state"
        );
        assert_eq!(
            e(ForgeKind::Bitbucket).to_string(),
            "can't convert to bitbucket state"
        );
        assert_eq!(
            e(ForgeKind::AzureDevOps).to_string(),
            "can't convert to azure devops state"
        );
        assert_eq!(
            PlanError::EmptyStatusId.to_string(),
            "commit status cannot be empty"
        );
        assert_eq!(
            PlanError::StatusIdTooLong {
                forge: ForgeKind::GitHub,
                len: 300,
                max: 255
            }
            .to_string(),
            "commit status ID is 300 characters long, github accepts at most 255"
        );
    }

    #[test]
    fn scrub_and_display() {
        let err = DeliveryError::new(
            ForgeKind::GitHub,
            Some("could not create commit status"),
            http::Method::POST,
            "https://api.github.com/repos/o/r/statuses/abc".into(),
            Failure::Status {
                status: 401,
                message: "Bad credentials: ghp_x".into(),
                class: Class::Permanent,
            },
        )
        .scrub(&["ghp_x".into(), String::new(), "t".into()]);
        assert_eq!(
            err.to_string(),
            "could not create commit status: POST https://api.github.com/repos/o/r/statuses/abc: 401 Bad credentials: *****"
        );
        assert!(!format!("{err:?}").contains("ghp_x"));
        assert_eq!(err.status(), Some(401));
        assert_eq!(err.retry(), Retry::No);
        assert_eq!(err.class(), Class::Permanent);
    }
}
