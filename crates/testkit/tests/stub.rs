//! Round trips against every forge stub over real loopback HTTP: stateful reads after writes,
//! the forge's response shapes (checked against the contracts), auth failures and scripted faults.

mod common;

use std::time::Duration;

use common::{Answer, call};
use serde_json::{Value, json};
use testkit::stub::{ForgeKind, Matcher, ScriptedResponse, StubForge, StubOptions};

const SHA: &str = "5394cb7f48332b2de7c17dd8b8384bbc84b7e738";
const ID: &str = "kustomization/flux-system/0c9c2e41";
const KEY: &str = "776b17bcc91fd6eb5d0ce2a027da584c8ea81eed";
const DESC: &str = "reconciliation succeeded";

/// Basic `user:pass`, `Basic :pat`.
const BASIC_USER: &str = "Basic dXNlcjpwYXNz";
const BASIC_PAT: &str = "Basic OnBhdA==";

struct Flow {
    kind: ForgeKind,
    auth: (&'static str, &'static str),
    list: String,
    create: String,
    body: Value,
    repo: &'static str,
    create_status: u16,
}

fn flows() -> Vec<Flow> {
    vec![
        Flow {
            kind: ForgeKind::GitHub,
            auth: ("authorization", "Bearer ghp_x"),
            list: format!("/repos/my-org/my-repo/commits/{SHA}/statuses?per_page=50"),
            create: format!("/repos/my-org/my-repo/statuses/{SHA}"),
            body: json!({"state": "success", "description": DESC, "context": ID}),
            repo: "my-org/my-repo",
            create_status: 201,
        },
        Flow {
            kind: ForgeKind::GitLab,
            auth: ("private-token", "glpat-x"),
            list: format!(
                "/api/v4/projects/my-group%2Fsub%2Fmy-repo/repository/commits/{SHA}/statuses?name=kustomization%2Fflux-system%2F0c9c2e41"
            ),
            create: format!("/api/v4/projects/my-group%2Fsub%2Fmy-repo/statuses/{SHA}"),
            body: json!({"state": "success", "name": ID, "description": DESC}),
            repo: "my-group/sub/my-repo",
            create_status: 201,
        },
        Flow {
            kind: ForgeKind::BitbucketCloud,
            auth: ("authorization", BASIC_USER),
            list: format!("/2.0/repositories/my-ws/my-repo/commit/{SHA}/statuses/build/{KEY}"),
            create: format!("/2.0/repositories/my-ws/my-repo/commit/{SHA}/statuses/build"),
            body: json!({"key": KEY, "url": "https://bitbucket.org", "state": "SUCCESSFUL", "name": "kustomization/flux-system", "description": DESC}),
            repo: "my-ws/my-repo",
            create_status: 201,
        },
        Flow {
            kind: ForgeKind::BitbucketServer,
            auth: ("authorization", "Bearer BBDC-x"),
            list: format!(
                "/ctx/rest/api/latest/projects/PRJ/repos/my-repo/commits/{SHA}/builds?key={KEY}"
            ),
            create: format!("/ctx/rest/api/latest/projects/PRJ/repos/my-repo/commits/{SHA}/builds"),
            body: json!({"description": DESC, "key": KEY, "name": "kustomization/flux-system [reconciliation succeeded]", "state": "SUCCESSFUL", "url": "https://bb.example.com/scm/PRJ/my-repo.git"}),
            repo: "PRJ/my-repo",
            create_status: 204,
        },
        Flow {
            kind: ForgeKind::AzureDevOps,
            auth: ("authorization", BASIC_PAT),
            list: format!(
                "/myorg/MyProj/_apis/git/repositories/my-repo/commits/{SHA}/statuses?api-version=7.1"
            ),
            create: format!(
                "/myorg/MyProj/_apis/git/repositories/my-repo/commits/{SHA}/statuses?api-version=7.1"
            ),
            body: json!({"context": {"genre": "fluxcd", "name": ID}, "description": DESC, "state": "succeeded"}),
            repo: "myorg/MyProj/my-repo",
            create_status: 201,
        },
        Flow {
            kind: ForgeKind::Gitea,
            auth: ("authorization", "token gt"),
            list: format!("/api/v1/repos/my-org/my-repo/commits/{SHA}/statuses?limit=50&page=1"),
            create: format!("/api/v1/repos/my-org/my-repo/statuses/{SHA}"),
            body: json!({"state": "success", "target_url": "", "description": DESC, "context": ID}),
            repo: "my-org/my-repo",
            create_status: 201,
        },
        Flow {
            kind: ForgeKind::Forgejo,
            auth: ("authorization", "token fj"),
            list: format!("/api/v1/repos/my-org/my-repo/commits/{SHA}/statuses?limit=50&page=1"),
            create: format!("/api/v1/repos/my-org/my-repo/statuses/{SHA}"),
            body: json!({"state": "success", "target_url": "", "description": DESC, "context": ID}),
            repo: "my-org/my-repo",
            create_status: 201,
        },
    ]
}

