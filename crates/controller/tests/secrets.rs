//! No credential on any path, through the built binary: forge redirects (read and write, to
//! another origin) never carry a token, forge waits are capped, proxy and address credentials
//! are never shown, a broken Secret file is reported without its text, and console logs carry
//! no colour codes off a terminal. Every test here also ends with the harness's secret sweep.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;
use testkit::{ForgeKind, Matcher, ScriptedResponse, SocksProxy, StubOptions};

const WAIT: Duration = Duration::from_secs(30);
const OTHER_SHA: [&str; 4] = [
    "a1afe267b54f38b46b487f6e938a6fd508278c07",
    "b2bfe267b54f38b46b487f6e938a6fd508278c07",
    "c3cfe267b54f38b46b487f6e938a6fd508278c07",
    "d4dfe267b54f38b46b487f6e938a6fd508278c07",
];

/// A controller for one forge: `provider`, with its Secret holding `secret`.
async fn controller(
    provider: Provider,
    secret: &[(&str, &str)],
    args: &[&str],
) -> (Controller, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    Manifests::routed(provider, secret).write(dir.path(), "m.yaml");
    let c = Controller::start(dir.path(), args, &[]).await;
    (c, dir)
}

#[tokio::test]
async fn redirects_to_another_origin_never_carry_a_token() {
    for (kind, type_, token, header) in [
        (
            ForgeKind::GitLab,
            "gitlab",
            "glpat-NeverOnAnotherOrigin",
            "private-token",
        ),
        (
            ForgeKind::GitHub,
            "github",
            "ghp_NeverOnAnotherOrigin",
            "authorization",
        ),
    ] {
        let stub = Forge::start(kind, StubOptions::default()).await;
        // The recording server on another origin: it must never be reached at all.
        let recorder = Forge::start(kind, StubOptions::default()).await;
        let (c, _dir) = controller(
            Provider::forge(type_, &format!("{}/o/r", stub.base_url())),
            &[("token", token)],
            // With the duplicate-check read, so that reads meet redirects too.
            &[
                "--min-retry-delay=50ms",
                "--max-retry-delay=200ms",
                "--read-before-write",
            ],
        )
        .await;
        let cases = [("GET", 307), ("GET", 302), ("POST", 307), ("POST", 302)];
        for (i, (method, status)) in cases.into_iter().enumerate() {
            let location = format!("{}/o/r?private_token={token}", recorder.base_url());
            stub.push_response(
                Matcher::new(method, ".*"),
                ScriptedResponse::status(status).with_header("location", &location),
            );
            c.post(&success_event("flux-system", OTHER_SHA[i])).await;
            let h = c.wait_history(i + 1, WAIT).await;
            let o = &h[0];
            assert_eq!(o["commit"], OTHER_SHA[i], "{h:?}");
            assert_eq!(o["outcome"], "failed", "{type_} {method} {status}: {o}");
            assert_eq!(o["http_status"], status, "{o}");
            let message = o["message"].as_str().unwrap();
            assert!(
                message.contains(&format!(
                    "redirect to {}/o/r not followed",
                    recorder.base_url()
                )),
                "{message}"
            );
            assert!(stub.statuses("o/r", OTHER_SHA[i]).is_empty());
        }
        let seen = recorder.requests();
        assert!(seen.is_empty(), "the other origin was reached: {seen:?}");
        // The forge itself got the token on every request, and no write was replayed as a
        // read: one GET for each read redirect, GET + POST for each write redirect.
        let reqs = stub.requests();
        let methods: Vec<_> = reqs.iter().map(|r| r.method.as_str()).collect();
        assert_eq!(methods, ["GET", "GET", "GET", "POST", "GET", "POST"]);
        assert!(
            reqs.iter()
                .all(|r| r.header(header).is_some_and(|v| v.ends_with(token)))
        );
    }
}

