//! Test harness: runs the real `commit-status-controller` binary on loopback ports, with
//! manifests in a temporary directory, and captures its logs.

#![allow(dead_code)]

pub mod sweep;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// Each test binary uses its own part of the fixtures.
#[allow(unused_imports)]
pub use api::fixtures::{Manifests, REVISION_KEY, SHA, UID};
#[allow(unused_imports)]
pub use api::{Alert, Event, Provider, Secret};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Controller {
    child: Child,
    pub events_url: String,
    pub health_url: String,
    pub metrics_url: String,
    /// The `--pages-addr` listener: delivery pages and `/api/v1/deliveries`.
    pub pages_url: String,
    pub manifests: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    /// Values that must appear nowhere the controller writes or serves (see [`sweep`]).
    secrets: BTreeSet<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Controller {
    /// Starts the binary on `manifests` and waits until `/readyz` answers 200.
    pub async fn start(manifests: &Path, args: &[&str], env: &[(&str, &str)]) -> Controller {
        let mut all = vec!["--manifests".to_string(), manifests.display().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        let mut c = Self::spawn(&all, env).await;
        c.manifests = manifests.to_path_buf();
        c.secrets = sweep::secret_values(std::slice::from_ref(&c.manifests));
        c
    }

    /// Starts the binary with exactly these arguments (plus loopback ports) and waits until
    /// `/readyz` answers 200. An `--events-addr=` or `--pages-addr=` among `args` is used
    /// instead of a free port, for flags that must name that address (`--public-url`).
    pub async fn spawn(args: &[String], env: &[(&str, &str)]) -> Controller {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_commit-status-controller"));
        let mut addr = |flag: &str| {
            let given = args.iter().find_map(|a| a.strip_prefix(flag));
            let addr = given.map_or_else(|| format!("127.0.0.1:{}", free_port()), str::to_string);
            if given.is_none() {
                cmd.arg(format!("{flag}{addr}"));
            }
            addr
        };
        let events = addr("--events-addr=");
        let pages = addr("--pages-addr=");
        let (health, metrics) = (free_port(), free_port());
        cmd.arg(format!("--health-addr=127.0.0.1:{health}"))
            .arg(format!("--metrics-addr=127.0.0.1:{metrics}"))
            .args(args)
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !args.iter().any(|a| a.starts_with("--log-level")) {
            cmd.arg("--log-level=debug");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn controller");
        let logs = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let c = Controller {
            child,
            events_url: format!("http://{events}/"),
            health_url: format!("http://127.0.0.1:{health}"),
            metrics_url: format!("http://127.0.0.1:{metrics}"),
            pages_url: format!("http://{pages}"),
            manifests: PathBuf::new(),
            logs,
            secrets: BTreeSet::new(),
            _dir: None,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/readyz", c.health_url)).await
                && r.status() == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "controller not ready; logs:\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c
    }

    /// One more value the sweep must not find (a Secret applied to a cluster, say).
    pub fn add_secret(&mut self, value: &str) {
        self.secrets.insert(value.to_string());
    }

    /// Undoes [`Controller::add_secret`] (for the sweep's own test).
    pub fn forget_secret(&mut self, value: &str) {
        self.secrets.remove(value);
    }

    /// Fails if a secret of the manifests (at start or now) or one added with
    /// [`Controller::add_secret`] is in the logs, the history API or a delivery page.
    /// Runs on drop too.
    pub fn sweep_secrets(&mut self) {
        let pages = sweep::served_pages(&self.pages_url);
        self.assert_swept(&pages);
    }

    fn assert_swept(&mut self, pages: &[(String, String)]) {
        if !self.manifests.as_os_str().is_empty() {
            let now = sweep::secret_values(std::slice::from_ref(&self.manifests));
            self.secrets.extend(now);
        }
        sweep::assert_secret_free("the logs", &self.logs(), &self.secrets);
        for (path, body) in pages {
            sweep::assert_secret_free(path, body, &self.secrets);
        }
    }

    pub fn keep_dir(mut self, dir: tempfile::TempDir) -> Self {
        self._dir = Some(dir);
        self
    }

    pub async fn post(&self, event: &serde_json::Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(&self.events_url)
            .json(event)
            .send()
            .await
            .expect("POST event")
    }

    pub async fn post_raw(&self, method: &str, path: &str, body: Vec<u8>) -> reqwest::Response {
        let url = format!("{}{}", self.events_url.trim_end_matches('/'), path);
        reqwest::Client::new()
            .request(method.parse().unwrap(), url)
            .body(body)
            .send()
            .await
            .expect("send")
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.logs.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// The delivery history (`/api/v1/deliveries`), newest first.
    pub async fn history(&self) -> Vec<serde_json::Value> {
        let url = format!("{}/api/v1/deliveries?limit=1000", self.pages_url);
        reqwest::get(url).await.unwrap().json().await.unwrap()
    }

    /// Waits until the history holds at least `n` outcomes (or `timeout` passed).
    pub async fn wait_history(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let h = self.history().await;
            if h.len() >= n || Instant::now() > deadline {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `/metrics` page.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.metrics_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "controller did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return;
        }
        // Read what it serves while it runs, then stop it (so its last log lines are in),
        // then look.
        let pages = sweep::served_pages(&self.pages_url);
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(50));
        self.assert_swept(&pages);
    }
}

/// A [`testkit::StubForge`] that fails the test when it is dropped if any request it got broke
/// its forge's contract (`/work/shared/contracts`), so that every test talking to a forge checks
/// the requests against the contract, whatever else it asserts.
pub struct Forge(testkit::StubForge);

impl Forge {
    pub async fn start(kind: testkit::ForgeKind, opts: testkit::StubOptions) -> Forge {
        Forge(testkit::StubForge::start(kind, opts).await)
    }
}

impl std::ops::Deref for Forge {
    type Target = testkit::StubForge;

    fn deref(&self) -> &testkit::StubForge {
        &self.0
    }
}

impl Drop for Forge {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let violations = self.0.violations();
            assert!(
                violations.is_empty(),
                "requests to the {:?} stub broke its contract: {violations:#?}",
                self.0.kind()
            );
        }
    }
}

/// The success event kustomize-controller sends at the end of a reconciliation of
/// Kustomization `flux-system/<name>` at `sha`, as JSON.
pub fn success_event(name: &str, sha: &str) -> serde_json::Value {
    Event::test("flux-system", name).commit(sha).to_json()
}

/// The `Progressing` event kustomize-controller sends when a reconciliation starts.
pub fn progressing_event(name: &str, sha: &str) -> serde_json::Value {
    Event::test("flux-system", name)
        .progressing()
        .commit(sha)
        .to_json()
}

/// A controller started with `args` on one GitHub Provider (`flux-system/github`, Alert for
/// every Kustomization) pointing at a fresh stub forge.
pub async fn with_github_stub(args: &[&str]) -> (Controller, Forge, tempfile::TempDir) {
    let stub = Forge::start(testkit::ForgeKind::GitHub, Default::default()).await;
    let dir = tempfile::tempdir().unwrap();
    github(&stub).write(dir.path(), "m.yaml");
    let c = Controller::start(dir.path(), args, &[]).await;
    (c, stub, dir)
}

/// Writes a manifest file.
pub fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// `provider`, its Secret holding `secret` and an Alert for every Kustomization, as one
/// manifest file's text.
pub fn forge_manifests(provider: Provider, secret: &[(&str, &str)]) -> String {
    Manifests::routed(provider, secret).yaml()
}

/// The GitHub Provider `flux-system/github` for `stub`'s `o/r`, its Secret (`token: t`) and an
/// Alert for every Kustomization: the setup most binary tests start from.
pub fn github(stub: &Forge) -> Manifests {
    Manifests::routed(
        Provider::forge("github", &format!("{}/o/r", stub.base_url())),
        &[("token", "t")],
    )
}

/// A `manifests` directory in `dir` holding [`github`]'s manifests.
pub fn github_manifests(dir: &Path, stub: &Forge) -> PathBuf {
    let manifests = dir.join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    github(stub).write(&manifests, "m.yaml");
    manifests
}
