//! Kubernetes mode against a real kube-apiserver and etcd (built by `hack/kube-apiserver.sh`):
//! our CRDs and Flux's, the RBAC from `config/`, the real binary running with the
//! ServiceAccount's token, and a contract-validating stub forge.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::{Client, Config};
use serde_json::{Value, json};
use testkit::{EventReceiver, ForgeKind, StubOptions};

const WAIT: Duration = Duration::from_secs(20);

fn bin_dir() -> PathBuf {
    std::env::var_os("KUBE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/commit-status-controller/k8s-bin"))
}

/// etcd and kube-apiserver as child processes on free ports; killed on drop.
struct ApiServer {
    children: Vec<Child>,
    url: String,
    dir: tempfile::TempDir,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl ApiServer {
    async fn start() -> ApiServer {
        let apiserver = bin_dir().join("kube-apiserver");
        assert!(
            apiserver.exists(),
            "{} missing: run hack/kube-apiserver.sh (CI does)",
            apiserver.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let certs = d.join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        let ok = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(certs.join("sa.key"))
            .arg("2048")
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
        std::fs::write(
            certs.join("tokens.csv"),
            "testtoken,admin,admin,system:masters\n",
        )
        .unwrap();
        let log = |name: &str| std::fs::File::create(d.join(name)).unwrap();
        let etcd = Command::new("etcd")
            .arg(format!("--data-dir={}", d.join("etcd").display()))
            .arg(format!(
                "--listen-client-urls=http://127.0.0.1:{client_port}"
            ))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{client_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=default=http://127.0.0.1:{peer_port}"
            ))
            .arg("--unsafe-no-fsync")
            .stdout(log("etcd.log"))
            .stderr(log("etcd.err"))
            .spawn()
            .expect("etcd (apt-get install etcd-server, or run hack/kube-apiserver.sh)");
        let sa_key = certs.join("sa.key");
        let api = Command::new(&apiserver)
            .arg(format!("--etcd-servers=http://127.0.0.1:{client_port}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={api_port}"))
            .arg(format!("--cert-dir={}", certs.display()))
            .arg(format!(
                "--token-auth-file={}",
                certs.join("tokens.csv").display()
            ))
            .args([
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
            ])
            .arg(format!("--service-account-key-file={}", sa_key.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa_key.display()
            ))
            .args([
                "--service-cluster-ip-range=10.0.0.0/24",
                "--disable-admission-plugins=ServiceAccount",
            ])
            .stdout(log("apiserver.log"))
            .stderr(log("apiserver.err"))
            .spawn()
            .unwrap();
        let server = ApiServer {
            children: vec![etcd, api],
            url: format!("https://127.0.0.1:{api_port}"),
            dir,
        };
        let client = server.client_with_token("testtoken").await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
            if matches!(client.request_text(req).await.as_deref(), Ok("ok")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "apiserver not ready: {}",
                std::fs::read_to_string(server.dir.path().join("apiserver.err"))
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        server
    }

    fn kubeconfig(&self, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: local, cluster: {{server: \"{}\", insecure-skip-tls-verify: true}}}}]\nusers: [{{name: u, user: {{token: \"{token}\"}}}}]\ncontexts: [{{name: local, context: {{cluster: local, user: u, namespace: default}}}}]\ncurrent-context: local\n",
            self.url
        )
    }

    async fn client_with_token(&self, token: &str) -> Client {
        let kc = Kubeconfig::from_yaml(&self.kubeconfig(token)).unwrap();
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap();
        Client::try_from(config).unwrap()
    }

    fn write_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, self.kubeconfig(token)).unwrap();
        path
    }
}

/// Creates every document of a YAML file (or string) through discovery, in `namespace` when
/// the resource is namespaced.
async fn apply_yaml(client: &Client, text: &str, namespace: &str) {
    for doc in text
        .split("\n---")
        .map(str::trim)
        .filter(|d| !d.is_empty() && *d != "---")
    {
        let mut value: Value = serde_saphyr::from_str(doc.trim_start_matches("---")).unwrap();
        if value.is_null() {
            continue;
        }
        let api_version = value["apiVersion"].as_str().unwrap().to_string();
        let kind = value["kind"].as_str().unwrap().to_string();
        let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
        let gvk = GroupVersionKind::gvk(group, version, &kind);
        let (resource, caps) = kube::discovery::pinned_kind(client, &gvk).await.unwrap();
        let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
            value["metadata"]["namespace"] = json!(namespace);
            Api::namespaced_with(client.clone(), namespace, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        let obj: DynamicObject = serde_json::from_value(value).unwrap();
        api.create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("create {kind}: {e}"));
    }
}

async fn wait_crds(client: &Client, names: &[&str]) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in names {
        let cond = kube::runtime::wait::conditions::is_crd_established();
        tokio::time::timeout(
            WAIT,
            kube::runtime::wait::await_condition(crds.clone(), name, cond),
        )
        .await
        .unwrap()
        .unwrap();
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut f: impl FnMut() -> F,
    logs: impl Fn() -> String,
) {
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn objects(ns: &str, stub: &Forge, repo: &str, version: &str, token: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: github-token, namespace: {ns}}}
stringData: {{token: {token}}}
---
apiVersion: notification.toolkit.fluxcd.io/{version}
kind: Provider
metadata: {{name: github, namespace: {ns}}}
spec:
  type: github
  address: {base}/o/{repo}
  secretRef: {{name: github-token}}
---
apiVersion: notification.toolkit.fluxcd.io/{version}
kind: Alert
metadata: {{name: github, namespace: {ns}}}
spec:
  providerRef: {{name: github}}
  eventSources:
    - kind: Kustomization
      name: '*'
"#,
        base = stub.base_url()
    )
}

fn event_in(ns: &str, name: &str, sha: &str, message: &str) -> Value {
    Event::test(ns, name).commit(sha).message(message).to_json()
}

