//! Command-line flags, with Flux's names and defaults where Flux has the flag.

use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory as _, Parser};

use crate::kube::ApiGroup;
use crate::ops::cli::Progressing;
use crate::ops::cli::{ExplainArgs, SendEventArgs, ValidateArgs};
use crate::ops::goflags::{FlagError, parse_feature_gates, parse_go_bool};
use crate::ops::history::DeliveriesArgs;
use crate::ops::telemetry::LogEncoding;

/// Posts Git commit statuses for Flux events: a drop-in replacement for the commit-status part
/// of Flux's notification-controller.
///
/// With --manifests it runs standalone, reading Provider, Alert and Secret YAML from disk;
/// without it, it runs in Kubernetes.
#[derive(Debug, Clone, Parser)]
#[command(name = "commit-status-controller", version, about, long_about)]
#[command(args_conflicts_with_subcommands = true)]
// Go's flag package: a repeated flag takes its last value (kustomize patches append flags to
// Flux's list). Repeatable flags (`ArgAction::Append`) still collect every value.
#[command(args_override_self = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The address the event endpoint binds to (Flux controllers POST events here).
    #[arg(long, default_value = ":9090", value_name = "ADDR")]
    pub events_addr: String,

    /// The address the metric endpoint binds to.
    #[arg(long, default_value = ":8080", value_name = "ADDR")]
    pub metrics_addr: String,

    /// The address the health endpoint binds to (/healthz, /readyz).
    #[arg(long, default_value = ":9440", value_name = "ADDR")]
    pub health_addr: String,

    /// Interval in which identical events are rate-limited (duplicates get HTTP 429).
    #[arg(long, default_value = "5m", value_parser = parse_go_duration, value_name = "DURATION")]
    pub rate_limit_interval: Duration,

    /// When set, an Alert may only select events from objects in its own namespace.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, default_value = "false", value_name = "BOOL")]
    pub no_cross_namespace_refs: bool,

    /// Log verbosity: trace, debug, info or error.
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub log_level: String,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogEncoding::Json)]
    pub log_encoding: LogEncoding,

    /// Standalone mode: a manifest file, or a directory read recursively for *.yaml/*.yml.
    /// Repeatable. Changes are picked up without a restart.
    #[arg(long, value_name = "PATH")]
    pub manifests: Vec<PathBuf>,

    /// Directory for state that must survive restarts (created if missing).
    #[arg(long, value_name = "PATH")]
    pub data_dir: Option<PathBuf>,

    /// What a `Progressing` event posts: the forge's in-progress state (pending), or nothing,
    /// as Flux does (skip).
    #[arg(long, value_enum, default_value_t = Progressing::Pending)]
    pub progressing_status: Progressing,

    /// Deliveries not landed within this long are recorded as expired.
    #[arg(long, default_value = "24h", value_parser = parse_go_duration, value_name = "DURATION")]
    pub delivery_max_age: Duration,

    /// Pending deliveries above which the event API answers 503 with Retry-After (Flux's event
    /// recorders retry 5xx).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub max_pending: usize,

    /// Upper bound of the first retry's wait; each retry doubles it (with full jitter).
    /// Flux's default; in Flux it paces Receiver reconciles.
    #[arg(long, default_value = "750ms", value_parser = parse_go_duration, value_name = "DURATION")]
    pub min_retry_delay: Duration,

    /// Cap of the retry wait (Flux's default).
    #[arg(long, default_value = "15m", value_parser = parse_go_duration, value_name = "DURATION")]
    pub max_retry_delay: Duration,

    /// Attempts in flight at once against one forge host.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub max_in_flight_per_host: usize,

    /// How long in-flight attempts may take to finish after SIGTERM/SIGINT.
    #[arg(long, default_value = "10s", value_parser = parse_go_duration, value_name = "DURATION")]
    pub graceful_shutdown_timeout: Duration,

    /// This controller's public address (e.g. https://csc.example.com), where the
    /// --pages-addr listener is reachable: every status links to its delivery page,
    /// URL/deliveries/<id>, unless the Provider has a link template.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,

    /// Kubernetes mode: run the finalizer housekeeping in one replica only, elected through a
    /// Lease in $RUNTIME_NAMESPACE (the event API runs in every replica).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, default_value = "false", value_name = "BOOL")]
    pub enable_leader_election: bool,

    /// How long a non-leader waits before taking over an unrenewed lease.
    #[arg(long, default_value = "35s", value_parser = parse_go_duration, value_name = "DURATION")]
    pub leader_election_lease_duration: Duration,

    /// How long the leader keeps trying to renew before giving up leadership.
    #[arg(long, default_value = "30s", value_parser = parse_go_duration, value_name = "DURATION")]
    pub leader_election_renew_deadline: Duration,

    /// How often leadership is retried.
    #[arg(long, default_value = "5s", value_parser = parse_go_duration, value_name = "DURATION")]
    pub leader_election_retry_period: Duration,

    /// Release the lease on shutdown so another replica takes over at once.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, default_value = "true", value_name = "BOOL")]
    pub leader_election_release_on_cancel: bool,

    /// Watch Alerts and Providers in all namespaces (false: only $RUNTIME_NAMESPACE).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, default_value = "true", value_name = "BOOL")]
    pub watch_all_namespaces: bool,

    // --- issue 12: forge request economy ---
    /// Read the commit's statuses before each write and skip the write when the forge already
    /// shows the state, as Flux does (two requests per new status instead of one). Useful when
    /// several controllers write the same statuses to the same repositories.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, default_value = "false", value_name = "BOOL")]
    pub read_before_write: bool,

    // Issue 14: commit statuses healed from the selected objects' state.
    /// Kubernetes mode: also derive each commit status from the Ready condition of the objects
    /// the Alerts select (on start, on change, and every --state-resync-interval), so a lost
    /// event never leaves a wrong status; false: events only, as Flux.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, default_value = "true", value_name = "BOOL")]
    pub heal_from_state: bool,

    /// How often every watched object's state is compared with the posted statuses again.
    #[arg(long, default_value = "10m", value_parser = parse_go_duration, value_name = "DURATION")]
    pub state_resync_interval: Duration,

    // Issue 9: the pages on their own listener; memory bounded by these, never by traffic.
    /// The address the delivery pages (/deliveries, /deliveries/<id>) and GET /api/v1/deliveries
    /// bind to; --public-url points here. The event listener serves only the event API.
    #[arg(long, default_value = ":9797", value_name = "ADDR")]
    pub pages_addr: String,

    /// Connections served at once by each listener (events, pages, health, metrics); further
    /// ones wait in the accept queue until one ends.
    #[arg(long, default_value_t = crate::events::listener::DEFAULT_MAX_CONNECTIONS, value_name = "N")]
    pub max_connections: usize,

    /// Request-body bytes being read or decoded at once across all connections (a decoded
    /// body is counted twice its size); past it the event API answers 503 with Retry-After.
    /// Bytes, or with a Ki/Mi/Gi suffix.
    #[arg(long, default_value = "64Mi", value_parser = parse_bytes, value_name = "BYTES")]
    pub max_body_bytes_in_flight: usize,

    /// Keys the duplicate-event suppression remembers at most; past it the oldest is
    /// forgotten first (counted by commit_status_duplicate_keys_evicted_total).
    #[arg(long, default_value_t = crate::events::ratelimit::DEFAULT_MAX_KEYS, value_name = "N")]
    pub rate_limit_max_keys: usize,

    // --- issue 11: the rest of Flux notification-controller v1.9.3's flags -------------------
    /// Flux's webhook receiver address. Receivers are not part of this controller: accepted,
    /// nothing listens there (logged at start).
    #[arg(long = "receiverAddr", default_value = ":9292", value_name = "ADDR")]
    pub receiver_addr: String,

    /// Flux: concurrent Alert/Provider/Receiver reconciles. Here objects are read by watch
    /// caches, not a reconcile queue, so it has no effect (logged at start when set).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub concurrent: i64,

    /// Label the event API's HTTP metrics with the request path instead of `/` (high
    /// cardinality risk, as in Flux).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool, action = clap::ArgAction::Set, default_value = "false", value_name = "BOOL")]
    pub export_http_path_metrics: bool,

    /// Flux: which Secrets/ConfigMaps Receivers watch. No Receivers here: no effect (logged).
    #[arg(
        long,
        default_value = "reconcile.fluxcd.io/watch=Enabled",
        value_name = "SELECTOR"
    )]
    pub watch_configs_label_selector: String,

    /// Kubernetes mode: the most requests per second sent to the Kubernetes API.
    #[arg(long, default_value_t = 50.0, value_name = "QPS")]
    pub kube_api_qps: f32,

    /// Kubernetes mode: how many requests may go to the Kubernetes API at once above the QPS.
    #[arg(long, default_value_t = 300, value_name = "N")]
    pub kube_api_burst: u32,

    /// Comma-separated `Name=bool` pairs: CacheSecretsAndConfigMaps, DisableConfigWatchers,
    /// ObjectLevelWorkloadIdentity (all off by default). Repeats merge, as in Flux.
    #[arg(long, value_parser = parse_gate_list, action = clap::ArgAction::Append, value_name = "GATES")]
    pub feature_gates: Vec<GateList>,

    /// The most tokens kept (GitHub App installation tokens, Azure workload-identity tokens);
    /// 0 turns the cache off.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub token_cache_max_size: usize,

    /// The longest a token is kept (capped at 1h, as in Flux).
    #[arg(long, default_value = "1h", value_parser = parse_go_duration, value_name = "DURATION")]
    pub token_cache_max_duration: Duration,

    /// Kubernetes mode: the ServiceAccount (in the Provider's namespace) used for workload
    /// identity when a Provider names none. Requires ObjectLevelWorkloadIdentity.
    #[arg(long, default_value = "", value_name = "NAME")]
    pub default_service_account: String,
    // --- end issue 11 ---------------------------------------------------------------------------

    // Issue 13: forwarding to another event receiver.
    /// Forward every accepted event, unchanged (same body and Content-Type), to this URL, e.g.
    /// Flux's notification-controller. Repeatable. Forwards are stored and retried like
    /// deliveries.
    #[arg(long, value_name = "URL")]
    pub forward_events_to: Vec<String>,

    /// Events waiting to be forwarded above which the event API answers 503 with Retry-After.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub max_pending_forwards: usize,

    /// Body bytes of events waiting to be forwarded above which the event API answers 503
    /// (suffixes Ki, Mi, Gi).
    #[arg(long, default_value = "256Mi", value_parser = parse_bytes, value_name = "BYTES")]
    pub max_pending_forward_bytes: usize,

    // Issue 10: the delivery store and scheduler.
    /// Pending deliveries of one Provider above which events for it are answered 503, so that
    /// one Provider whose forge is down cannot fill the whole queue (default: a quarter of
    /// --max-pending).
    #[arg(long, value_name = "N")]
    pub max_pending_per_provider: Option<usize>,

    // Issue 13: which API group(s) Kubernetes mode watches.
    /// Kubernetes mode: watch Providers and Alerts of Flux's group (notification.toolkit.fluxcd.io,
    /// the drop-in), of ours (notification.commit-status-controller.dev, to run beside Flux's
    /// notification-controller), or both.
    #[arg(long, value_enum, default_value_t = ApiGroup::Flux)]
    pub api_group: ApiGroup,
}