/// Checks an answer against the stub's own contract, as a client of the real forge would see it.
fn assert_conforms(stub: &StubForge, method: &str, path: &str, a: &Answer) {
    let path = path.split('?').next().unwrap();
    let m = stub
        .contract()
        .find_operation(method, path)
        .unwrap_or_else(|| panic!("{method} {path} not in contract"));
    if let Err(e) = stub.contract().validate_response(&m, a.status, &a.body) {
        panic!(
            "{:?} {method} {path} answered off-contract: {e:?}",
            stub.kind()
        );
    }
}

/// The existing-status lookup the controller does, reduced to "state + description seen".
fn found(kind: ForgeKind, a: &Answer) -> Option<(String, String)> {
    if a.status == 404 {
        return None;
    }
    let v = a.json();
    let first = match kind {
        ForgeKind::AzureDevOps => v["value"][0].clone(),
        ForgeKind::BitbucketCloud | ForgeKind::BitbucketServer => v,
        _ => v[0].clone(),
    };
    if first.is_null() {
        return None;
    }
    let state_field = match kind {
        ForgeKind::GitLab | ForgeKind::Gitea | ForgeKind::Forgejo => "status",
        _ => "state",
    };
    Some((
        first[state_field].as_str().unwrap().to_string(),
        first["description"].as_str().unwrap().to_string(),
    ))
}

#[tokio::test]
async fn every_forge_round_trips_statefully() {
    for f in flows() {
        let stub = StubForge::start(f.kind, StubOptions::default()).await;
        let h = [f.auth];

        let before = call(stub.addr(), "GET", &f.list, &h, None).await;
        assert!(
            matches!(before.status, 200 | 404),
            "{:?}: {}",
            f.kind,
            before.status
        );
        assert_eq!(found(f.kind, &before), None, "{:?}", f.kind);
        assert_conforms(&stub, "GET", &f.list, &before);

        let created = call(stub.addr(), "POST", &f.create, &h, Some(&f.body)).await;
        assert_eq!(
            created.status,
            f.create_status,
            "{:?}: {:?}",
            f.kind,
            String::from_utf8_lossy(&created.body)
        );
        assert_conforms(&stub, "POST", &f.create, &created);
        // The user object comes from the contract's own examples; it must have been found.
        let user_field = match f.kind {
            ForgeKind::GitHub | ForgeKind::Gitea | ForgeKind::Forgejo => Some("creator"),
            ForgeKind::GitLab => Some("author"),
            ForgeKind::AzureDevOps => Some("createdBy"),
            _ => None,
        };
        if let Some(field) = user_field {
            assert!(
                created.json()[field].is_object(),
                "{:?}: {field} missing",
                f.kind
            );
        }

        let after = call(stub.addr(), "GET", &f.list, &h, None).await;
        assert_eq!(after.status, 200, "{:?}", f.kind);
        assert_conforms(&stub, "GET", &f.list, &after);
        let expected_state = f.body["state"].as_str().unwrap().to_string();
        assert_eq!(
            found(f.kind, &after),
            Some((expected_state, DESC.to_string())),
            "{:?}",
            f.kind
        );

        assert_eq!(
            stub.statuses(f.repo, SHA),
            vec![f.body.clone()],
            "{:?}",
            f.kind
        );
        // Keys ignore case, like the forges.
        assert_eq!(
            stub.statuses(&f.repo.to_uppercase(), &SHA.to_uppercase())
                .len(),
            1
        );
        assert_eq!(stub.requests().len(), 3);
        assert!(
            stub.violations().is_empty(),
            "{:?}: {:?}",
            f.kind,
            stub.violations()
        );
        let posted = &stub.requests()[1];
        assert_eq!(posted.method, "POST");
        assert_eq!(posted.json(), Some(f.body.clone()));
        assert_eq!(posted.header(f.auth.0), Some(f.auth.1));
    }
}