/// A namespaced `v1beta3` Provider or Alert API.
fn notification_api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &kube::api::ApiResource::from_gvk(&GroupVersionKind::gvk(
            "notification.toolkit.fluxcd.io",
            "v1beta3",
            kind,
        )),
    )
}

async fn events_on(client: &Client, ns: &str, kind: &str, name: &str) -> Vec<(String, String)> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &kube::api::ApiResource::from_gvk(&GroupVersionKind::gvk("events.k8s.io", "v1", "Event")),
    );
    let list = api.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|e| e.data["regarding"]["kind"] == kind && e.data["regarding"]["name"] == name)
        .map(|e| {
            (
                e.data["reason"].as_str().unwrap_or_default().to_string(),
                e.data["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

async fn service_account_token(admin: &Client) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "flux-system");
    let req: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
            .unwrap();
    let tr = sas
        .create_token_request("commit-status-controller", &PostParams::default(), &req)
        .await
        .unwrap();
    tr.status.unwrap().token
}

async fn setup_cluster(admin: &Client, crds: &str, crd_names: &[&str]) {
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    for ns in ["flux-system", "apps", "labels", "legacy"] {
        let _ = namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
            )
            .await;
    }
    apply_yaml(admin, crds, "flux-system").await;
    wait_crds(admin, crd_names).await;
}

/// A fresh API server with our CRDs, a Kustomization CRD and the RBAC of `config/rbac`.
async fn cluster(kustomization_crd: &str) -> (ApiServer, Client) {
    let server = ApiServer::start().await;
    let admin = server.client_with_token("testtoken").await;
    let root = repo_root();
    let crds = std::fs::read_to_string(root.join("config/crd/crds.yaml")).unwrap();
    setup_cluster(
        &admin,
        &crds,
        &[
            "providers.notification.toolkit.fluxcd.io",
            "alerts.notification.toolkit.fluxcd.io",
        ],
    )
    .await;
    apply_yaml(&admin, kustomization_crd, "flux-system").await;
    wait_crds(&admin, &["kustomizations.kustomize.toolkit.fluxcd.io"]).await;
    for f in [
        "service_account.yaml",
        "role.yaml",
        "leader_election_role.yaml",
    ] {
        apply_yaml(
            &admin,
            &std::fs::read_to_string(root.join("config/rbac").join(f)).unwrap(),
            "flux-system",
        )
        .await;
    }
    (server, admin)
}

/// The controller binary in Kubernetes mode as pod `pod` of the controller's ServiceAccount
/// (a TokenRequest token), with `args`; also returns that token.
async fn spawn_in_cluster(
    server: &ApiServer,
    admin: &Client,
    pod: &str,
    args: &[String],
) -> (Controller, String) {
    let token = service_account_token(admin).await;
    let kubeconfig = server.write_kubeconfig(&format!("{pod}.kubeconfig"), &token);
    let kc = kubeconfig.display().to_string();
    let c = Controller::spawn(
        args,
        &[
            ("KUBECONFIG", kc.as_str()),
            ("RUNTIME_NAMESPACE", "flux-system"),
            ("POD_NAME", pod),
        ],
    )
    .await;
    (c, token)
}

async fn start_controller(server: &ApiServer, admin: &Client, data: &Path) -> Controller {
    let args = [
        "--enable-leader-election".into(),
        format!("--data-dir={}", data.display()),
        "--min-retry-delay=50ms".into(),
    ];
    let (mut c, token) = spawn_in_cluster(server, admin, "csc-0", &args).await;
    // The Secrets applied to the cluster: the harness's sweep looks for them in the logs and
    // pages, `assert_events_secret_free` in the Events.
    c.add_secret(K8S_TOKEN);
    c.add_secret(&token);
    c
}

/// The forge token of the Secrets these tests apply.
const K8S_TOKEN: &str = "ghp_k8s_token";

/// No Event in any namespace carries a secret.
async fn assert_events_secret_free(admin: &Client) {
    let api: Api<DynamicObject> = Api::all_with(
        admin.clone(),
        &kube::api::ApiResource::from_gvk(&GroupVersionKind::gvk("events.k8s.io", "v1", "Event")),
    );
    let events = api.list(&ListParams::default()).await.unwrap();
    assert!(!events.items.is_empty(), "the tests above produce Events");
    for e in events.items {
        let text = e.data.to_string();
        assert!(!text.contains(K8S_TOKEN), "a token in an Event: {text}");
    }
}

#[tokio::test]
async fn kubernetes_mode_end_to_end() {
    // A stand-in Kustomization CRD, so that matchLabels has an object to read.
    let (server, admin) = cluster(&stand_in_crd(
        "kustomize.toolkit.fluxcd.io",
        "v1",
        "Kustomization",
        "kustomizations",
    ))
    .await;

    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    apply_yaml(
        &admin,
        &objects("apps", &stub, "r", "v1beta3", "ghp_k8s_token"),
        "apps",
    )
    .await;
    let data = tempfile::tempdir().unwrap();
    let c = start_controller(&server, &admin, data.path()).await;

    // Create → status arrives.
    c.post(&event_in("apps", "podinfo", SHA, "m1")).await;
    let logs = || c.logs();
    until(
        "the first status",
        || async { !stub.statuses("o/r", SHA).is_empty() },
        logs,
    )
    .await;
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());

    // The Provider gets Flux's finalizer.
    let providers = notification_api(&admin, "apps", "Provider");
    until(
        "the Provider finalizer",
        || async {
            providers
                .get("github")
                .await
                .map(|p| {
                    p.metadata
                        .finalizers
                        .unwrap_or_default()
                        .contains(&"finalizers.fluxcd.io".to_string())
                })
                .unwrap_or(false)
        },
        logs,
    )
    .await;

    // Update → takes effect.
    providers
        .patch(
            "github",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"address": format!("{}/o/r2", stub.base_url())}})),
        )
        .await
        .unwrap();
    let sha2 = "a1afe267b54f38b46b487f6e938a6fd508278c07";
    until(
        "the updated address",
        || async {
            c.post(&event_in(
                "apps",
                "podinfo",
                sha2,
                &format!("m2 {:?}", Instant::now()),
            ))
            .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            !stub.statuses("o/r2", sha2).is_empty()
        },
        logs,
    )
    .await;

    // A forge error is recorded as a Warning event on the Alert, without the token.
    stub.require_auth("Bearer something-else");
    let sha3 = "bd88a9156325322a124e55a369b59063470310eb";
    c.post(&event_in("apps", "podinfo", sha3, "m3")).await;
    until(
        "a NotificationDispatchFailed event",
        || async {
            events_on(&admin, "apps", "Alert", "github")
                .await
                .iter()
                .any(|(r, n)| r == "NotificationDispatchFailed" && n.contains("401"))
        },
        logs,
    )
    .await;
    let all = events_on(&admin, "apps", "Alert", "github").await;
    assert!(
        all.iter().all(|(_, n)| !n.contains("ghp_k8s_token")),
        "{all:?}"
    );
    stub.require_auth("Bearer ghp_k8s_token");

    // matchLabels against a labelled object.
    apply_yaml(
        &admin,
        &objects("labels", &stub, "labelled", "v1beta3", "ghp_k8s_token"),
        "labels",
    )
    .await;
    let alerts = notification_api(&admin, "labels", "Alert");
    alerts
        .patch("github", &PatchParams::default(), &Patch::Merge(json!({"spec": {"eventSources": [{"kind": "Kustomization", "name": "*", "matchLabels": {"app": "podinfo"}}]}})))
        .await
        .unwrap();
    apply_yaml(&admin, "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {name: podinfo, labels: {app: podinfo}}\nspec: {}\n---\napiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {name: other, labels: {app: other}}\nspec: {}\n", "labels").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sha4 = "8a9156325322a124e55a369b59063470310ebbd8";
    c.post(&event_in("labels", "other", sha4, "m4")).await;
    c.post(&event_in("labels", "podinfo", sha4, "m4")).await;
    until(
        "the labelled object's status",
        || async { !stub.statuses("o/labelled", sha4).is_empty() },
        logs,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let contexts: Vec<_> = stub
        .statuses("o/labelled", sha4)
        .iter()
        .map(|s| s["context"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(contexts.len(), 1, "only the labelled object: {contexts:?}");
    assert!(
        contexts[0].starts_with("kustomization/podinfo/"),
        "{contexts:?}"
    );

    // An Alert carrying Flux's old finalizer loses it, with a Migration event.
    let apps_alerts = notification_api(&admin, "apps", "Alert");
    apply_yaml(&admin, "apiVersion: notification.toolkit.fluxcd.io/v1beta3\nkind: Alert\nmetadata: {name: old, finalizers: [finalizers.fluxcd.io]}\nspec: {providerRef: {name: github}, eventSources: [{kind: Bucket, name: x}]}\n", "apps").await;
    until(
        "the Alert finalizer removal",
        || async {
            apps_alerts
                .get("old")
                .await
                .map(|a| a.metadata.finalizers.unwrap_or_default().is_empty())
                .unwrap_or(false)
        },
        logs,
    )
    .await;
    until(
        "a Migration event",
        || async {
            events_on(&admin, "apps", "Alert", "old")
                .await
                .iter()
                .any(|(r, _)| r == "Migration")
        },
        logs,
    )
    .await;

    // An object the old API server accepted but the CRD's CEL rule forbids: InvalidConfig.
    apply_yaml(&admin, "apiVersion: notification.toolkit.fluxcd.io/v1beta3\nkind: Provider\nmetadata: {name: bad}\nspec: {type: slack, commitStatusExpr: \"'x'\"}\n", "apps").await;
    until(
        "an InvalidConfig event",
        || async {
            events_on(&admin, "apps", "Provider", "bad")
                .await
                .iter()
                .any(|(r, _)| r == "InvalidConfig")
        },
        logs,
    )
    .await;

    // Delete the Alert → its events are no longer dispatched.
    apps_alerts
        .delete("github", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = stub.requests().len();
    c.post(&event_in("apps", "podinfo", SHA, "after delete"))
        .await;
    assert!(
        c.wait_log("no alerts found for the involved object", WAIT)
            .await,
        "{}",
        c.logs()
    );
    assert_eq!(stub.requests().len(), before);

    // The ServiceAccount has what it needs and no more.
    let token = service_account_token(&admin).await;
    let sa = server.client_with_token(&token).await;
    let secrets: Api<Secret> = Api::namespaced(sa.clone(), "apps");
    let denied = secrets
        .delete("github-token", &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(denied.to_string().contains("forbidden"), "{denied}");
    let sa_providers = notification_api(&sa, "apps", "Provider");
    let denied = sa_providers
        .delete("github", &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(denied.to_string().contains("forbidden"), "{denied}");
    // Leader election touches its own Lease only.
    let leases: Api<DynamicObject> = Api::namespaced_with(
        sa.clone(),
        "flux-system",
        &kube::api::ApiResource::from_gvk(&GroupVersionKind::gvk(
            "coordination.k8s.io",
            "v1",
            "Lease",
        )),
    );
    leases
        .get("commit-status-controller-leader-election")
        .await
        .unwrap();
    let denied = leases.get("someone-elses-lease").await.unwrap_err();
    assert!(denied.to_string().contains("forbidden"), "{denied}");
    // Flux's own CRDs (v1.8.4, which also serves v1beta2) instead of ours. Deleting a CRD
    // deletes its objects, and a Provider's finalizer is released by the running controller.
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for name in [
        "providers.notification.toolkit.fluxcd.io",
        "alerts.notification.toolkit.fluxcd.io",
    ] {
        crds.delete(name, &DeleteParams::default()).await.unwrap();
    }
    until(
        "our CRDs to go",
        || async {
            crds.get_opt("alerts.notification.toolkit.fluxcd.io")
                .await
                .unwrap()
                .is_none()
                && crds
                    .get_opt("providers.notification.toolkit.fluxcd.io")
                    .await
                    .unwrap()
                    .is_none()
        },
        || c.logs(),
    )
    .await;
    let mut c = c;
    assert!(c.terminate().success());
    let flux = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flux-crds/v1.8.4");
    for f in ["providers.yaml", "alerts.yaml"] {
        apply_yaml(
            &admin,
            &std::fs::read_to_string(flux.join(f)).unwrap(),
            "flux-system",
        )
        .await;
    }
    wait_crds(
        &admin,
        &[
            "providers.notification.toolkit.fluxcd.io",
            "alerts.notification.toolkit.fluxcd.io",
        ],
    )
    .await;
    apply_yaml(
        &admin,
        &objects("legacy", &stub, "legacy", "v1beta2", "ghp_k8s_token"),
        "legacy",
    )
    .await;
    let c = start_controller(&server, &admin, data.path()).await;
    c.post(&event_in("legacy", "podinfo", SHA, "legacy")).await;
    until(
        "a status for v1beta2 objects under Flux's CRDs",
        || async { !stub.statuses("o/legacy", SHA).is_empty() },
        || c.logs(),
    )
    .await;
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
    assert_events_secret_free(&admin).await;
}

/// A CRD for a Flux kind that keeps whatever it is given (status included, no subresource).
/// Beside Flux (issue 13): Flux's CRDs and ours installed together, chat Providers left to
/// Flux's controller, git Providers in our group; we watch only ours and forward every event.
#[tokio::test]
async fn beside_flux_our_group_only_and_every_event_forwarded() {
    let (server, admin) = cluster(&stand_in_crd(
        "kustomize.toolkit.fluxcd.io",
        "v1",
        "Kustomization",
        "kustomizations",
    ))
    .await;
    wait_crds(
        &admin,
        &[
            "providers.notification.commit-status-controller.dev",
            "alerts.notification.commit-status-controller.dev",
        ],
    )
    .await;
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    // Left in Flux's group: a github Provider we must ignore, and a Slack one that is Flux's.
    apply_yaml(
        &admin,
        &objects("apps", &stub, "flux-left", "v1beta3", K8S_TOKEN),
        "apps",
    )
    .await;
    apply_yaml(
        &admin,
        r#"apiVersion: notification.toolkit.fluxcd.io/v1beta3
kind: Provider
metadata: {name: slack, namespace: apps}
spec: {type: slack, address: "https://hooks.slack.com/services/x"}
---
apiVersion: notification.toolkit.fluxcd.io/v1beta3
kind: Alert
metadata: {name: slack, namespace: apps}
spec:
  providerRef: {name: slack}
  eventSources: [{kind: Kustomization, name: '*'}]
"#,
        "apps",
    )
    .await;
    // Ours: the git Provider and its Alert, converted with the README's one-line sed.
    apply_yaml(
        &admin,
        // (Without the Secret: the one applied above serves both.)
        &objects("apps", &stub, "ours", "v1beta3", K8S_TOKEN)
            .split_once("---\n")
            .unwrap()
            .1
            .replace(
                "notification.toolkit.fluxcd.io/",
                "notification.commit-status-controller.dev/",
            ),
        "apps",
    )
    .await;
    let receiver = EventReceiver::start().await;
    let data = tempfile::tempdir().unwrap();
    let args = [
        format!("--data-dir={}", data.path().display()),
        "--min-retry-delay=50ms".into(),
        "--api-group=own".into(),
        format!("--forward-events-to={}", receiver.url()),
    ];
    let (mut c, token) = spawn_in_cluster(&server, &admin, "csc-beside", &args).await;
    c.add_secret(K8S_TOKEN);
    c.add_secret(&token);

    let event = event_in("apps", "podinfo", SHA, "beside flux");
    let sent = serde_json::to_vec(&event).unwrap();
    let answer = c.post_raw("POST", "/", sent.clone()).await;
    assert_eq!(answer.status(), 202);
    let logs = || c.logs();
    until(
        "the status from our group's Provider",
        || async { !stub.statuses("o/ours", SHA).is_empty() },
        logs,
    )
    .await;
    assert!(
        receiver
            .wait_for(Duration::from_secs(20), |r| !r.is_empty())
            .await,
        "the event reaches Flux's controller: {}",
        c.logs()
    );
    let got = receiver.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].body, sent, "forwarded unchanged");
    // Our group's Provider gets the finalizer too.
    let ours: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        "apps",
        &kube::api::ApiResource::from_gvk(&GroupVersionKind::gvk(
            "notification.commit-status-controller.dev",
            "v1beta3",
            "Provider",
        )),
    );
    until(
        "the finalizer on our group's Provider",
        || async {
            ours.get("github").await.is_ok_and(|p| {
                p.metadata
                    .finalizers
                    .unwrap_or_default()
                    .contains(&"finalizers.fluxcd.io".to_string())
            })
        },
        logs,
    )
    .await;
    // Flux's group is not ours to serve: its github Provider posts nothing, its Providers get
    // no finalizer from us.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stub.statuses("o/ours", SHA).len(), 1);
    assert!(stub.statuses("o/flux-left", SHA).is_empty());
    let flux_provider = notification_api(&admin, "apps", "Provider")
        .get("github")
        .await
        .unwrap();
    assert!(
        flux_provider
            .metadata
            .finalizers
            .unwrap_or_default()
            .is_empty(),
        "Flux's objects are left to Flux"
    );
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
    drop(c);
}

fn stand_in_crd(group: &str, version: &str, kind: &str, plural: &str) -> String {
    format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: {plural}.{group}}}
spec:
  group: {group}
  names: {{kind: {kind}, listKind: {kind}List, plural: {plural}, singular: {singular}}}
  scope: Namespaced
  versions:
    - name: {version}
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"#,
        singular = kind.to_lowercase()
    )
}

