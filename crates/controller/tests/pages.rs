//! The delivery pages end to end: statuses sent with `--public-url` link to them, the pages
//! show what the forge's description cannot hold, and a real headless Chromium renders them
//! (screenshots kept under `<target dir>/screenshots/` as artifacts).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use testkit::{ForgeKind, Matcher, ScriptedResponse, StubOptions};

const WAIT: Duration = Duration::from_secs(15);
const CHROMIUM: &str = "/usr/bin/chromium";
/// A commit whose status the forge refuses with 422.
const REFUSED: &str = "a1afe267b54f38b46b487f6e938a6fd508278c07";
/// A commit whose status stays pending: the forge answers 503 and the retry is far away.
const QUEUED: &str = "9f3e1d2c4b5a69788796a5b4c3d2e1f0a9b8c7d6";
const FAILURE_MESSAGE: &str = "Health check failed after 5m0s: timeout waiting for: [Deployment/apps/podinfo status: 'InProgress']\n\
     podinfo: 0/2 replicas ready: back-off pulling image \"ghcr.io/stefanprodan/podinfo:6.9.9\"\n\
     <script>document.title = 'injected'</script> & friends";

async fn outcomes(c: &Controller, query: &str) -> Vec<Value> {
    let url = format!("{}/api/v1/deliveries{query}", c.pages_url);
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// Polls the delivery API until `done` holds for what `query` lists.
async fn wait_until(c: &Controller, query: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let list = outcomes(c, query).await;
        if done(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting on {query:?}: {list:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_page(url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

fn assert_contains(html: &str, needles: &[&str]) {
    for n in needles {
        assert!(html.contains(n), "{n:?} missing from:\n{html}");
    }
}

/// `<target dir>/screenshots`, next to the binary under test so `CARGO_TARGET_DIR` is honoured.
fn screenshot_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_commit-status-controller"));
    let dir = bin
        .parent()
        .and_then(Path::parent)
        .expect("the binary lives in <target>/<profile>/")
        .join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium with a throw-away profile; returns its stdout.
async fn chromium(action: &str, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--window-size=1200,900")
        .arg(action)
        .arg(url)
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .unwrap_or_else(|_| panic!("chromium {action} {url} timed out"))
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium {action} {url}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Loads `url` in Chromium: returns the rendered DOM, and keeps a screenshot as `name`.
async fn browse(url: &str, name: &str) -> String {
    let dom = chromium("--dump-dom", url).await;
    let png = screenshot_dir().join(name);
    let _ = std::fs::remove_file(&png);
    chromium(&format!("--screenshot={}", png.display()), url).await;
    let size = std::fs::metadata(&png)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()))
        .len();
    assert!(
        size > 5 * 1024,
        "{} is only {size} bytes: a blank page?",
        png.display()
    );
    let head = std::fs::read(&png).unwrap();
    assert!(head.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    dom
}

#[tokio::test]
async fn statuses_link_to_delivery_pages_that_a_browser_renders() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: `apt-get install chromium` (hack/test.sh does it)"
    );
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    stub.push_response(
        Matcher::post(&format!("/statuses/{REFUSED}$")),
        ScriptedResponse::json(
            422,
            &json!({"message": "Validation Failed", "errors": [{"resource": "Status", "code": "custom", "field": "sha", "message": format!("No commit found for SHA: {REFUSED}")}], "documentation_url": "https://docs.github.com/rest/commits/statuses#create-a-commit-status"}),
        ),
    );
    stub.push_response(
        Matcher::post(&format!("/statuses/{QUEUED}$")),
        ScriptedResponse::status(503),
    );
    let dir = tempfile::tempdir().unwrap();
    github(&stub).write(dir.path(), "m.yaml");
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let c = Controller::start(
        dir.path(),
        &[
            &format!("--pages-addr=127.0.0.1:{port}"),
            &format!("--public-url={public}"),
            // The queued delivery must still be pending while the pages are looked at.
            "--min-retry-delay=10m",
            "--max-retry-delay=10m",
        ],
        &[],
    )
    .await;

    // Two statuses of one object (success, then refused), and one of another that stays queued.
    assert_eq!(c.post(&success_event("apps", SHA)).await.status(), 202);
    wait_until(&c, "", |h| h.len() == 1).await;
    let failed = Event::test("flux-system", "apps")
        .failed("HealthCheckFailed", FAILURE_MESSAGE)
        .commit(REFUSED)
        .to_json();
    assert_eq!(c.post(&failed).await.status(), 202);
    let history = wait_until(&c, "", |h| h.len() == 2).await;
    assert_eq!(c.post(&success_event("infra", QUEUED)).await.status(), 202);
    let queued = wait_until(&c, "?pending=true", |p| {
        p.len() == 1 && p[0]["attempts"] == 1 && p[0]["attempt_log"].as_array().is_some()
    })
    .await;
    let (ok, refused) = (&history[1], &history[0]);
    assert_eq!(ok["outcome"], "posted", "{history:?}");
    assert_eq!(refused["outcome"], "failed", "{history:?}");
    let ok_id = ok["delivery"].as_u64().unwrap();
    let refused_id = refused["delivery"].as_u64().unwrap();
    let queued_id = queued[0]["seq"].as_u64().unwrap();

    // Every status sent links to its delivery page.
    let posted = stub.statuses("o/r", SHA);
    assert_eq!(
        posted[0]["target_url"],
        format!("{public}/deliveries/{ok_id}"),
        "{posted:?}"
    );
    let refused_body = stub
        .requests()
        .iter()
        .find(|r| r.method == "POST" && r.path.ends_with(REFUSED))
        .and_then(|r| r.json())
        .expect("the refused status was sent");
    assert_eq!(
        refused_body["target_url"],
        format!("{public}/deliveries/{refused_id}")
    );
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());

    // The pages, as served.
    let (status, headers, html) = get_page(&format!("{public}/deliveries/{ok_id}")).await;
    assert_eq!(status, 200, "{html}");
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert_contains(
        &html,
        &[
            SHA,
            "Kustomization/flux-system/apps",
            r#"<span class="badge ok">success</span>"#,
            "reconciliation succeeded",
            "Reconciliation finished in 2.1s, next run in 10m0s",
            "flux-system/github",
            "kustomization/apps/0c9c2e41",
            &format!(r#"<a href="{refused_id}">Next status of this object"#),
            r#"<span class="muted">← Previous status of this object"#,
        ],
    );
    for asset in ["<link", " src=", "<script", "@import", "url("] {
        assert!(!html.contains(asset), "no assets, no scripts: {asset}");
    }

    let (status, _, html) = get_page(&format!("{public}/deliveries/{refused_id}")).await;
    assert_eq!(status, 200, "{html}");
    assert_contains(
        &html,
        &[
            REFUSED,
            r#"<span class="badge bad">failed</span>"#,
            r#"<span class="badge bad">failure</span>"#,
            "health check failed",
            "HTTP 422",
            &format!("No commit found for SHA: {REFUSED}"),
            "back-off pulling image &quot;ghcr.io/stefanprodan/podinfo:6.9.9&quot;",
            "&lt;script&gt;document.title = &#39;injected&#39;&lt;/script&gt; &amp; friends",
            &format!(r#"<a href="{ok_id}">← Previous status of this object"#),
            r#"<span class="muted">Next status of this object"#,
        ],
    );
    assert!(!html.contains("<script"), "{html}");

    let (status, _, html) = get_page(&format!("{public}/deliveries/{queued_id}")).await;
    assert_eq!(status, 200, "{html}");
    assert_contains(
        &html,
        &[
            QUEUED,
            r#"<span class="badge wait">pending</span>"#,
            "pending (not delivered yet)",
            "Next attempt",
            "HTTP 503",
            "Kustomization/flux-system/infra",
        ],
    );

    for missing in ["999999", "not-a-number"] {
        let (status, _, html) = get_page(&format!("{public}/deliveries/{missing}")).await;
        assert_eq!(status, 404, "{missing}");
        assert_contains(&html, &["Delivery not found", r#"href="../deliveries""#]);
    }

    let link = |id: u64| format!(r#"href="deliveries/{id}""#);
    let (status, _, html) = get_page(&format!("{public}/deliveries")).await;
    assert_eq!(status, 200, "{html}");
    assert_contains(&html, &[&link(ok_id), &link(refused_id), &link(queued_id)]);
    assert!(
        html.find(&link(queued_id)) < html.find(&link(refused_id))
            && html.find(&link(refused_id)) < html.find(&link(ok_id)),
        "pending first, then newest first:\n{html}"
    );
    let only = |html: &str, shown: &[u64]| {
        for id in [ok_id, refused_id, queued_id] {
            assert_eq!(
                html.contains(&link(id)),
                shown.contains(&id),
                "{id}:\n{html}"
            );
        }
    };
    for (query, shown) in [
        ("?outcome=failed", vec![refused_id]),
        ("?outcome=posted", vec![ok_id]),
        ("?outcome=pending", vec![queued_id]),
        ("?commit=a1afe267", vec![refused_id]),
        (
            "?provider=flux-system%2Fgithub&repository=%2Fo%2Fr",
            vec![ok_id, refused_id, queued_id],
        ),
        ("?provider=flux-system%2Fother", vec![]),
        ("?repository=elsewhere&outcome=", vec![]),
    ] {
        let (status, _, html) = get_page(&format!("{public}/deliveries{query}")).await;
        assert_eq!(status, 200, "{query}: {html}");
        only(&html, &shown);
        if shown.is_empty() {
            assert_contains(&html, &["No deliveries match."]);
        }
    }
    let (_, _, html) = get_page(&format!("{public}/deliveries?outcome=failed")).await;
    assert_contains(&html, &[r#"<option value="failed" selected>"#]);

    // On the event listener those paths are events, as every path is in Flux: even a GET.
    let r = c.post_raw("POST", "/deliveries", b"{".to_vec()).await;
    assert_eq!(r.status(), 400, "a POST to /deliveries is an event");
    let r = c
        .post_raw(
            "GET",
            &format!("/deliveries/{ok_id}"),
            serde_json::to_vec(&success_event("elsewhere", SHA)).unwrap(),
        )
        .await;
    assert_eq!(
        r.status(),
        202,
        "a GET of /deliveries/<id> is an event there"
    );
    assert!(r.text().await.unwrap().is_empty(), "and serves no page");

    // A real browser renders them.
    let dom = browse(
        &format!("{public}/deliveries/{refused_id}"),
        "delivery-page.png",
    )
    .await;
    assert_contains(
        &dom,
        &[
            &format!("Delivery {refused_id}"),
            REFUSED,
            "failure",
            "Health check failed after 5m0s",
            "HTTP 422",
            &format!("No commit found for SHA: {REFUSED}"),
            "&lt;script&gt;document.title",
        ],
    );
    assert!(
        dom.contains("<title>Delivery"),
        "no script ran on the page:\n{dom}"
    );

    let dom = browse(&format!("{public}/deliveries"), "deliveries-index.png").await;
    assert_contains(
        &dom,
        &[
            "Deliveries",
            &link(ok_id),
            &link(refused_id),
            &link(queued_id),
            &SHA[..8],
            &REFUSED[..8],
            "pending",
        ],
    );

    browse(
        &format!("{public}/deliveries/{queued_id}"),
        "delivery-pending.png",
    )
    .await;
}