#[tokio::test]
async fn github_lists_newest_first_and_pages() {
    let stub = StubForge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let h = [("authorization", "Bearer t")];
    let path = format!("/api/v3/repos/o/r/statuses/{SHA}");
    for state in ["pending", "failure", "success"] {
        let a = call(
            stub.addr(),
            "POST",
            &path,
            &h,
            Some(&json!({"state": state, "context": "c"})),
        )
        .await;
        assert_eq!(a.status, 201);
        assert!(
            a.header("location")
                .unwrap()
                .ends_with(&format!("/api/v3/repos/o/r/statuses/{SHA}"))
        );
        assert_eq!(a.header("x-ratelimit-remaining").as_deref(), Some("4999"));
    }
    let list = call(
        stub.addr(),
        "GET",
        &format!("/api/v3/repos/o/r/commits/{SHA}/statuses?per_page=2"),
        &h,
        None,
    )
    .await;
    let v = list.json();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["state"], "success");
    assert_eq!(v[1]["state"], "failure");
    assert_eq!(v[0]["context"], "c");
    assert!(list.header("link").unwrap().contains("rel=\"next\""));

    let combined = call(
        stub.addr(),
        "GET",
        &format!("/api/v3/repos/o/r/commits/{SHA}/status"),
        &h,
        None,
    )
    .await;
    assert_conforms(
        &stub,
        "GET",
        &format!("/api/v3/repos/o/r/commits/{SHA}/status"),
        &combined,
    );
    assert_eq!(combined.json()["state"], "success");
    assert_eq!(combined.json()["total_count"], 1);
}