// === Commit statuses healed from the objects' state (no event sent unless said) ===

const HEAL_A: &str = "a1afe267b54f38b46b487f6e938a6fd508278c07";
const HEAL_B: &str = "bd88a9156325322a124e55a369b59063470310eb";
const HEAL_D: &str = "8a9156325322a124e55a369b59063470310ebbd8";
const HEAL_L: &str = "0c8a9156325322a124e55a369b59063470310ebb";
const HEAL_X: &str = "ffd88a9156325322a124e55a369b59063470310e";
const HEAL_W: &str = "9156325322a124e55a369b59063470310ebbd88a";
const HEAL_E1: &str = "e1a9156325322a124e55a369b59063470310ebbd";
const HEAL_E2: &str = "e2a9156325322a124e55a369b59063470310ebbd";
const HEAL_C: &str = "c0a9156325322a124e55a369b59063470310ebbd";
const HEAL_A2: &str = "2a1afe267b54f38b46b487f6e938a6fd508278c0";

fn kustomizations_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &kube::api::ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("kustomize.toolkit.fluxcd.io", "v1", "Kustomization"),
            "kustomizations",
        ),
    )
}

/// The status kustomize-controller writes, through the status subresource.
async fn set_ready(
    api: &Api<DynamicObject>,
    name: &str,
    status: &str,
    reason: &str,
    message: &str,
    applied: Option<&str>,
    attempted: &str,
) {
    let mut s = json!({
        "conditions": [{
            "type": "Ready", "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-12-01T00:00:00Z", "observedGeneration": 1,
        }],
        "lastAttemptedRevision": format!("main@sha1:{attempted}"),
        "observedGeneration": 1,
    });
    if let Some(a) = applied {
        s["lastAppliedRevision"] = json!(format!("main@sha1:{a}"));
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": s })),
    )
    .await
    .unwrap_or_else(|e| panic!("status of {name}: {e}"));
}