#[tokio::test]
async fn every_forge_wait_is_capped_at_max_retry_delay() {
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let (c, _dir) = controller(
        Provider::forge("github", &format!("{}/o/r", stub.base_url())),
        &[("token", "ghp_CappedWaits")],
        &["--min-retry-delay=50ms", "--max-retry-delay=2s"],
    )
    .await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ten_years = (now + 10 * 365 * 86_400).to_string();
    let in_ms = ((now + 86_400) * 1000).to_string();
    stub.push_response(
        Matcher::post(".*"),
        ScriptedResponse::status(503).with_header("retry-after", "86400"),
    );
    stub.push_response(
        Matcher::post(".*"),
        ScriptedResponse::status(429).with_header("retry-after", "99999999999999999999999"),
    );
    stub.push_response(
        Matcher::post(".*"),
        ScriptedResponse::status(403)
            .with_header("x-ratelimit-remaining", "0")
            .with_header("x-ratelimit-reset", &ten_years),
    );
    stub.push_response(
        Matcher::post(".*"),
        ScriptedResponse::status(429).with_header("ratelimit-reset", &in_ms),
    );
    let started = Instant::now();
    c.post(&success_event("flux-system", SHA)).await;
    let h = c.wait_history(1, WAIT).await;
    assert_eq!(h[0]["outcome"], "posted", "{h:?}\n{}", c.logs());
    assert_eq!(h[0]["attempts"], 5);
    // Four waits of at most 2 s each (the deadline only guards against a day-long wait).
    assert!(started.elapsed() < WAIT, "{:?}", started.elapsed());
    assert!(
        c.logs().contains("retry_in") && !c.logs().contains("86400s"),
        "{}",
        c.logs()
    );
}

#[tokio::test]
async fn a_delivery_held_by_a_spent_budget_still_expires_at_its_max_age() {
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let (c, _dir) = controller(
        Provider::forge("github", &format!("{}/o/r", stub.base_url())),
        &[("token", "ghp_BudgetToken")],
        &[
            "--min-retry-delay=50ms",
            "--max-retry-delay=1h",
            "--delivery-max-age=3s",
        ],
    )
    .await;
    stub.push_response(
        Matcher::post(".*"),
        ScriptedResponse::status(429).with_header("retry-after", "3600"),
    );
    c.post(&success_event("flux-system", SHA)).await;
    let h = c.wait_history(1, WAIT).await;
    assert_eq!(h[0]["outcome"], "expired", "{h:?}");
    // The second delivery on the same credential waits for the budget, but not past its age.
    let accepted = Instant::now();
    c.post(&success_event("other", OTHER_SHA[0])).await;
    let h = c.wait_history(2, WAIT).await;
    assert_eq!(h[0]["commit"], OTHER_SHA[0]);
    assert_eq!(h[0]["outcome"], "expired", "{h:?}");
    assert!(
        accepted.elapsed() < Duration::from_secs(20),
        "{:?}",
        accepted.elapsed()
    );
    assert_eq!(
        stub.requests().len(),
        1,
        "nothing is sent on a spent budget"
    );
}

