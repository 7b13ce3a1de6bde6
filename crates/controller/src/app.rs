//! Process wiring: builds the shared state once from the flags, starts the servers, the
//! manifest watcher and the delivery workers, and shuts them down in order on SIGTERM/SIGINT.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::routing::get;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use notify::{ClientCache, ProgressingMode};

use crate::config::catalog::Catalog;
use crate::config::catalog::SharedCatalog;
use crate::config::files;
use crate::config::hooks::{LabelSource, LogOnly, Notices};
use crate::delivery;
use crate::delivery::store::Outbox;
use crate::events::ratelimit::Limiter;
use crate::events::server::{self, EventState};
use crate::ops::args::Args;
use crate::ops::cli::Progressing;
use crate::route::RouteSettings;

/// Attempts in flight at once across all forges; per-host limits apply below it.
const MAX_IN_FLIGHT: usize = 256;
/// How often the manifests are re-listed in case a file-system notification was missed.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

pub async fn run(args: Args) -> anyhow::Result<()> {
    let Args {
        events_addr,
        metrics_addr,
        health_addr,
        rate_limit_interval,
        no_cross_namespace_refs,
        log_level: _,
        log_encoding: _,
        manifests,
        data_dir,
        progressing_status,
        delivery_max_age,
        max_pending,
        min_retry_delay,
        max_retry_delay,
        max_in_flight_per_host,
        graceful_shutdown_timeout,
        watch_all_namespaces,
        pages_addr,
        max_connections,
        max_body_bytes_in_flight,
        rate_limit_max_keys,
        max_pending_per_provider,
        enable_leader_election,
        public_url,
        leader_election_lease_duration,
        leader_election_renew_deadline,
        leader_election_retry_period,
        leader_election_release_on_cancel,
        heal_from_state,
        state_resync_interval,
        receiver_addr,
        concurrent,
        export_http_path_metrics,
        watch_configs_label_selector,
        kube_api_qps,
        kube_api_burst,
        feature_gates,
        token_cache_max_size,
        token_cache_max_duration,
        default_service_account,
        forward_events_to,
        max_pending_forwards,
        max_pending_forward_bytes,
        api_group,
        command: _,
        read_before_write,
    } = args;
    let forward_targets = crate::events::forward::parse_targets(&forward_events_to)?;
    let gates = crate::ops::goflags::FeatureGates::resolve(
        &feature_gates.into_iter().map(|g| g.0).collect::<Vec<_>>(),
    )?;
    crate::ops::goflags::check_default_service_account(&gates, &default_service_account)?;
    for gate in gates.on() {
        tracing::info!(gate, "feature gate enabled");
    }
    tracing::info!(
        receiver_addr = %receiver_addr,
        concurrent,
        watch_configs_label_selector = %watch_configs_label_selector,
        cache_secrets_and_config_maps = gates.enabled(crate::ops::goflags::CACHE_SECRETS_AND_CONFIG_MAPS),
        disable_config_watchers = gates.enabled(crate::ops::goflags::DISABLE_CONFIG_WATCHERS),
        "Flux flags accepted without effect: no webhook receivers here (--receiverAddr, --watch-configs-label-selector, DisableConfigWatchers), objects come from watch caches rather than a reconcile queue (--concurrent), and only Secrets that Providers name are watched (CacheSecretsAndConfigMaps)"
    );

    for path in &manifests {
        if !path.exists() {
            bail!("--manifests {}: no such file or directory", path.display());
        }
    }
    if max_body_bytes_in_flight < crate::events::budget::MIN_BUDGET {
        bail!(
            "--max-body-bytes-in-flight {max_body_bytes_in_flight}: must be at least 8Mi (a 3 MiB body counts twice its size, and an eighth is kept for small events)"
        );
    }
    if let Some(dir) = &data_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--data-dir {}: cannot create directory", dir.display()))?;
    }

    let metrics = crate::metrics::Metrics::new();
    metrics.set_export_http_path(export_http_path_metrics);
    let clients = ClientCache::with_token_cache(
        notify::token_cache::TokenCacheSettings {
            max_size: token_cache_max_size,
            max_duration: token_cache_max_duration,
        },
        Some(Arc::new(crate::metrics::TokenCacheMetrics(metrics.clone()))),
    );
    let catalog: SharedCatalog = Arc::new(RwLock::new(Arc::new(Catalog::default())));
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut cluster_client = None;
    let (notices, labels): (Arc<dyn Notices>, Option<Arc<dyn LabelSource>>) = if manifests
        .is_empty()
    {
        let runtime_namespace =
            std::env::var("RUNTIME_NAMESPACE").unwrap_or_else(|_| "flux-system".into());
        let settings = crate::kube::Settings {
            namespace: (!watch_all_namespaces).then(|| runtime_namespace.clone()),
            runtime_namespace,
            leader_election: enable_leader_election.then_some(crate::kube::LeaderElection {
                lease_duration: leader_election_lease_duration,
                renew_deadline: leader_election_renew_deadline,
                retry_period: leader_election_retry_period,
                release_on_cancel: leader_election_release_on_cancel,
            }),
            kube_api_qps,
            kube_api_burst,
            workload_identity: crate::kube::workload_identity::WorkloadIdentitySettings {
                object_level: gates.enabled(crate::ops::goflags::OBJECT_LEVEL_WORKLOAD_IDENTITY),
                default_service_account: Some(default_service_account.clone())
                    .filter(|s| !s.is_empty()),
            },
            groups: api_group,
        };
        tracing::info!(
            namespace = settings.namespace.as_deref().unwrap_or("(all)"),
            "running in Kubernetes mode"
        );
        let cluster = crate::kube::start(
            settings,
            metrics.clone(),
            catalog.clone(),
            clients.clone(),
            shutdown.clone(),
            &mut tasks,
        )
        .await?;
        cluster_client = Some((cluster.client, cluster.leading));
        (cluster.notices, Some(cluster.labels))
    } else {
        let mut reporter = Reporter {
            reported: Default::default(),
            metrics: metrics.clone(),
        };
        reload(&manifests, &clients, &catalog, &mut reporter);
        tasks.spawn(watch_manifests(
            manifests.clone(),
            clients.clone(),
            catalog.clone(),
            reporter,
            shutdown.clone(),
        ));
        (Arc::new(LogOnly), None)
    };

    let limiter = Arc::new(Limiter::bounded(
        rate_limit_interval,
        rate_limit_max_keys,
        metrics.duplicate_keys_evicted.clone(),
    ));
    {
        let limiter = limiter.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(limiter.interval().max(Duration::from_secs(1)));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => limiter.sweep(),
                    () = shutdown.cancelled() => return,
                }
            }
        });
    }

    let store_errors = metrics.store_errors.clone();
    let (outbox, pending) = Outbox::open(
        data_dir.as_deref(),
        Arc::new(move |e: &crate::delivery::store::StoreError| {
            store_errors
                .get_or_create(&crate::metrics::StoreErrorLabel {
                    error: e.name().into(),
                })
                .inc();
        }),
    )?;
    if data_dir.is_none() {
        tracing::warn!("no --data-dir: accepted deliveries are kept in memory and lost on restart");
    }
    if !pending.is_empty() {
        tracing::info!(
            pending = pending.len(),
            "resuming deliveries accepted before the restart"
        );
    }
    let settings = RouteSettings {
        no_cross_namespace_refs,
        progressing: match progressing_status {
            Progressing::Pending => ProgressingMode::Pending,
            Progressing::Skip => ProgressingMode::Skip,
        },
        object_level_workload_identity: gates
            .enabled(crate::ops::goflags::OBJECT_LEVEL_WORKLOAD_IDENTITY),
        public_url: public_url.as_deref().map(Into::into),
    };
    let delivery_shutdown = CancellationToken::new();
    let (scheduler, deliveries) = delivery::start(
        outbox.clone(),
        catalog.clone(),
        delivery::Settings {
            min_retry_delay,
            max_retry_delay,
            max_age: delivery_max_age,
            max_in_flight: MAX_IN_FLIGHT,
            max_in_flight_per_host,
            progressing: settings.progressing,
            notices: notices.clone(),
            public_url: public_url.clone(),
            metrics: metrics.clone(),
            read_before_write,
            clock: crate::delivery::scheduler::Clock::system(),
        },
        pending,
        delivery_shutdown.clone(),
        graceful_shutdown_timeout,
    );
    let deliveries = tokio::spawn(deliveries);
    let (forwarder, forwards) = if forward_targets.is_empty() {
        (None, None)
    } else {
        tracing::info!(targets = ?forward_targets, "forwarding accepted events");
        let (forwarder, run) = crate::events::forward::Forwarder::start(
            outbox.clone(),
            crate::events::forward::Settings {
                targets: forward_targets,
                policy: crate::delivery::policy::Policy {
                    min_retry_delay,
                    max_retry_delay,
                    max_age: delivery_max_age,
                },
                clock: crate::delivery::scheduler::Clock::system(),
                max_in_flight_per_target: max_in_flight_per_host,
                max_events: max_pending_forwards,
                max_bytes: max_pending_forward_bytes as u64,
                metrics: metrics.clone(),
            },
            delivery_shutdown.clone(),
            graceful_shutdown_timeout,
        )?;
        (Some(forwarder), Some(tokio::spawn(run)))
    };

    let ready = Arc::new(AtomicBool::new(false));
    let events_listener = crate::events::listener::bind(&events_addr)
        .await
        .with_context(|| format!("--events-addr {events_addr}: cannot listen"))?;
    let health_listener = crate::events::listener::bind(&health_addr)
        .await
        .with_context(|| format!("--health-addr {health_addr}: cannot listen"))?;
    let metrics_listener = crate::events::listener::bind(&metrics_addr)
        .await
        .with_context(|| format!("--metrics-addr {metrics_addr}: cannot listen"))?;
    let pages_listener = crate::events::listener::bind(&pages_addr)
        .await
        .with_context(|| format!("--pages-addr {pages_addr}: cannot listen"))?;
    tracing::info!(
        events = %events_listener.local_addr()?,
        pages = %pages_listener.local_addr()?,
        health = %health_listener.local_addr()?,
        metrics = %metrics_listener.local_addr()?,
        "listening"
    );
    let limits = crate::events::listener::Limits {
        max_connections,
        ..Default::default()
    };

    let pages = crate::ops::history_api::router(outbox.clone());
    let event_state = EventState {
        catalog: catalog.clone(),
        limiter,
        body_budget: crate::events::budget::BodyBudget::new(max_body_bytes_in_flight),
        outbox: outbox.clone(),
        scheduler,
        settings,
        max_pending,
        max_pending_per_provider: Args::provider_pending_limit(
            max_pending,
            max_pending_per_provider,
        ),
        notices,
        labels,
        forwarder,
    };
    if let Some((client, leading)) = cluster_client
        && heal_from_state
    {
        crate::kube::heal::start(
            client,
            state_resync_interval,
            event_state.clone(),
            metrics.clone(),
            leading,
            shutdown.clone(),
            &mut tasks,
        );
    }
    let events = server::events_router(event_state);
    let events = events.layer(axum::middleware::from_fn_with_state(
        metrics.clone(),
        crate::metrics::track,
    ));
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(crate::events::listener::serve(
        events_listener,
        events,
        limits,
        shutdown.clone(),
        graceful_shutdown_timeout,
    ));
    servers.spawn(crate::events::listener::serve(
        pages_listener,
        pages,
        limits,
        shutdown.clone(),
        Duration::from_secs(1),
    ));
    servers.spawn(crate::events::listener::serve(
        health_listener,
        crate::ops::health::router(ready.clone(), outbox.clone()),
        limits,
        shutdown.clone(),
        Duration::from_secs(1),
    ));
    {
        // Queue gauges are sampled: a scan of the pending table is cheap at this rate.
        let (metrics, outbox, shutdown) = (metrics.clone(), outbox.clone(), shutdown.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                metrics.queue_depth.set(outbox.pending_len() as i64);
                let o = outbox.clone();
                let oldest = tokio::task::spawn_blocking(move || o.oldest_pending_ms()).await;
                let age = match oldest {
                    Ok(Ok(Some(ms))) => {
                        (crate::delivery::store::now_ms() - ms).max(0) as f64 / 1000.0
                    }
                    _ => 0.0,
                };
                metrics.oldest_pending_seconds.set(age);
            }
        });
    }
    let metrics = Router::new()
        .route("/metrics", get(crate::metrics::serve))
        .with_state(metrics.clone());
    servers.spawn(crate::events::listener::serve(
        metrics_listener,
        metrics,
        limits,
        shutdown.clone(),
        Duration::from_secs(1),
    ));
    ready.store(true, Ordering::Release);

    wait_for_signal().await;
    tracing::info!("shutting down: no new events accepted, finishing in-flight deliveries");
    ready.store(false, Ordering::Release);
    shutdown.cancel();
    while servers.join_next().await.is_some() {}
    delivery_shutdown.cancel();
    let _ = deliveries.await;
    if let Some(forwards) = forwards {
        let _ = forwards.await;
    }
    tasks.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Reports each manifest problem once, not on every reload.
