//! Kubernetes Events on Alerts, with Flux's reasons, rate-limited so a broken provider cannot
//! flood the API server: the same (Alert, reason, message) at most once per window, and a cap
//! on events per second overall.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::hooks::Notices;

/// An identical event is not repeated within this window.
const REPEAT_WINDOW: Duration = Duration::from_secs(300);
/// Events published per second at most; beyond that they are dropped (and logged).
const MAX_PER_SECOND: u32 = 10;
/// Events waiting to be published; beyond that new ones are dropped.
const QUEUE: usize = 1024;

struct Notice {
    namespace: String,
    name: String,
    type_: EventType,
    reason: &'static str,
    action: &'static str,
    message: String,
    kind: &'static str,
    api_version: String,
}

pub struct KubeNotices {
    tx: mpsc::Sender<Notice>,
    /// The apiVersion of each watched object (`Kind/namespace/name`), so an Event regards the
    /// object in its own group (Flux's or ours).
    api_versions: std::sync::RwLock<HashMap<String, String>>,
    /// For an object not (yet) seen: the first watched group's.
    default_api_version: String,
}

impl KubeNotices {
    pub fn start(
        client: Client,
        default_api_version: String,
        shutdown: CancellationToken,
        tasks: &mut JoinSet<()>,
    ) -> Arc<KubeNotices> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let reporter = Reporter {
            controller: super::CONTROLLER_NAME.into(),
            instance: std::env::var("POD_NAME")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok()),
        };
        tasks.spawn(publish(Recorder::new(client, reporter), rx, shutdown));
        Arc::new(KubeNotices {
            tx,
            api_versions: Default::default(),
            default_api_version,
        })
    }

    /// Records the apiVersion of every watched object (`Kind/namespace/name` → apiVersion).
    pub fn set_api_versions(&self, map: HashMap<String, String>) {
        *self.api_versions.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    fn api_version(&self, kind: &str, namespace: &str, name: &str) -> String {
        self.api_versions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&format!("{kind}/{namespace}/{name}"))
            .cloned()
            .unwrap_or_else(|| self.default_api_version.clone())
    }

    /// A Normal event, e.g. Flux's `Migration` on Alerts.
    pub fn normal(
        &self,
        kind: &'static str,
        namespace: &str,
        name: &str,
        reason: &'static str,
        message: String,
    ) {
        self.send(Notice {
            api_version: self.api_version(kind, namespace, name),
            namespace: namespace.into(),
            name: name.into(),
            type_: EventType::Normal,
            reason,
            action: reason,
            message,
            kind,
        });
    }

    /// A Warning on any of our objects (`Provider` or `Alert`).
    pub fn warn_on(
        &self,
        kind: &'static str,
        namespace: &str,
        name: &str,
        reason: &'static str,
        message: String,
    ) {
        self.send(Notice {
            api_version: self.api_version(kind, namespace, name),
            namespace: namespace.into(),
            name: name.into(),
            type_: EventType::Warning,
            reason,
            action: reason,
            message,
            kind,
        });
    }

    fn send(&self, n: Notice) {
        if self.tx.try_send(n).is_err() {
            tracing::warn!("too many Kubernetes events queued; dropping one");
        }
    }
}

impl Notices for KubeNotices {
    fn warning(&self, alert: &str, reason: &'static str, message: String) {
        let (ns, name) = alert.split_once('/').unwrap_or(("", alert));
        self.warn_on("Alert", ns, name, reason, message);
    }
}

async fn publish(recorder: Recorder, mut rx: mpsc::Receiver<Notice>, shutdown: CancellationToken) {
    let mut seen: HashMap<(String, String, &'static str, String), Instant> = HashMap::new();
    let mut window = Instant::now();
    let mut sent = 0u32;
    loop {
        let n = tokio::select! {
            n = rx.recv() => match n { Some(n) => n, None => return },
            () = shutdown.cancelled() => return,
        };
        let now = Instant::now();
        seen.retain(|_, at| now.duration_since(*at) < REPEAT_WINDOW);
        let key = (
            n.namespace.clone(),
            n.name.clone(),
            n.reason,
            n.message.clone(),
        );
        if seen.contains_key(&key) {
            continue;
        }
        if now.duration_since(window) >= Duration::from_secs(1) {
            window = now;
            sent = 0;
        }
        if sent >= MAX_PER_SECOND {
            tracing::debug!(reason = n.reason, object = %format!("{}/{}", n.namespace, n.name), "Kubernetes event rate limit reached; event dropped");
            continue;
        }
        sent += 1;
        seen.insert(key, now);
        let reference = ObjectReference {
            api_version: Some(n.api_version.clone()),
            kind: Some(n.kind.into()),
            namespace: Some(n.namespace.clone()),
            name: Some(n.name.clone()),
            ..Default::default()
        };
        // The API limits a note to 1 kB.
        let mut note = n.message;
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let ev = Event {
            type_: n.type_,
            reason: n.reason.into(),
            note: Some(note),
            action: n.action.into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, "cannot record a Kubernetes event");
        }
    }
}