impl Args {
    /// Parses the process arguments with Go's flag rules (`-flag` as `--flag`).
    pub fn parse_go() -> Args {
        Args::parse_from(crate::ops::goflags::normalize_argv(
            &Args::command(),
            std::env::args_os(),
        ))
    }

    /// [`Args::parse_go`] on given arguments (tests).
    pub fn try_parse_go<I, T>(argv: I) -> Result<Args, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString>,
    {
        Args::try_parse_from(crate::ops::goflags::normalize_argv(
            &Args::command(),
            argv.into_iter().map(Into::into),
        ))
    }
}

/// One `--feature-gates` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateList(pub Vec<(String, bool)>);

fn parse_gate_list(s: &str) -> Result<GateList, FlagError> {
    parse_feature_gates(s).map(GateList)
}

/// A Provider's share of `--max-pending` when `--max-pending-per-provider` is not given.
pub const PROVIDER_SHARE_OF_MAX_PENDING: usize = 4;

impl Args {
    /// `--max-pending-per-provider`, or its default: a quarter of `--max-pending` (at least 1).
    pub fn provider_pending_limit(max_pending: usize, given: Option<usize>) -> usize {
        given.unwrap_or((max_pending / PROVIDER_SHARE_OF_MAX_PENDING).max(1))
    }
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Lists recent delivery outcomes (or pending deliveries) from a data directory, or from a
    /// running controller with --server.
    Deliveries(DeliveriesArgs),
    /// Prints the Provider and Alert CustomResourceDefinitions (YAML), of Flux's API group and
    /// of ours (--api-group).
    Crd(CrdArgs),
    /// Checks manifests as the controller would load them; exits non-zero on any problem.
    Validate(ValidateArgs),
    /// Shows what one event would do: which Alerts match (or why not), the commit, and the
    /// exact requests (secrets redacted). Sends nothing unless --send.
    Explain(ExplainArgs),
    /// Posts a Flux-shaped event to a running controller, for trying it out.
    SendEvent(SendEventArgs),
}