#[tokio::test]
async fn invalid_bodies_get_the_forges_validation_errors() {
    let long_desc = "d".repeat(141);
    let long_key = "k".repeat(41);
    /// forge, credential header, path, body, expected status, expected text in the answer
    type Case<'a> = (ForgeKind, (&'a str, &'a str), String, Value, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            ForgeKind::GitHub,
            ("authorization", "Bearer t"),
            format!("/repos/o/r/statuses/{SHA}"),
            json!({"state": "success", "description": long_desc, "context": "c"}),
            422,
            "description is too long (maximum is 140 characters)",
        ),
        (
            ForgeKind::GitHub,
            ("authorization", "Bearer t"),
            format!("/repos/o/r/statuses/{SHA}"),
            json!({"state": "succeeded"}),
            422,
            "state is not included in the list",
        ),
        (
            ForgeKind::GitLab,
            ("private-token", "t"),
            format!("/api/v4/projects/1/statuses/{SHA}"),
            json!({"state": "succeeded"}),
            400,
            "state does not have a valid value",
        ),
        (
            ForgeKind::BitbucketCloud,
            ("authorization", BASIC_USER),
            format!("/2.0/repositories/w/r/commit/{SHA}/statuses/build"),
            json!({"key": long_key, "state": "SUCCESSFUL", "url": "https://bitbucket.org"}),
            400,
            "key: Ensure this value has at most 40 characters (it has 41).",
        ),
        (
            ForgeKind::BitbucketServer,
            ("authorization", "Bearer t"),
            format!("/rest/api/latest/projects/P/repos/r/commits/{SHA}/builds"),
            json!({"key": "k", "state": "SUCCESSFUL"}),
            400,
            "Url must not be blank",
        ),
        (
            ForgeKind::AzureDevOps,
            ("authorization", BASIC_PAT),
            format!("/o/p/_apis/git/repositories/r/commits/{SHA}/statuses?api-version=7.1"),
            json!({"state": "succeeded", "context": {"genre": "fluxcd"}}),
            400,
            "Status.Context.Name",
        ),
    ];
    for (kind, auth, path, body, status, message) in cases {
        let stub = StubForge::start(kind, StubOptions::default()).await;
        let a = call(stub.addr(), "POST", &path, &[auth], Some(&body)).await;
        assert_eq!(a.status, status, "{kind:?}");
        let text = String::from_utf8_lossy(&a.body);
        assert!(text.contains(message), "{kind:?}: {text}");
        assert_conforms(&stub, "POST", &path, &a);
        assert!(
            !stub.violations().is_empty(),
            "{kind:?}: violation not recorded"
        );
        assert!(stub.statuses("o/r", SHA).is_empty());
    }

    // Gitea validates nothing: an unknown state is stored (but still reported as a violation).
    let stub = StubForge::start(ForgeKind::Gitea, StubOptions::default()).await;
    let path = format!("/api/v1/repos/o/r/statuses/{SHA}");
    let a = call(
        stub.addr(),
        "POST",
        &path,
        &[("authorization", "token t")],
        Some(&json!({"state": "done", "context": "  c  "})),
    )
    .await;
    assert_eq!(a.status, 201);
    assert_eq!(a.json()["context"], "c");
    assert_eq!(stub.violations().len(), 1, "{:?}", stub.violations());
}