#[tokio::test]
async fn proxy_and_address_credentials_are_never_shown() {
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let base = stub.base_url();
    let authority = base.trim_start_matches("http://");
    let closed = free_port();
    let dir = tempfile::tempdir().unwrap();
    let proxy_secret = |name: &str, address: &str| {
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: flux-system}}\nstringData:\n  address: \"{address}\"\n  username: proxy-user\n  password: Pr0xyPassw0rdInSecret\n"
        )
    };
    let provider = |name: &str, spec: &str| {
        format!(
            "---\napiVersion: notification.toolkit.fluxcd.io/v1beta3\nkind: Provider\nmetadata: {{name: {name}, namespace: flux-system}}\nspec:\n  type: github\n  secretRef: {{name: github-token}}\n{spec}\n---\napiVersion: notification.toolkit.fluxcd.io/v1beta3\nkind: Alert\nmetadata: {{name: {name}, namespace: flux-system}}\nspec:\n  providerRef: {{name: {name}}}\n  eventSources: [{{kind: Kustomization, name: '{name}'}}]\n"
        )
    };
    // The token and the repository address both come from the Secret, the address with user
    // info and a query holding a second token.
    let mut text = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: github-token, namespace: flux-system}}\nstringData:\n  token: ghp_TokenInTheSecret\n  address: \"http://x-access-token:ghp_UserInfoToken@{authority}/o/r?access_token=ghp_QueryToken\"\n"
    );
    text += &provider("direct", "");
    // A SOCKS proxy that resolves names itself: taken, and its failures shown without user
    // info.
    text += &proxy_secret(
        "socks",
        &format!("socks5h://socks-user:Pr0xyPassw0rdInUrl@127.0.0.1:{closed}"),
    );
    text += &provider("socks", "  proxySecretRef: {name: socks}");
    // A proxy scheme nobody takes: refused, redacted.
    text += &proxy_secret(
        "ftp",
        &format!("ftp://ftp-user:Pr0xyPassw0rdInFtpUrl@127.0.0.1:{closed}"),
    );
    text += &provider("ftp", "  proxySecretRef: {name: ftp}");
    // The deprecated spec.proxy is checked against the CRD's pattern: refused, redacted.
    text += &provider(
        "specproxy",
        &format!("  proxy: socks5h://spec-user:Pr0xyPassw0rdInSpec@127.0.0.1:{closed}"),
    );
    write(dir.path(), "m.yaml", &text);
    let mut c = Controller::start(
        dir.path(),
        &["--min-retry-delay=50ms", "--max-retry-delay=100ms"],
        &[],
    )
    .await;
    // spec.proxy is not a Secret, but a password in it is one all the same.
    c.add_secret("Pr0xyPassw0rdInSpec");
    for name in ["direct", "socks", "ftp", "specproxy"] {
        c.post(&success_event(name, SHA)).await;
    }
    stub.wait_for(1, WAIT).await.unwrap();
    assert!(c.wait_log("flux-system/ftp", WAIT).await, "{}", c.logs());
    let h = c.wait_history(1, WAIT).await;
    let direct = h.iter().find(|o| o["provider"] == "flux-system/direct");
    let direct = direct.unwrap_or_else(|| panic!("{h:?}"));
    assert_eq!(direct["outcome"], "posted", "{direct}");
    assert_eq!(direct["repository"], format!("{base}/o/r"));
    let logs = c.logs();
    assert!(
        logs.contains(&format!(
            "invalid proxy address \\\"ftp://127.0.0.1:{closed}/\\\""
        )),
        "{logs}"
    );
    assert!(
        logs.contains(&format!(
            "spec.proxy: Invalid value: \\\"socks5h://127.0.0.1:{closed}\\\""
        )),
        "{logs}"
    );
    // The SOCKS provider is attempted (and fails against a closed port), not refused.
    let deadline = Instant::now() + WAIT;
    while !c
        .logs()
        .lines()
        .any(|l| l.contains("will retry") && l.contains("flux-system/socks"))
    {
        assert!(Instant::now() < deadline, "socks5h is used: {}", c.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, out, err) = run_explain(dir.path(), "direct").await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("{base}/o/r")) && !out.contains("ghp_"),
        "{out}"
    );
    c.sweep_secrets();
}