// Issue 13: our own API group.
#[derive(Debug, Clone, clap::Args)]
pub struct CrdArgs {
    /// Whose CRDs: Flux's group, ours (notification.commit-status-controller.dev), or both.
    #[arg(long, value_enum, default_value_t = ApiGroup::Both)]
    pub api_group: ApiGroup,
}

/// Parses a byte count: `67108864`, `64Mi`, `512Ki`, `1Gi` (also `KiB`/`MiB`/`GiB`).
pub fn parse_bytes(s: &str) -> Result<usize, FlagError> {
    let err = || FlagError::Size(s.to_owned());
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: usize = s[..digits].parse().map_err(|_| err())?;
    let scale: usize = match &s[digits..] {
        "" => 1,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        _ => return Err(err()),
    };
    n.checked_mul(scale).ok_or_else(err)
}

/// Parses a Go duration (`300ms`, `1.5h`, `2h45m`, `5m`); units ns, us, µs, ms, s, m, h.
pub fn parse_go_duration(s: &str) -> Result<Duration, FlagError> {
    let err = || FlagError::Duration(s.to_owned());
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if end == 0 {
            return Err(err());
        }
        let value: f64 = rest[..end].parse().map_err(|_| err())?;
        rest = &rest[end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_go_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("m").is_err());
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("8KiB"), Ok(8192));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("Mi").is_err());
        assert!(parse_bytes("5MB").is_err());
        assert!(parse_bytes("99999999999999999999Gi").is_err());
        let a = Args::parse_from(["x"]);
        assert_eq!(a.pages_addr, ":9797");
        assert_eq!(a.max_connections, 1000);
        assert_eq!(a.max_body_bytes_in_flight, 64 << 20);
    }

    #[test]
    fn flux_defaults_and_bool_forms() {
        let a = Args::parse_from(["x"]);
        assert_eq!(a.events_addr, ":9090");
        assert_eq!(a.metrics_addr, ":8080");
        assert_eq!(a.health_addr, ":9440");
        assert_eq!(a.rate_limit_interval, Duration::from_secs(300));
        assert!(!a.no_cross_namespace_refs);
        assert_eq!(a.log_encoding, LogEncoding::Json);
        assert_eq!(a.progressing_status, Progressing::Pending);
        assert_eq!(
            Args::provider_pending_limit(a.max_pending, a.max_pending_per_provider),
            2_500
        );
        assert_eq!(Args::provider_pending_limit(1, None), 1);
        assert_eq!(Args::provider_pending_limit(100, Some(100)), 100);
        assert!(Args::parse_from(["x", "--no-cross-namespace-refs"]).no_cross_namespace_refs);
        assert!(Args::parse_from(["x", "--no-cross-namespace-refs=true"]).no_cross_namespace_refs);
        assert!(!Args::parse_from(["x", "--watch-all-namespaces=false"]).watch_all_namespaces);
        let a = Args::parse_from([
            "x",
            "--manifests",
            "a",
            "--manifests=b",
            "--log-encoding=console",
        ]);
        assert_eq!(a.manifests.len(), 2);
        assert_eq!(a.log_encoding, LogEncoding::Console);
    }

    #[test]
    fn go_flag_rules() {
        // Flux v1.9.3's config/manager/deployment.yaml args, then a kustomize-style patch.
        let a = Args::try_parse_go([
            "x",
            "--watch-all-namespaces",
            "--log-level=info",
            "--log-encoding=json",
            "--enable-leader-election",
            "--log-level=debug",
            "-log-level",
            "error",
            "--events-addr=:1",
            "--events-addr",
            ":2",
            "-concurrent=8",
            "--enable-leader-election=false",
            "--export-http-path-metrics",
            "--manifests",
            "a",
            "-manifests=b",
            "--feature-gates=ObjectLevelWorkloadIdentity=true",
            "--feature-gates",
            "CacheSecretsAndConfigMaps=true",
            "--receiverAddr=:9393",
        ])
        .unwrap();
        assert!(a.watch_all_namespaces);
        assert_eq!(a.log_level, "error");
        assert_eq!(a.events_addr, ":2");
        assert_eq!(a.concurrent, 8);
        assert!(!a.enable_leader_election);
        assert!(a.export_http_path_metrics);
        assert_eq!(a.manifests, [PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(a.feature_gates.len(), 2);
        assert_eq!(a.receiver_addr, ":9393");
        // A bool never takes the next argument.
        let a =
            Args::try_parse_go(["x", "--no-cross-namespace-refs", "--log-level=debug"]).unwrap();
        assert!(a.no_cross_namespace_refs);
        assert!(
            Args::try_parse_go(["x", "--watch-all-namespaces=F"])
                .is_ok_and(|a| !a.watch_all_namespaces)
        );
        assert!(Args::try_parse_go(["x", "--watch-all-namespaces=maybe"]).is_err());
        let d = Args::try_parse_go(["x"]).unwrap();
        assert_eq!(d.receiver_addr, ":9292");
        assert_eq!(d.concurrent, 4);
        assert_eq!(d.kube_api_qps, 50.0);
        assert_eq!(d.kube_api_burst, 300);
        assert_eq!(d.token_cache_max_size, 100);
        assert_eq!(d.token_cache_max_duration, Duration::from_secs(3600));
        assert_eq!(d.min_retry_delay, Duration::from_millis(750));
        assert_eq!(d.max_retry_delay, Duration::from_secs(900));
        assert_eq!(
            d.watch_configs_label_selector,
            "reconcile.fluxcd.io/watch=Enabled"
        );
        assert_eq!(d.default_service_account, "");
        assert!(!d.export_http_path_metrics);
        assert!(d.leader_election_release_on_cancel);
        // Subcommands keep working, and a value that looks like a flag is left alone.
        assert!(Args::try_parse_go(["x", "crd"]).is_ok());
        let argv = crate::ops::goflags::normalize_argv(
            &Args::command(),
            ["x", "-public-url", "-log-level", "-log-level=info"].map(Into::into),
        );
        assert_eq!(
            argv,
            ["x", "--public-url", "-log-level", "--log-level=info"]
        );
    }
}