#[tokio::test]
async fn require_auth_answers_with_the_forges_401() {
    let cases: Vec<(ForgeKind, String, &str, u16, &str)> = vec![
        (
            ForgeKind::GitHub,
            format!("/repos/o/r/commits/{SHA}/statuses"),
            "Bearer wrong",
            401,
            "Bad credentials",
        ),
        (
            ForgeKind::GitHub,
            format!("/repos/o/r/commits/{SHA}/statuses"),
            "",
            401,
            "Requires authentication",
        ),
        (
            ForgeKind::GitLab,
            format!("/api/v4/projects/1/repository/commits/{SHA}/statuses"),
            "Bearer wrong",
            401,
            "401 Unauthorized",
        ),
        (
            ForgeKind::BitbucketCloud,
            format!("/2.0/repositories/w/r/commit/{SHA}/statuses/build/k"),
            "Bearer wrong",
            401,
            "",
        ),
        (
            ForgeKind::BitbucketServer,
            format!("/rest/api/latest/projects/P/repos/r/commits/{SHA}/builds?key=k"),
            "Bearer wrong",
            401,
            "Authentication failed",
        ),
        (
            ForgeKind::AzureDevOps,
            format!("/o/p/_apis/git/repositories/r/commits/{SHA}/statuses?api-version=7.1"),
            "Basic Ondyb25n",
            401,
            "",
        ),
        (
            ForgeKind::AzureDevOps,
            format!("/o/p/_apis/git/repositories/r/commits/{SHA}/statuses?api-version=7.1"),
            "",
            203,
            "Sign In",
        ),
        (
            ForgeKind::Gitea,
            format!("/api/v1/repos/o/r/commits/{SHA}/statuses"),
            "token wrong",
            401,
            "token is required",
        ),
        (
            ForgeKind::Forgejo,
            format!("/api/v1/repos/o/r/commits/{SHA}/statuses"),
            "token wrong",
            401,
            "token is required",
        ),
    ];
    for (kind, path, sent, status, body) in cases {
        let stub = StubForge::start(kind, StubOptions::default()).await;
        stub.require_auth("Bearer right");
        let headers: Vec<(&str, &str)> = if sent.is_empty() {
            vec![]
        } else {
            vec![("authorization", sent)]
        };
        let a = call(stub.addr(), "GET", &path, &headers, None).await;
        assert_eq!(a.status, status, "{kind:?} {sent}");
        assert!(String::from_utf8_lossy(&a.body).contains(body), "{kind:?}");
        if status == 401 {
            assert_conforms(&stub, "GET", &path, &a);
        }
        let ok = call(
            stub.addr(),
            "GET",
            &path,
            &[("authorization", "Bearer right")],
            None,
        )
        .await;
        assert!(matches!(ok.status, 200 | 404), "{kind:?}: {}", ok.status);
    }
    let stub = StubForge::start(ForgeKind::BitbucketCloud, StubOptions::default()).await;
    stub.require_auth("Bearer right");
    let a = call(
        stub.addr(),
        "GET",
        &format!("/2.0/repositories/w/r/commit/{SHA}/statuses/build/k"),
        &[],
        None,
    )
    .await;
    assert_eq!(
        a.header("www-authenticate").as_deref(),
        Some("Basic realm=\"Bitbucket.org HTTP\"")
    );

    // GitLab's own header counts as the credential too.
    let stub = StubForge::start(ForgeKind::GitLab, StubOptions::default()).await;
    stub.require_auth("glpat-right");
    let path = format!("/api/v4/projects/1/repository/commits/{SHA}/statuses");
    assert_eq!(
        call(
            stub.addr(),
            "GET",
            &path,
            &[("private-token", "glpat-right")],
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(
        call(
            stub.addr(),
            "GET",
            &path,
            &[("private-token", "glpat-wrong")],
            None
        )
        .await
        .status,
        401
    );
}

#[tokio::test]
async fn scripted_responses_are_fifo_then_stateful() {
    let stub = StubForge::start(ForgeKind::BitbucketServer, StubOptions::default()).await;
    let h = [("authorization", "Bearer t")];
    let path = format!("/rest/api/latest/projects/P/repos/r/commits/{SHA}/builds");
    stub.push_response(
        Matcher::post("/builds$"),
        ScriptedResponse::text(503, "down"),
    );
    stub.push_response(
        Matcher::post("/builds$"),
        ScriptedResponse::json(429, &json!({"errors": []})).with_header("retry-after", "1"),
    );
    stub.push_response(Matcher::get("/builds$"), ScriptedResponse::status(200));
    let body = json!({"key": "k", "state": "FAILED", "url": "https://x"});

    // The GET script does not shadow POSTs queued before it.
    let a = call(stub.addr(), "POST", &path, &h, Some(&body)).await;
    assert_eq!((a.status, a.body.as_slice()), (503, &b"down"[..]));
    let a = call(stub.addr(), "POST", &path, &h, Some(&body)).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after").as_deref(), Some("1"));
    let a = call(stub.addr(), "GET", &format!("{path}?key=k"), &h, None).await;
    assert_eq!((a.status, a.body.len()), (200, 0));
    // Scripts exhausted: state behaves like the forge again.
    assert_eq!(
        call(stub.addr(), "GET", &format!("{path}?key=k"), &h, None)
            .await
            .status,
        404
    );
    assert_eq!(
        call(stub.addr(), "POST", &path, &h, Some(&body))
            .await
            .status,
        204
    );
    let got = call(stub.addr(), "GET", &format!("{path}?key=k"), &h, None).await;
    assert_eq!(got.json()["state"], "FAILED");
    assert_eq!(got.json()["projectKey"], "P");
    assert_eq!(stub.statuses("P/r", SHA), vec![body]);
    assert_eq!(stub.requests().len(), 6);
}

#[tokio::test]
async fn scripted_disconnect_and_delays() {
    let stub = StubForge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let path = format!("/repos/o/r/commits/{SHA}/statuses");
    stub.push_response(
        Matcher::any_method("/statuses$"),
        ScriptedResponse::disconnect(),
    );
    let tcp = tokio::net::TcpStream::connect(stub.addr()).await.unwrap();
    let r = common::send_on(
        tcp,
        common::request("GET", &path, "x", &[("authorization", "Bearer t")], None),
    )
    .await;
    assert!(r.is_err(), "expected a dropped connection");

    stub.push_response(
        Matcher::get("/statuses$"),
        ScriptedResponse::json(200, &json!([])).with_delay(Duration::from_millis(300)),
    );
    let started = std::time::Instant::now();
    call(
        stub.addr(),
        "GET",
        &path,
        &[("authorization", "Bearer t")],
        None,
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(300));

    stub.set_delay(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let a = call(
        stub.addr(),
        "GET",
        &path,
        &[("authorization", "Bearer t")],
        None,
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn wait_for_sees_requests_and_times_out() {
    let stub = StubForge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let addr = stub.addr();
    let path = format!("/repos/o/r/commits/{SHA}/statuses");
    let client = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        call(addr, "GET", &path, &[("authorization", "Bearer t")], None)
            .await
            .status
    });
    let got = stub
        .wait_for(1, Duration::from_secs(5))
        .await
        .expect("one request");
    assert_eq!(got.len(), 1);
    assert_eq!(client.await.unwrap(), 200);
    let err = stub
        .wait_for(2, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(err.len(), 1);
}

#[tokio::test]
async fn unknown_paths_are_404_and_violations() {
    let stub = StubForge::start(ForgeKind::GitHub, StubOptions::default()).await;
    let a = call(
        stub.addr(),
        "GET",
        "/repos/o/r/hooks",
        &[("authorization", "Bearer t")],
        None,
    )
    .await;
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["message"], "Not Found");
    assert_eq!(stub.violations().len(), 1);
    assert!(stub.violations()[0].contains("no operation"));
}

#[tokio::test]
async fn gitlab_rejects_reposting_an_open_state() {
    let stub = StubForge::start(ForgeKind::GitLab, StubOptions::default()).await;
    let h = [("private-token", "t")];
    let path = format!("/api/v4/projects/42/statuses/{SHA}");
    let pending = json!({"state": "pending", "name": "n"});
    assert_eq!(
        call(stub.addr(), "POST", &path, &h, Some(&pending))
            .await
            .status,
        201
    );
    let again = call(stub.addr(), "POST", &path, &h, Some(&pending)).await;
    assert_eq!(again.status, 400);
    assert!(
        again.json()["message"]
            .as_str()
            .unwrap()
            .contains("Cannot transition status via :enqueue from :pending")
    );
    // Finishing the open job updates it in place; a later success is a new job.
    assert_eq!(
        call(
            stub.addr(),
            "POST",
            &path,
            &h,
            Some(&json!({"state": "success", "name": "n"}))
        )
        .await
        .status,
        201
    );
    assert_eq!(
        call(
            stub.addr(),
            "POST",
            &path,
            &h,
            Some(&json!({"state": "success", "name": "n"}))
        )
        .await
        .status,
        201
    );
    assert_eq!(stub.stored("42", SHA).len(), 2);
    assert_eq!(stub.statuses("42", SHA).len(), 3);
    let list = call(
        stub.addr(),
        "GET",
        &format!("/api/v4/projects/42/repository/commits/{SHA}/statuses?name=n"),
        &h,
        None,
    )
    .await;
    assert_eq!(list.json().as_array().unwrap().len(), 1);
    assert_eq!(list.header("x-total").as_deref(), Some("1"));
    let all = call(
        stub.addr(),
        "GET",
        &format!("/api/v4/projects/42/repository/commits/{SHA}/statuses?all=true"),
        &h,
        None,
    )
    .await;
    assert_eq!(all.json().as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn bitbucket_cloud_overwrites_by_key_and_404s_unknown_keys() {
    let stub = StubForge::start(ForgeKind::BitbucketCloud, StubOptions::default()).await;
    let h = [("authorization", "Bearer t")];
    let get = format!("/repositories/w/r/commit/{SHA}/statuses/build/{KEY}");
    let missing = call(stub.addr(), "GET", &get, &h, None).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["type"], "error");
    assert!(missing.json()["error"]["message"].is_string());
    let post = format!("/repositories/w/r/commit/{SHA}/statuses/build");
    for state in ["INPROGRESS", "SUCCESSFUL"] {
        let body = json!({"key": KEY, "state": state, "url": "https://bitbucket.org"});
        assert_eq!(
            call(stub.addr(), "POST", &post, &h, Some(&body))
                .await
                .status,
            201
        );
    }
    let got = call(stub.addr(), "GET", &get, &h, None).await;
    assert_eq!(got.json()["state"], "SUCCESSFUL");
    assert_eq!(stub.stored("w/r", SHA).len(), 1);
    assert_eq!(stub.statuses("w/r", SHA).len(), 2);
    let list = call(
        stub.addr(),
        "GET",
        &format!("/repositories/w/r/commit/{SHA}/statuses"),
        &h,
        None,
    )
    .await;
    assert_conforms(
        &stub,
        "GET",
        &format!("/repositories/w/r/commit/{SHA}/statuses"),
        &list,
    );
    assert_eq!(list.json()["size"], 1);
}

#[tokio::test]
async fn extras_gitea_version_and_azure_discovery() {
    let gitea = StubForge::start(ForgeKind::Gitea, StubOptions::default()).await;
    let a = call(gitea.addr(), "GET", "/api/v1/version", &[], None).await;
    assert_eq!(a.json(), json!({"version": "1.22.0"}));
    let custom = StubForge::start(
        ForgeKind::Forgejo,
        StubOptions {
            version: Some("1.10.0".into()),
            ..StubOptions::default()
        },
    )
    .await;
    assert_eq!(
        call(custom.addr(), "GET", "/api/v1/version", &[], None)
            .await
            .json()["version"],
        "1.10.0"
    );
    assert!(gitea.violations().is_empty());

    let azure = StubForge::start(ForgeKind::AzureDevOps, StubOptions::default()).await;
    let a = call(
        azure.addr(),
        "OPTIONS",
        "/myorg/_apis",
        &[("accept", "application/json")],
        None,
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.json()["value"][0]["id"],
        "428dd4fb-fda5-4722-af02-9313b80305da"
    );
    assert!(azure.violations().is_empty());
}

#[tokio::test]
async fn insert_status_seeds_existing_state() {
    let stub = StubForge::start(ForgeKind::AzureDevOps, StubOptions::default()).await;
    stub.insert_status(
        "myorg/MyProj/my-repo",
        SHA,
        json!({"state": "succeeded", "description": DESC, "context": {"name": ID, "genre": "fluxcd"}}),
    );
    let a = call(
        stub.addr(),
        "GET",
        &format!("/myorg/MyProj/_apis/git/repositories/my-repo/commits/{SHA}/statuses"),
        &[
            ("authorization", BASIC_PAT),
            ("accept", "application/json;api-version=6.0"),
        ],
        None,
    )
    .await;
    assert_eq!(a.json()["count"], 1);
    assert_eq!(a.json()["value"][0]["context"]["genre"], "fluxcd");
    assert!(stub.violations().is_empty(), "{:?}", stub.violations());
}

#[tokio::test]
async fn reads_carry_etags_and_unchanged_ones_answer_304() {
    for f in flows() {
        let stub = StubForge::start(f.kind, StubOptions::default()).await;
        let h = [f.auth];
        // Something to read (Bitbucket's by-key reads are 404 until it exists).
        call(stub.addr(), "POST", &f.create, &h, Some(&f.body)).await;
        let first = call(stub.addr(), "GET", &f.list, &h, None).await;
        assert_eq!(first.status, 200, "{:?}", f.kind);
        let etag = first.header("etag");
        let supported = matches!(
            f.kind,
            ForgeKind::GitHub | ForgeKind::GitLab | ForgeKind::BitbucketCloud
        );
        assert_eq!(etag.is_some(), supported, "{:?}: {etag:?}", f.kind);
        let Some(etag) = etag else { continue };
        let conditional = [f.auth, ("if-none-match", etag.as_str())];
        let unchanged = call(stub.addr(), "GET", &f.list, &conditional, None).await;
        assert_eq!(unchanged.status, 304, "{:?}", f.kind);
        assert!(unchanged.body.is_empty());
        assert_eq!(unchanged.header("etag").as_deref(), Some(etag.as_str()));
        // Another write changes the answer: the old validator no longer matches.
        let mut newer = f.body.clone();
        newer["description"] = json!("health check failed");
        call(stub.addr(), "POST", &f.create, &h, Some(&newer)).await;
        let changed = call(stub.addr(), "GET", &f.list, &conditional, None).await;
        assert_eq!(changed.status, 200, "{:?}", f.kind);
        assert_ne!(changed.header("etag"), Some(etag.clone()), "{:?}", f.kind);
        assert_conforms(&stub, "GET", &f.list, &changed);
        assert!(
            stub.violations().is_empty(),
            "{:?}: {:?}",
            f.kind,
            stub.violations()
        );
    }
}

#[tokio::test]
async fn a_rate_limit_budget_is_spent_stated_and_enforced() {
    let f = &flows()[0];
    let stub = StubForge::start(ForgeKind::GitHub, StubOptions::default()).await;
    stub.set_rate_limit(5000, 2, Duration::from_secs(30), Duration::from_secs(3600));
    let h = [f.auth];
    let a = call(stub.addr(), "POST", &f.create, &h, Some(&f.body)).await;
    assert_eq!(a.status, 201);
    assert_eq!(a.header("x-ratelimit-remaining").as_deref(), Some("1"));
    let reset: u64 = a.header("x-ratelimit-reset").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((now + 29..=now + 31).contains(&reset), "{reset} vs {now}");
    // A 304 is not counted on GitHub.
    let listed = call(stub.addr(), "GET", &f.list, &h, None).await;
    assert_eq!(listed.header("x-ratelimit-remaining").as_deref(), Some("0"));
    let etag = listed.header("etag").unwrap();
    let unchanged = call(
        stub.addr(),
        "GET",
        &f.list,
        &[f.auth, ("if-none-match", &etag)],
        None,
    )
    .await;
    assert_eq!(unchanged.status, 304);
    assert_eq!(
        unchanged.header("x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    // Spent: GitHub's 403, and the write has no effect.
    let refused = call(stub.addr(), "POST", &f.create, &h, Some(&f.body)).await;
    assert_eq!(refused.status, 403);
    assert!(
        refused.json()["message"]
            .as_str()
            .unwrap()
            .contains("rate limit exceeded")
    );
    assert_eq!(stub.statuses(f.repo, SHA).len(), 1);
    assert_eq!(stub.requests_with_times().len(), 4);

    // GitLab states it with RateLimit-* and refuses with a 429.
    let g = &flows()[1];
    let stub = StubForge::start(ForgeKind::GitLab, StubOptions::default()).await;
    stub.set_rate_limit(600, 1, Duration::from_secs(60), Duration::from_secs(60));
    let a = call(stub.addr(), "POST", &g.create, &[g.auth], Some(&g.body)).await;
    assert_eq!(a.header("ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(a.header("ratelimit-limit").as_deref(), Some("600"));
    let refused = call(stub.addr(), "GET", &g.list, &[g.auth], None).await;
    assert_eq!(refused.status, 429);
    assert!(refused.header("retry-after").is_some());
}