/// Ready=True after applying `sha`.
async fn set_applied(api: &Api<DynamicObject>, name: &str, sha: &str) {
    let message = format!("Applied revision: main@sha1:{sha}");
    set_ready(
        api,
        name,
        "True",
        "ReconciliationSucceeded",
        &message,
        Some(sha),
        sha,
    )
    .await;
}

async fn start_healing_controller(
    server: &ApiServer,
    admin: &Client,
    data: &Path,
    extra: &[&str],
) -> Controller {
    let mut args = vec![
        "--enable-leader-election".into(),
        format!("--data-dir={}", data.display()),
        "--min-retry-delay=50ms".into(),
        "--leader-election-retry-period=1s".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    spawn_in_cluster(server, admin, "csc-heal", &args).await.0
}

async fn until_status(stub: &Forge, sha: &str, what: &str, c: &Controller) {
    until(
        what,
        || async { !stub.statuses("o/r", sha).is_empty() },
        || c.logs(),
    )
    .await;
}

fn states(stub: &Forge, sha: &str) -> Vec<String> {
    stub.statuses("o/r", sha)
        .iter()
        .map(|s| s["state"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn posts_for(stub: &Forge, sha: &str) -> usize {
    stub.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains(sha))
        .count()
}

async fn metric(c: &Controller, line_start: &str) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", c.metrics_url))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn commit_statuses_heal_from_the_objects_state() {
    let kustomize_crd = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/flux-crds/kustomize-controller-v1.9.4/kustomizations.yaml"),
    )
    .unwrap();
    let (server, admin) = cluster(&kustomize_crd).await;
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    // One Alert: `podinfo` by name, and any Kustomization labelled team=a.
    let objects = objects("apps", &stub, "r", "v1beta3", "ghp_heal_token").replace(
        "    - kind: Kustomization\n      name: '*'\n",
        "    - kind: Kustomization\n      name: podinfo\n    - kind: Kustomization\n      name: '*'\n      matchLabels: {team: a}\n",
    );
    apply_yaml(&admin, &objects, "apps").await;
    let spec =
        "spec: {interval: 10m, prune: true, sourceRef: {kind: GitRepository, name: podinfo}}";
    apply_yaml(
        &admin,
        &format!(
            "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {{name: podinfo}}\n{spec}\n---\napiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {{name: labelled, labels: {{team: a}}}}\n{spec}\n---\napiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {{name: other, labels: {{team: b}}}}\n{spec}\n"
        ),
        "apps",
    )
    .await;
    let ks = kustomizations_api(&admin, "apps");
    set_applied(&ks, "podinfo", HEAL_A).await;
    set_applied(&ks, "labelled", HEAL_L).await;
    set_applied(&ks, "other", HEAL_X).await;
    let providers = notification_api(&admin, "apps", "Provider");
    let uid = providers.get("github").await.unwrap().metadata.uid.unwrap();
    let context = format!("kustomization/podinfo/{}", uid.split('-').next().unwrap());

    // Ready=True at A: success on A after start, without any event.
    let data = tempfile::tempdir().unwrap();
    let c = start_healing_controller(&server, &admin, data.path(), &[]).await;
    until_status(&stub, HEAL_A, "success on A from the state", &c).await;
    let a = stub.statuses("o/r", HEAL_A);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["state"], "success");
    assert_eq!(a[0]["context"], context.as_str());
    assert_eq!(a[0]["description"], "reconciliation succeeded");
    until_status(&stub, HEAL_L, "success for the labelled object", &c).await;

    // Ready=False at B: failure on B, the reason as description.
    set_ready(
        &ks,
        "podinfo",
        "False",
        "HealthCheckFailed",
        "timeout waiting for: [Deployment/apps/podinfo status: 'InProgress']",
        Some(HEAL_A),
        HEAL_B,
    )
    .await;
    until_status(&stub, HEAL_B, "failure on B from the state", &c).await;
    let b = stub.statuses("o/r", HEAL_B);
    assert_eq!(b[0]["state"], "failure", "{b:?}");
    assert_eq!(b[0]["description"], "health check failed");
    assert_eq!(b[0]["context"], context.as_str());

    // Ready=Unknown/Progressing: the in-progress state, only for a revision not applied yet
    // and without a final state. Retrying B, which failed, posts nothing; a new C is pending
    // until it is applied.
    let progressing = |attempted| {
        set_ready(
            &ks,
            "podinfo",
            "Unknown",
            "Progressing",
            "Reconciliation in progress",
            Some(HEAL_A),
            attempted,
        )
    };
    let matched = c.count_log("matches the statuses last posted");
    progressing(HEAL_B).await;
    until(
        "the retry of B looked at",
        || async { c.count_log("matches the statuses last posted") > matched },
        || c.logs(),
    )
    .await;
    progressing(HEAL_C).await;
    until_status(&stub, HEAL_C, "pending on C from the state", &c).await;
    assert_eq!(states(&stub, HEAL_C), ["pending"]);
    assert_eq!(
        states(&stub, HEAL_B),
        ["failure"],
        "B keeps its final state"
    );
    set_applied(&ks, "podinfo", HEAL_C).await;
    until(
        "success on C",
        || async { states(&stub, HEAL_C).len() == 2 },
        || c.logs(),
    )
    .await;
    assert_eq!(states(&stub, HEAL_C), ["pending", "success"]);

    // Changes to other fields are not looked at.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let looked = c.count_log("looked at the state of objects");
    ks.patch(
        "podinfo",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"unrelated": "x"}}, "spec": {"interval": "5m"}}),
        ),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(c.count_log("looked at the state of objects"), looked);

    // An event and a state change that agree make one request: at once, the event first,
    // or the state first.
    for (sha, order) in [
        (HEAL_D, "together"),
        (HEAL_E1, "event first"),
        (HEAL_E2, "state first"),
    ] {
        let mut e = success_event("podinfo", sha);
        e["involvedObject"]["namespace"] = json!("apps");
        if order != "event first" {
            set_applied(&ks, "podinfo", sha).await;
        }
        if order == "state first" {
            until_status(&stub, sha, "the state's status", &c).await;
        }
        assert_eq!(c.post(&e).await.status(), 202);
        if order == "event first" {
            until_status(&stub, sha, "the event's status", &c).await;
            set_applied(&ks, "podinfo", sha).await;
        }
        until_status(&stub, sha, "success", &c).await;
        // Both have been looked at by now; a second request would come within this time.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            posts_for(&stub, sha),
            1,
            "{order}: {:?}",
            stub.statuses("o/r", sha)
        );
    }

    // The unselected object got nothing; no request broke the contract.
    assert!(stub.statuses("o/r", HEAL_X).is_empty());
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
    assert!(
        metric(
            &c,
            "commit_status_healed_from_state_total{kind=\"Kustomization\"}"
        )
        .await
        .is_some_and(|n| n >= 3.0),
        "{}",
        c.metrics().await
    );
    assert_eq!(
        metric(&c, "commit_status_watched_objects{kind=\"Kustomization\"}").await,
        Some(2.0),
        "podinfo and labelled, not other"
    );
    assert!(!c.logs().contains("ghp_heal_token"));

    // A restart with the state unchanged: no request at all, also over several resyncs.
    let mut c = c;
    assert!(c.terminate().success());
    let before = stub.requests().len();
    let c = start_healing_controller(
        &server,
        &admin,
        data.path(),
        &["--state-resync-interval=1s"],
    )
    .await;
    until(
        "the state looked at after the restart",
        || async { c.count_log("looked at the state of objects") >= 3 },
        || c.logs(),
    )
    .await;
    assert_eq!(stub.requests().len(), before, "{}", c.logs());

    // Only the leader heals: a second replica serves events but watches nothing.
    let token = service_account_token(&admin).await;
    let kc = server.write_kubeconfig("second.kubeconfig", &token);
    let kc = kc.display().to_string();
    let second = Controller::spawn(
        &["--enable-leader-election".into()],
        &[
            ("KUBECONFIG", kc.as_str()),
            ("RUNTIME_NAMESPACE", "flux-system"),
            ("POD_NAME", "csc-heal-2"),
        ],
    )
    .await;

    // Any Flux kind: a HelmRelease's chart version is no commit and is skipped, as its events
    // are (no warning either); one carrying `event.toolkit.fluxcd.io/commit` gets its status.
    apply_yaml(
        &admin,
        &stand_in_crd(
            "helm.toolkit.fluxcd.io",
            "v2",
            "HelmRelease",
            "helmreleases",
        ),
        "flux-system",
    )
    .await;
    apply_yaml(
        &admin,
        &stand_in_crd(
            "source.toolkit.fluxcd.io",
            "v1",
            "GitRepository",
            "gitrepositories",
        ),
        "flux-system",
    )
    .await;
    wait_crds(
        &admin,
        &[
            "helmreleases.helm.toolkit.fluxcd.io",
            "gitrepositories.source.toolkit.fluxcd.io",
        ],
    )
    .await;
    let released = |name: &str, annotations: &str| {
        format!(
            "apiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata: {{name: {name}, annotations: {{{annotations}}}}}\nspec: {{}}\nstatus: {{conditions: [{{type: Ready, status: 'True', reason: UpgradeSucceeded, message: Helm upgrade succeeded}}], lastAttemptedRevision: 6.5.0}}\n"
        )
    };
    apply_yaml(&admin, &released("chart", ""), "apps").await;
    apply_yaml(
        &admin,
        &released(
            "annotated",
            &format!("event.toolkit.fluxcd.io/commit: {HEAL_W}"),
        ),
        "apps",
    )
    .await;
    // A kind the controller may not list: logged once, and its statuses follow events.
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(admin.clone());
    let mut role = roles.get("commit-status-controller").await.unwrap();
    for rule in role.rules.iter_mut().flatten() {
        if rule.api_groups.as_deref() == Some(&["source.toolkit.fluxcd.io".to_string()][..]) {
            rule.verbs = vec!["get".into()];
        }
    }
    roles
        .replace("commit-status-controller", &PostParams::default(), &role)
        .await
        .unwrap();
    let alerts = notification_api(&admin, "apps", "Alert");
    alerts
        .patch(
            "github",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"eventSources": [
                {"kind": "Kustomization", "name": "podinfo"},
                {"kind": "HelmRelease", "name": "*"},
                {"kind": "GitRepository", "name": "*"},
            ]}})),
        )
        .await
        .unwrap();
    until_status(&stub, HEAL_W, "the annotated HelmRelease's status", &c).await;
    let w = stub.statuses("o/r", HEAL_W);
    assert_eq!(
        w[0]["context"].as_str().unwrap().split('/').next(),
        Some("helmrelease")
    );
    assert_eq!(w[0]["description"], "upgrade succeeded");
    until(
        "the refused list reported",
        || async { c.count_log("its commit statuses follow events only") > 0 },
        || c.logs(),
    )
    .await;
    let git = Event::test("apps", "podinfo")
        .object_kind("GitRepository", "source.toolkit.fluxcd.io/v1")
        .reason("Succeeded")
        .message("stored artifact for commit")
        .only_meta(&[("event.toolkit.fluxcd.io/commit", HEAL_X)])
        .to_json();
    assert_eq!(c.post(&git).await.status(), 202);
    until_status(&stub, HEAL_X, "the GitRepository event's status", &c).await;
    // Several resyncs later: still reported once, the chart version never posted nor warned
    // about, and the second replica never healed anything.
    let seen = c.count_log("looked at the state of objects");
    until(
        "two more resyncs",
        || async { c.count_log("looked at the state of objects") >= seen + 2 },
        || c.logs(),
    )
    .await;
    assert_eq!(
        c.count_log("its commit statuses follow events only"),
        1,
        "{}",
        c.logs()
    );
    assert!(
        events_on(&admin, "apps", "Alert", "github")
            .await
            .is_empty(),
        "{:?}",
        events_on(&admin, "apps", "Alert", "github").await
    );
    assert_eq!(
        metric(&c, "commit_status_watched_objects{kind=\"HelmRelease\"}").await,
        Some(2.0)
    );
    assert_eq!(
        second.count_log("healing commit statuses"),
        0,
        "{}",
        second.logs()
    );
    assert_eq!(second.count_log("watching the state"), 0);
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());

    // Turned off: events only, as Flux.
    let mut c = c;
    assert!(c.terminate().success());
    let c =
        start_healing_controller(&server, &admin, data.path(), &["--heal-from-state=false"]).await;
    set_applied(&ks, "podinfo", HEAL_A2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(stub.statuses("o/r", HEAL_A2).is_empty(), "{}", c.logs());
    assert_eq!(c.count_log("watching the state of selected objects"), 0);
}

