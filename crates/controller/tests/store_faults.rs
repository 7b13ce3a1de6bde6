//! The delivery store under a disk fault: the data directory on a small tmpfs, filled until
//! writes fail. No event is answered 202 unless it is stored; `/readyz` says not ready while the
//! store cannot write; once space is freed the store heals without a restart, new events are
//! accepted within seconds, and every event that got 202 reaches the forge.
//!
//! Needs to mount a tmpfs (CI runs as root); skipped, with a message saying so, where mounting
//! is not permitted.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use testkit::{EventReceiver, ForgeKind, Received, StubOptions};

/// Unmounts the tmpfs when the test ends, passed or not.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here ({}); this test needs root",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes into `path` until the file system is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![7u8; 16 * 1024];
    while f.write_all(&chunk).and_then(|_| f.sync_data()).is_ok() {}
    // The last partial chunk may have taken the last bytes; so much the better.
}

fn event(sha: &str, i: u64) -> serde_json::Value {
    // Room for the records to need new pages of the store.
    let message = format!("event {i}: {}", "x".repeat(8 * 1024));
    Event::test("flux-system", "app")
        .message(&message)
        .commit(sha)
        .to_json()
}

/// Events sent so far, and the commits of those answered 202.
#[derive(Default)]
struct Sent {
    n: u64,
    accepted: Vec<String>,
}

impl Sent {
    /// Sends an event for a new commit; its answer, which is 202 or 503.
    async fn post(&mut self, c: &Controller) -> u16 {
        self.n += 1;
        let sha = format!("{:040x}", 0x5eed_0000_u64 + self.n);
        let status = c.post(&event(&sha, self.n)).await.status().as_u16();
        assert!(status == 202 || status == 503, "event {}: {status}", self.n);
        if status == 202 {
            self.accepted.push(sha);
        }
        status
    }
}

async fn ready(c: &Controller) -> u16 {
    reqwest::get(format!("{}/readyz", c.health_url))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Sends events while the disk in `data` fills up and after it is freed: 202s before, 503s
/// (and not ready, and the error counted) while the store cannot write, 202s again within
/// seconds of space being freed, without a restart. Returns what was sent.
async fn through_a_full_disk(c: &Controller, data: &Path) -> Sent {
    let mut sent = Sent::default();
    for _ in 0..5 {
        assert_eq!(sent.post(c).await, 202);
    }

    // Fill the disk, then keep sending until the store refuses.
    let filler = data.join("filler");
    fill(&filler);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut refused, mut not_ready) = (0, 0);
    while refused < 20 {
        assert!(
            Instant::now() < deadline,
            "a full disk never made the store refuse; logs:\n{}",
            c.logs()
        );
        if sent.post(c).await == 503 {
            refused += 1;
            // A small write (a forward's end, a validator) can still fit in the file's free
            // pages and make the store writable again for a moment, so readiness is looked at
            // after each refusal rather than once at the end.
            if ready(c).await == 503 {
                not_ready += 1;
            }
        }
    }
    assert!(
        not_ready > 0,
        "never not ready while the store could not write"
    );
    let metrics = c.metrics().await;
    assert!(
        metrics.contains(r#"commit_status_store_errors_total{error="io"}"#),
        "{metrics}"
    );

    // Free the space: within seconds the store writes again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    loop {
        if sent.post(c).await == 202 {
            break;
        }
        assert!(
            freed.elapsed() < Duration::from_secs(20),
            "events still refused {:?} after space was freed; logs:\n{}",
            freed.elapsed(),
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready(c).await != 200 {
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        assert_eq!(sent.post(c).await, 202);
    }
    let logs = c.logs();
    assert!(
        logs.contains("delivery store closed after an I/O error"),
        "{logs}"
    );
    assert!(logs.contains("delivery store writes again"), "{logs}");
    sent
}

#[tokio::test]
async fn a_full_disk_refuses_honestly_and_the_store_heals_when_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let Some(_mount) = Mount::tmpfs(&data, "8m") else {
        return;
    };
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let manifests = github_manifests(dir.path(), &stub);
    let data_flag = format!("--data-dir={}", data.display());
    let c = Controller::start(
        &manifests,
        &[
            &data_flag,
            "--min-retry-delay=100ms",
            "--max-retry-delay=500ms",
        ],
        &[],
    )
    .await;

    let sent = through_a_full_disk(&c, &data).await;

    // Every event that got 202 reaches the forge, in its state.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing: Vec<&String> = sent
            .accepted
            .iter()
            .filter(|sha| stub.statuses("o/r", sha).is_empty())
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} accepted events never reached the forge: {missing:?}\n{}",
            missing.len(),
            sent.accepted.len(),
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for sha in &sent.accepted {
        let states: Vec<_> = stub
            .statuses("o/r", sha)
            .iter()
            .map(|s| s["state"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(states, ["success"], "{sha}");
    }
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
}

/// Forwarded events live in the same store: with `--forward-events-to` set, the store still
/// re-opens after the disk fault, and every event that got 202 is forwarded (and its forward
/// recorded as finished) once space is freed.
#[tokio::test]
async fn with_forwarding_the_store_heals_too_and_every_accepted_event_is_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let Some(_mount) = Mount::tmpfs(&data, "8m") else {
        return;
    };
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let receiver = EventReceiver::start().await;
    let manifests = github_manifests(dir.path(), &stub);
    let data_flag = format!("--data-dir={}", data.display());
    let target = format!("--forward-events-to={}", receiver.url());
    let c = Controller::start(
        &manifests,
        &[
            &data_flag,
            &target,
            "--min-retry-delay=100ms",
            "--max-retry-delay=500ms",
        ],
        &[],
    )
    .await;

    let sent = through_a_full_disk(&c, &data).await;
    assert!(c.logs().contains("delivery store re-opened"));

    // Every event that got 202 reaches the receiver, and its forward is recorded as finished.
    let forwarded = |received: &[Received], sha: &str| {
        received.iter().any(|r| {
            (200..300).contains(&r.answered) && String::from_utf8_lossy(&r.body).contains(sha)
        })
    };
    let all = receiver
        .wait_for(Duration::from_secs(60), |r| {
            sent.accepted.iter().all(|sha| forwarded(r, sha))
        })
        .await;
    let received = receiver.received();
    let missing: Vec<&String> = sent
        .accepted
        .iter()
        .filter(|sha| !forwarded(&received, sha))
        .collect();
    assert!(
        all,
        "{} of {} accepted events never reached the receiver: {missing:?}\n{}",
        missing.len(),
        sent.accepted.len(),
        c.logs()
    );
    let listing = |query: &'static str| {
        let url = format!(
            "{}/api/v1/deliveries?type=forward&limit=1000{query}",
            c.pages_url
        );
        async move {
            let list: Vec<serde_json::Value> =
                reqwest::get(url).await.unwrap().json().await.unwrap();
            list
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !listing("&pending=true").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "forwards still pending after the receiver got them: {:?}\n{}",
            listing("&pending=true").await,
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let history = listing("").await;
    for sha in &sent.accepted {
        let n = received
            .iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains(sha.as_str()))
            .count();
        assert!(n >= 1, "{sha}");
    }
    assert!(
        history.len() >= sent.accepted.len() && history.iter().all(|h| h["outcome"] == "forwarded"),
        "{history:?}"
    );
    // And the statuses land too.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent
        .accepted
        .iter()
        .any(|sha| stub.statuses("o/r", sha).is_empty())
    {
        assert!(Instant::now() < deadline, "{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