struct Reporter {
    reported: std::collections::BTreeSet<String>,
    metrics: Arc<crate::metrics::Metrics>,
}

fn reload(
    paths: &[PathBuf],
    clients: &ClientCache,
    catalog: &SharedCatalog,
    reporter: &mut Reporter,
) {
    let load = files::load(paths);
    let mut now = std::collections::BTreeSet::new();
    for p in &load.problems {
        let text = p.to_string();
        if !reporter.reported.contains(&text) {
            tracing::error!(file = %p.origin.file.display(), document = p.origin.document, object = p.object.as_deref().unwrap_or(""), field = p.field.as_deref().unwrap_or(""), "invalid manifest skipped: {text}");
        }
        now.insert(text);
    }
    for w in &load.warnings {
        let text = w.to_string();
        if !reporter.reported.contains(&text) {
            tracing::warn!(file = %w.origin.file.display(), document = w.origin.document, object = %w.object, field = %w.field, "{text}");
        }
        now.insert(text);
    }
    let files = load.files;
    let problems = load.problems.len();
    reporter.metrics.set_rejected(load.problems.iter().map(|p| {
        p.object
            .as_deref()
            .and_then(|o| o.split('/').next())
            .unwrap_or("Document")
    }));
    let built = Catalog::build(load.objects, clients);
    for p in built.providers() {
        if let Some(Err(e)) = &p.forge {
            let text = format!("Provider/{}: {e}", p.key());
            if !reporter.reported.contains(&text) {
                tracing::warn!(provider = %p.key(), "provider cannot post commit statuses until fixed: {e}");
            }
            now.insert(text);
        }
    }
    reporter.reported = now;
    let (providers, alerts, secrets) = built.counts();
    *catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(built);
    tracing::info!(
        files,
        providers,
        alerts,
        secrets,
        invalid = problems,
        "manifests loaded"
    );
}