// --- issue 11: Azure DevOps workload identity against the real API server ------------------

/// What the stand-in Entra token endpoint saw: the tenant of the path, the form, and whether
/// the client assertion was a ServiceAccount token the API server signed.
#[derive(Clone, Debug)]
struct EntraCall {
    tenant: String,
    form: std::collections::BTreeMap<String, String>,
    assertion_subject: Result<String, String>,
}

/// A token endpoint (`/<tenant>/oauth2/v2.0/token`) that verifies each client assertion
/// against the API server's JWKS (signature, issuer, `api://AzureADTokenExchange` audience)
/// and answers with numbered access tokens.
struct EntraStub {
    url: String,
    calls: std::sync::Arc<std::sync::Mutex<Vec<EntraCall>>>,
}

impl EntraStub {
    async fn start(jwks: jsonwebtoken::jwk::JwkSet) -> EntraStub {
        use http_body_util::BodyExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let calls: std::sync::Arc<std::sync::Mutex<Vec<EntraCall>>> = Default::default();
        let seen = calls.clone();
        let jwks = std::sync::Arc::new(jwks);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, jwks) = (seen.clone(), jwks.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (seen, jwks) = (seen.clone(), jwks.clone());
                            async move {
                                let path = req.uri().path().to_owned();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let form: std::collections::BTreeMap<String, String> =
                                    url::form_urlencoded::parse(&body).into_owned().collect();
                                let tenant = path
                                    .strip_suffix("/oauth2/v2.0/token")
                                    .unwrap_or_default()
                                    .trim_start_matches('/')
                                    .to_owned();
                                let assertion_subject = verify_assertion(
                                    &jwks,
                                    form.get("client_assertion")
                                        .map(String::as_str)
                                        .unwrap_or_default(),
                                );
                                let n = {
                                    let mut calls = seen.lock().unwrap();
                                    calls.push(EntraCall {
                                        tenant,
                                        form,
                                        assertion_subject: assertion_subject.clone(),
                                    });
                                    calls.len()
                                };
                                let (status, body) = match assertion_subject {
                                    Ok(_) => (
                                        200,
                                        json!({"token_type": "Bearer", "expires_in": 3599, "access_token": format!("entra-access-{n}")}),
                                    ),
                                    Err(e) => (
                                        400,
                                        json!({"error": "invalid_client", "error_description": format!("AADSTS700211: {e}")}),
                                    ),
                                };
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .header("content-type", "application/json")
                                        .body(http_body_util::Full::new(bytes::Bytes::from(
                                            serde_json::to_vec(&body).unwrap(),
                                        )))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        EntraStub { url, calls }
    }

    fn calls(&self) -> Vec<EntraCall> {
        self.calls.lock().unwrap().clone()
    }
}

/// The `sub` of a ServiceAccount token the API server signed for the Azure audience.
fn verify_assertion(jwks: &jsonwebtoken::jwk::JwkSet, jwt: &str) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Claims {
        sub: String,
    }
    let header = jsonwebtoken::decode_header(jwt).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = jwks.find(&kid).ok_or("unknown kid")?;
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&["api://AzureADTokenExchange"]);
    validation.set_issuer(&["https://kubernetes.default.svc"]);
    jsonwebtoken::decode::<Claims>(jwt, &key, &validation)
        .map(|d| d.claims.sub)
        .map_err(|e| e.to_string())
}

