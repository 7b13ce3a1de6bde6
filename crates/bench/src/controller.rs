//! One run of the controller binary under test: free loopback ports, a data directory,
//! readiness, memory readings from /proc, and a clean stop.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

use crate::load::get_status;

/// Manifest loading for 10,000 Alerts can take a while on a busy machine.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the peak resident size so far.
    pub hwm_kib: u64,
}

pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(line
            .trim_start_matches(name)
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?)
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

pub struct Controller {
    child: Child,
    pub pid: u32,
    pub events: SocketAddr,
    pub health: SocketAddr,
    pub metrics: SocketAddr,
    pub pages: SocketAddr,
    stderr: PathBuf,
}

impl Controller {
    /// Starts `binary` on the manifests in `manifests`, with its state in `work/data`, and
    /// waits for `/readyz` to answer 200.
    pub async fn start(binary: &Path, manifests: &Path, work: &Path) -> anyhow::Result<Self> {
        Self::start_with(binary, manifests, work, &[], &[]).await
    }

    /// [`Controller::start`] with more flags and environment variables
    /// (`BITBUCKET_API_BASE_URL`).
    pub async fn start_with(
        binary: &Path,
        manifests: &Path,
        work: &Path,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let (events, health, metrics) = (free_addr()?, free_addr()?, free_addr()?);
        let pages = free_addr()?;
        let stderr = work.join("controller.stderr");
        let mut child = Command::new(binary)
            .arg("--manifests")
            .arg(manifests)
            .arg("--data-dir")
            .arg(work.join("data"))
            .arg(format!("--events-addr={events}"))
            .arg(format!("--health-addr={health}"))
            .arg(format!("--metrics-addr={metrics}"))
            .arg(format!("--pages-addr={pages}"))
            .arg("--log-level=error")
            .args(flags)
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let pid = child.id().context("controller exited at once")?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if get_status(health, "/readyz").await == Some(200) {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "controller exited ({status}) before it was ready:\n{}",
                    tail(&stderr)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "controller not ready after {READY_TIMEOUT:?}:\n{}",
                    tail(&stderr)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(Controller {
            child,
            pid,
            events,
            health,
            metrics,
            pages,
            stderr,
        })
    }

    pub fn memory(&self) -> anyhow::Result<Memory> {
        memory(self.pid)
    }

    /// The end of the controller's error log, for notes in the report.
    pub fn errors(&self) -> String {
        tail(&self.stderr)
    }

    /// SIGTERM, then SIGKILL if it has not exited within 15 s.
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}