/// Reloads on file-system notifications (fast) and on a periodic re-listing (robust against
/// missed notifications, e.g. ConfigMap symlink swaps).
async fn watch_manifests(
    paths: Vec<PathBuf>,
    clients: ClientCache,
    catalog: SharedCatalog,
    mut reporter: Reporter,
    shutdown: CancellationToken,
) {
    use notify_watch::{RecursiveMode, Watcher};
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let watcher =
        notify_watch::recommended_watcher(move |res: notify_watch::Result<notify_watch::Event>| {
            use notify_watch::EventKind;
            use notify_watch::event::ModifyKind;
            // Reading the manifests produces access (and atime) events; reloading on those
            // would loop forever. Only content, name and existence changes matter.
            let relevant = res.is_ok_and(|e| match e.kind {
                EventKind::Create(_) | EventKind::Remove(_) | EventKind::Any => true,
                EventKind::Modify(ModifyKind::Metadata(_)) => false,
                EventKind::Modify(_) => true,
                EventKind::Access(_) | EventKind::Other => false,
            });
            if relevant {
                let _ = tx.try_send(());
            }
        });
    let _watcher = match watcher {
        Ok(mut w) => {
            for p in &paths {
                let (target, mode) = if p.is_dir() {
                    (p.clone(), RecursiveMode::Recursive)
                } else {
                    // Editors replace files by renaming; watching the directory sees that.
                    (
                        p.parent().map(PathBuf::from).unwrap_or_else(|| ".".into()),
                        RecursiveMode::NonRecursive,
                    )
                };
                let target = if target.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    target
                };
                if let Err(e) = w.watch(&target, mode) {
                    tracing::warn!(path = %target.display(), error = %e, "cannot watch; relying on periodic re-listing");
                }
            }
            Some(w)
        }
        Err(e) => {
            tracing::warn!(error = %e, "file-system notifications unavailable; relying on periodic re-listing");
            None
        }
    };
    let mut last = files::fingerprint(&paths);
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    loop {
        let notified = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = rx.recv() => true,
            _ = poll.tick() => false,
        };
        if notified {
            tokio::time::sleep(files::DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
        }
        let now = files::fingerprint(&paths);
        if now != last || notified {
            last = now;
            let paths = paths.clone();
            let clients = clients.clone();
            let catalog = catalog.clone();
            reporter = tokio::task::spawn_blocking(move || {
                reload(&paths, &clients, &catalog, &mut reporter);
                reporter
            })
            .await
            .expect("manifest reload panicked");
        }
    }
}