/// `explain` for the event of Kustomization `name`, run as a user would.
async fn run_explain(dir: &std::path::Path, name: &str) -> (i32, String, String) {
    let event = dir.join(format!("{name}.json"));
    std::fs::write(
        &event,
        serde_json::to_vec(&success_event(name, SHA)).unwrap(),
    )
    .unwrap();
    let manifests = dir.join("m.yaml");
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_commit-status-controller"))
            .arg("explain")
            .arg("--manifests")
            .arg(&manifests)
            .arg("--event")
            .arg(&event)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_broken_secret_file_is_reported_without_its_text() {
    let dir = tempfile::tempdir().unwrap();
    let token = "ghp_YamlSyntaxErrorToken";
    Manifests::routed(
        Provider::forge("github", "https://github.com/o/r"),
        &[("token", "t")],
    )
    .write(dir.path(), "a.yaml");
    write(
        dir.path(),
        "secret.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: broken\n  namespace: flux-system\nstringData:\n  token: \"{token}\n  other: x\n"
        ),
    );
    let mut c = Controller::start(dir.path(), &[], &[]).await;
    c.add_secret(token);
    assert!(c.wait_log("invalid YAML", WAIT).await, "{}", c.logs());
    let line = c
        .logs()
        .lines()
        .find(|l| l.contains("invalid YAML"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("secret.yaml (document 1): invalid YAML: line 11, column"),
        "{line}"
    );
    let d = dir.path().to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_commit-status-controller"))
            .args(["validate", "--manifests", &d])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("secret.yaml (document 1): invalid YAML: line 11"),
        "{text}"
    );
    assert!(!text.contains("YamlSyntaxErrorToken"), "{text}");
    c.sweep_secrets();
}

#[tokio::test]
async fn console_logs_carry_no_colour_codes_into_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    Manifests::routed(
        Provider::forge("github", "https://github.com/o/r"),
        &[("token", "t")],
    )
    .write(dir.path(), "m.yaml");
    let c = Controller::start(dir.path(), &["--log-encoding=console"], &[]).await;
    assert!(c.wait_log("INFO", WAIT).await, "{}", c.logs());
    assert!(!c.logs().contains('\u{1b}'), "{:?}", c.logs());
}

#[tokio::test]
async fn the_sweep_finds_a_secret_in_the_logs_and_on_the_pages() {
    let stub = Forge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let (mut c, _dir) = controller(
        Provider::forge("github", &format!("{}/o/r", stub.base_url())),
        &[("token", "t")],
        &["--log-level=info"],
    )
    .await;
    // An event message is shown in the history and on the delivery page (and not logged at
    // info level): a value in it must be found there, or the sweep checks nothing.
    let marker = "sweep-marker-7f3a91";
    let mut event = success_event("flux-system", SHA);
    event["message"] = Value::String(format!("deployed {marker}"));
    c.post(&event).await;
    c.wait_history(1, WAIT).await;
    c.add_secret(marker);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.sweep_secrets()));
    let message = caught
        .err()
        .and_then(|e| e.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert!(
        message.contains(marker) && message.contains("found in /api/v1/deliveries"),
        "the sweep missed it: {message:?}"
    );
    c.forget_secret(marker);
}

#[tokio::test]
async fn a_socks5h_proxy_resolves_the_forge_name_and_its_password_stays_secret() {
    let stub = Forge::start(ForgeKind::GitLab, StubOptions::default()).await;
    let socks = SocksProxy::start(Some(("socks-user".into(), "S0cksPassw0rd".into()))).await;
    // A host name the proxy resolves: with socks5h the controller never looks it up itself.
    let address = format!("http://localhost:{}/g/p", stub.addr().port());
    let proxy = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: proxy, namespace: flux-system}}\nstringData:\n  address: \"socks5h://127.0.0.1:{}\"\n  username: socks-user\n  password: S0cksPassw0rd\n",
        socks.addr().port()
    );
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "m.yaml",
        &(forge_manifests(
            Provider::forge("gitlab", &address).with_spec(|s| {
                s.proxy_secret_ref = Some(api::LocalObjectReference {
                    name: "proxy".into(),
                })
            }),
            &[("token", "glpat-ThroughSocks")],
        ) + &proxy),
    );
    let c = Controller::start(dir.path(), &[], &[]).await;
    c.post(&success_event("flux-system", SHA)).await;
    let h = c.wait_history(1, WAIT).await;
    assert_eq!(h[0]["outcome"], "posted", "{h:?}\n{}", c.logs());
    assert_eq!(h[0]["repository"], address);
    assert_eq!(
        socks.targets(),
        [format!("localhost:{}", stub.addr().port())],
        "the name went to the proxy unresolved"
    );
    assert_eq!(stub.statuses("g/p", SHA).len(), 1);
}