async fn api_server_jwks(admin: &Client) -> jsonwebtoken::jwk::JwkSet {
    let req = http::Request::get("/openid/v1/jwks")
        .body(Vec::new())
        .unwrap();
    serde_json::from_str(&admin.request_text(req).await.unwrap()).unwrap()
}

fn azure_objects(ns: &str, name: &str, stub: &Forge, service_account: Option<&str>) -> String {
    let sa = service_account.map_or(String::new(), |s| format!("  serviceAccountName: {s}\n"));
    format!(
        r#"apiVersion: notification.toolkit.fluxcd.io/v1beta3
kind: Provider
metadata: {{name: {name}, namespace: {ns}}}
spec:
  type: azuredevops
  address: {base}/org/proj/_git/{name}
{sa}---
apiVersion: notification.toolkit.fluxcd.io/v1beta3
kind: Alert
metadata: {{name: {name}, namespace: {ns}}}
spec:
  providerRef: {{name: {name}}}
  eventSources:
    - kind: Kustomization
      name: '*'
"#,
        base = stub.base_url()
    )
}

async fn annotated_service_account(admin: &Client, ns: &str, name: &str, client_id: &str) {
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let sa = serde_json::from_value(json!({"metadata": {"name": name, "annotations": {
        "azure.workload.identity/client-id": client_id,
        "azure.workload.identity/tenant-id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    }}}))
    .unwrap();
    let _ = sas.create(&PostParams::default(), &sa).await;
}

#[tokio::test]
async fn azure_devops_workload_identity() {
    let (server, admin) = cluster(&stand_in_crd(
        "kustomize.toolkit.fluxcd.io",
        "v1",
        "Kustomization",
        "kustomizations",
    ))
    .await;
    let entra = EntraStub::start(api_server_jwks(&admin).await).await;
    let stub = Forge::start(ForgeKind::AzureDevOps, StubOptions::default()).await;
    annotated_service_account(
        &admin,
        "apps",
        "ado-writer",
        "11111111-2222-3333-4444-555555555555",
    )
    .await;
    // The controller's own ServiceAccount, for Providers that name none.
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "flux-system");
    sas.patch(
        "commit-status-controller",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {
            "azure.workload.identity/client-id": "99999999-8888-7777-6666-555555555555",
            "azure.workload.identity/tenant-id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
        }}})),
    )
    .await
    .unwrap();
    // Two Providers with the same ServiceAccount, one with the controller's identity, and one
    // naming a ServiceAccount that has no Azure annotations.
    for (name, sa) in [
        ("ado-a", Some("ado-writer")),
        ("ado-b", Some("ado-writer")),
        ("ado-own", None),
        ("ado-bare", Some("default-less")),
    ] {
        apply_yaml(&admin, &azure_objects("apps", name, &stub, sa), "apps").await;
    }
    let sas_apps: Api<ServiceAccount> = Api::namespaced(admin.clone(), "apps");
    let _ = sas_apps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "default-less"}})).unwrap(),
        )
        .await;

    let data = tempfile::tempdir().unwrap();
    let token = service_account_token(&admin).await;
    let kubeconfig = server.write_kubeconfig("wi.kubeconfig", &token);
    let kc = kubeconfig.display().to_string();
    let c = Controller::spawn(
        &[
            format!("--data-dir={}", data.path().display()),
            "--min-retry-delay=50ms".into(),
            "--max-retry-delay=200ms".into(),
            "--feature-gates=ObjectLevelWorkloadIdentity=true".into(),
        ],
        &[
            ("KUBECONFIG", kc.as_str()),
            ("RUNTIME_NAMESPACE", "flux-system"),
            ("AZURE_AUTHORITY_HOST", entra.url.as_str()),
        ],
    )
    .await;
    c.post(&event_in("apps", "podinfo", SHA, "wi")).await;
    let logs = || c.logs();
    until(
        "three statuses",
        || async {
            ["ado-a", "ado-b", "ado-own"]
                .iter()
                .all(|r| !stub.statuses(&format!("org/proj/{r}"), SHA).is_empty())
        },
        logs,
    )
    .await;
    let posts: Vec<_> = stub
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    use base64::Engine as _;
    let basic = |t: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(":{t}"))
        )
    };
    let calls = entra.calls();
    // One exchange per identity: the two Providers of ado-writer share their token.
    assert_eq!(calls.len(), 2, "{calls:?}\n{}", c.logs());
    for call in &calls {
        assert_eq!(call.tenant, "72f988bf-86f1-41af-91ab-2d7cd011db47");
        assert_eq!(call.form["grant_type"], "client_credentials");
        assert_eq!(
            call.form["scope"],
            "499b84ac-1321-427f-aa17-267ca6975798/.default"
        );
        assert_eq!(
            call.form["client_assertion_type"],
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        );
    }
    let by_client = |id: &str| calls.iter().find(|c| c.form["client_id"] == id).unwrap();
    assert_eq!(
        by_client("11111111-2222-3333-4444-555555555555").assertion_subject,
        Ok("system:serviceaccount:apps:ado-writer".to_owned())
    );
    assert_eq!(
        by_client("99999999-8888-7777-6666-555555555555").assertion_subject,
        Ok("system:serviceaccount:flux-system:commit-status-controller".to_owned())
    );
    for p in &posts {
        let auth = p.header("authorization").unwrap_or_default();
        assert!(
            auth == basic("entra-access-1") || auth == basic("entra-access-2"),
            "{auth}"
        );
    }
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
    // The ServiceAccount without annotations: Flux's words, and no status.
    until(
        "the annotation error",
        || async {
            c.logs().contains("failed to acquire azure devops token: failed to get token: failed to get provider identity from service account 'apps/default-less' annotations: azure tenant ID is not set in the service account annotation azure.workload.identity/tenant-id")
        },
        logs,
    )
    .await;
    assert!(stub.statuses("org/proj/ado-bare", SHA).is_empty());
    let all = c.logs();
    for secret in calls.iter().map(|c| c.form["client_assertion"].clone()) {
        assert!(!all.contains(&secret), "assertion in the logs");
    }
    assert!(!all.contains("entra-access-"), "access token in the logs");
}
