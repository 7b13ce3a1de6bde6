//! Table tests of the contract validator: every example embedded in the seven contract files
//! must validate, and a set of broken requests must be rejected for the right reason.

use serde_json::{Value, json};
use testkit::contract::{CONTRACT_NAMES, Contract, Direction, RecordedRequest};

const SHA: &str = "5394cb7f48332b2de7c17dd8b8384bbc84b7e738";

/// `(where, schema, example, direction)` for every example in a contract.
fn examples(c: &Contract) -> Vec<(String, Value, Value, Direction)> {
    let doc = c.document();
    let deref = |v: &Value| -> Value {
        let mut v = v.clone();
        while let Some(r) = v.get("$ref").and_then(Value::as_str) {
            v = c.resolve_ref(r).expect("resolvable $ref").clone();
        }
        v
    };
    let mut out = Vec::new();
    let push_media = |at: String, media: &Value, dir: Direction, out: &mut Vec<_>| {
        let Some(schema) = media.get("schema") else {
            return;
        };
        if let Some(ex) = media.get("example") {
            out.push((format!("{at} example"), schema.clone(), ex.clone(), dir));
        }
        for (name, ex) in media["examples"].as_object().into_iter().flatten() {
            let ex = deref(ex);
            out.push((
                format!("{at} examples.{name}"),
                schema.clone(),
                ex["value"].clone(),
                dir,
            ));
        }
    };
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let at = format!("{} {method} {path}", c.name());
            if c.is_swagger2() {
                let body_schema = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(&deref)
                    .find(|p| p["in"] == "body")
                    .map(|p| p["schema"].clone());
                if let Some(schema) = &body_schema {
                    for (name, ex) in op["x-ms-examples"].as_object().into_iter().flatten() {
                        if let Some(body) = ex["parameters"].get("body") {
                            out.push((
                                format!("{at} x-ms-examples.{name}"),
                                schema.clone(),
                                body.clone(),
                                Direction::Request,
                            ));
                        }
                    }
                    if let Some(ex) = op.get("x-contract-request-example") {
                        out.push((
                            format!("{at} x-contract-request-example"),
                            schema.clone(),
                            ex.clone(),
                            Direction::Request,
                        ));
                    }
                }
                for (code, resp) in op["responses"].as_object().into_iter().flatten() {
                    let resp = deref(resp);
                    let Some(schema) = resp.get("schema") else {
                        continue;
                    };
                    for (mt, ex) in resp["examples"].as_object().into_iter().flatten() {
                        if mt.contains("json") {
                            out.push((
                                format!("{at} {code} examples[{mt}]"),
                                schema.clone(),
                                ex.clone(),
                                Direction::Response,
                            ));
                        }
                    }
                    for (name, ex) in resp["x-contract-examples"]
                        .as_object()
                        .into_iter()
                        .flatten()
                    {
                        out.push((
                            format!("{at} {code} x-contract-examples.{name}"),
                            schema.clone(),
                            ex["value"].clone(),
                            Direction::Response,
                        ));
                    }
                }
            } else {
                if let Some(rb) = op.get("requestBody") {
                    let rb = deref(rb);
                    for (mt, media) in rb["content"].as_object().into_iter().flatten() {
                        push_media(
                            format!("{at} request {mt}"),
                            media,
                            Direction::Request,
                            &mut out,
                        );
                    }
                }
                for (code, resp) in op["responses"].as_object().into_iter().flatten() {
                    let resp = deref(resp);
                    for (mt, media) in resp["content"].as_object().into_iter().flatten() {
                        push_media(
                            format!("{at} {code} {mt}"),
                            media,
                            Direction::Response,
                            &mut out,
                        );
                    }
                }
            }
        }
    }
    let schemas = if c.is_swagger2() {
        doc["definitions"].as_object()
    } else {
        doc["components"]["schemas"].as_object()
    };
    let prefix = if c.is_swagger2() {
        "#/definitions/"
    } else {
        "#/components/schemas/"
    };
    for (name, schema) in schemas.into_iter().flatten() {
        if let Some(ex) = schema.get("example") {
            out.push((
                format!("{} schema {name} example", c.name()),
                json!({ "$ref": format!("{prefix}{name}") }),
                ex.clone(),
                Direction::Response,
            ));
        }
    }
    out
}

#[test]
fn every_embedded_example_validates() {
    let mut total = 0;
    let mut failures = Vec::new();
    for name in CONTRACT_NAMES {
        let c = Contract::load(name);
        let exs = examples(&c);
        assert!(!exs.is_empty(), "{name}: no examples found");
        for (at, schema, example, dir) in exs {
            total += 1;
            let errs = c.validate_value(&schema, &example, dir);
            if !errs.is_empty() {
                failures.push(format!("{at}: {errs:?}"));
            }
        }
    }
    assert!(total > 40, "only {total} examples found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// A request of the shape the controller sends, per contract.
fn good_create(name: &str) -> RecordedRequest {
    match name {
        "github" => RecordedRequest::new("POST", &format!("/repos/org/repo/statuses/{SHA}"))
            .with_header("authorization", "Bearer ghp_x")
            .with_json(&json!({"state":"success","description":"reconciliation succeeded","context":"kustomization/flux-system/0c9c2e41"})),
        "gitlab" => RecordedRequest::new("POST", &format!("/api/v4/projects/group%2Fsub%2Frepo/statuses/{SHA}"))
            .with_header("private-token", "glpat")
            .with_json(&json!({"state":"success","name":"kustomization/flux-system/0c9c2e41","description":"reconciliation succeeded"})),
        "bitbucket-cloud" => RecordedRequest::new("POST", &format!("/2.0/repositories/ws/repo/commit/{SHA}/statuses/build"))
            .with_header("authorization", &basic("user", "app-pass"))
            .with_json(&json!({"key":"776b17bcc91fd6eb5d0ce2a027da584c8ea81eed","url":"https://bitbucket.org","state":"SUCCESSFUL","name":"kustomization/flux-system","description":"reconciliation succeeded"})),
        "bitbucket-server" => RecordedRequest::new("POST", &format!("/rest/api/latest/projects/PRJ/repos/repo/commits/{SHA}/builds"))
            .with_header("authorization", "Bearer BBDC-token")
            .with_json(&json!({"description":"reconciliation succeeded","key":"776b17bcc91fd6eb5d0ce2a027da584c8ea81eed","name":"kustomization/flux-system [reconciliation succeeded]","state":"SUCCESSFUL","url":"https://bb.example.com/scm/PRJ/repo.git"})),
        "azure-devops" => RecordedRequest::new("POST", &format!("/myorg/MyProj/_apis/git/repositories/repo/commits/{SHA}/statuses"))
            .with_header("authorization", &basic("", "pat"))
            .with_header("accept", "application/json;api-version=6.0")
            .with_json(&json!({"context":{"genre":"fluxcd","name":"kustomization/flux-system/0c9c2e41"},"description":"reconciliation succeeded","state":"succeeded"}))
            .with_header("content-type", "application/json;charset=utf-8"),
        "gitea" | "forgejo" => RecordedRequest::new("POST", &format!("/api/v1/repos/org/repo/statuses/{SHA}"))
            .with_header("authorization", "token t0k")
            .with_json(&json!({"state":"success","target_url":"","description":"reconciliation succeeded","context":"kustomization/flux-system/0c9c2e41"})),
        _ => unreachable!(),
    }
}

fn good_list(name: &str) -> RecordedRequest {
    match name {
        "github" => RecordedRequest::new("GET", &format!("/api/v3/repos/org/repo/commits/{SHA}/statuses?per_page=50"))
            .with_header("authorization", "token ghp_x"),
        "gitlab" => RecordedRequest::new("GET", &format!("/api/v4/projects/group%2Frepo/repository/commits/{SHA}/statuses?name=kustomization%2Fflux-system%2F0c9c2e41"))
            .with_header("authorization", "Bearer glpat"),
        "bitbucket-cloud" => RecordedRequest::new("GET", &format!("/repositories/ws/repo/commit/{SHA}/statuses/build/776b17bcc91fd6eb5d0ce2a027da584c8ea81eed"))
            .with_header("authorization", "Bearer repo-access-token"),
        "bitbucket-server" => RecordedRequest::new("GET", &format!("/ctx1/ctx2/rest/api/latest/projects/PRJ/repos/repo/commits/{SHA}/builds?key=776b17bcc91fd6eb5d0ce2a027da584c8ea81eed"))
            .with_header("authorization", &basic("hello", "password")),
        "azure-devops" => RecordedRequest::new("GET", &format!("/tfs/Coll/MyProj/_apis/git/repositories/repo/commits/{SHA}/statuses?api-version=7.1"))
            .with_header("authorization", "Bearer entra"),
        "gitea" | "forgejo" => RecordedRequest::new("GET", &format!("/gitea/api/v1/repos/org/repo/commits/{SHA}/statuses?limit=50&page=1"))
            .with_header("authorization", "token t0k")
            .with_header("content-type", "application/json"),
        _ => unreachable!(),
    }
}

#[test]
fn controller_shaped_requests_conform() {
    for name in CONTRACT_NAMES {
        let c = Contract::load(name);
        for req in [good_create(name), good_list(name)] {
            if let Err(e) = c.validate(&req) {
                panic!("{name}: {} {} rejected: {e:?}", req.method, req.path);
            }
        }
    }
}

#[test]
fn operation_lookup_respects_bases_and_multi_segment_params() {
    let gh = Contract::load("github");
    let m = gh
        .find_operation("GET", "/api/v3/repos/o/r/commits/heads/main/statuses")
        .unwrap();
    assert_eq!(m.operation_id, "repos/list-commit-statuses-for-ref");
    assert_eq!(m.base, "/api/v3");
    assert_eq!(m.path_params["ref"], "heads/main");

    let gl = Contract::load("gitlab");
    let m = gl
        .find_operation("POST", "/api/v4/projects/a%2Fb/statuses/abc")
        .unwrap();
    assert_eq!(m.path_params["id"], "a/b");

    let bbc = Contract::load("bitbucket-cloud");
    assert!(
        bbc.find_operation("POST", "/2.0/repositories/w/r/commit/abc/statuses/build")
            .is_some()
    );
    assert!(
        bbc.find_operation("POST", "/repositories/w/r/commit/abc/statuses/build")
            .is_some()
    );

    let bbs = Contract::load("bitbucket-server");
    let m = bbs
        .find_operation(
            "GET",
            "/c1/c2/rest/api/latest/projects/P/repos/s/commits/abc/builds",
        )
        .unwrap();
    assert_eq!(m.base, "/c1/c2/rest");
    assert!(
        bbs.find_operation("GET", "/api/latest/projects/P/repos/s/commits/abc/builds")
            .is_none()
    );

    let az = Contract::load("azure-devops");
    let m = az
        .find_operation(
            "GET",
            "/tfs/Coll/Proj/_apis/git/repositories/r/commits/abc/statuses",
        )
        .unwrap();
    // Services and Server variants share the shape; either may match.
    let org = m
        .path_params
        .get("organization")
        .or(m.path_params.get("collection"));
    assert_eq!(org.map(String::as_str), Some("tfs/Coll"));
    assert_eq!(m.path_params["project"], "Proj");

    let gitea = Contract::load("gitea");
    assert!(
        gitea
            .find_operation("GET", "/repos/o/r/commits/abc/statuses")
            .is_none()
    );
    let m = gitea
        .find_operation("POST", "/sub/api/v1/repos/o/r/statuses/abc")
        .unwrap();
    assert_eq!(m.base, "/sub/api/v1");
}

/// Each broken request must be rejected with a message containing `expect`.
#[test]
fn broken_requests_are_rejected() {
    let long = |n: usize| "x".repeat(n);
    let cases: Vec<(&str, RecordedRequest, &str)> = vec![
        (
            "github",
            good_create("github").with_json(&json!({"state":"succeeded","context":"c"})),
            "is not one of",
        ),
        (
            "github",
            good_create("github").with_json(&json!({"state":"success","description": long(141)})),
            "length 141 exceeds maxLength 140",
        ),
        (
            "github",
            good_create("github").with_json(&json!({"description":"no state"})),
            "required property `state` is missing",
        ),
        (
            "github",
            RecordedRequest::new("POST", &format!("/repos/o/r/statuses/{SHA}"))
                .with_json(&json!({"state":"success"})),
            "no accepted credentials",
        ),
        (
            "github",
            good_create("github").with_header("authorization", "Basic Zm9vOmJhcg=="),
            "no accepted credentials",
        ),
        (
            "github",
            good_create("github").with_header("content-type", "text/plain"),
            "is not JSON",
        ),
        (
            "github",
            good_create("github").with_body("{not json"),
            "not valid JSON",
        ),
        (
            "github",
            good_list("github")
                .with_header("authorization", "Bearer x")
                .with_body("x"),
            "unexpected request body",
        ),
        (
            "github",
            RecordedRequest::new(
                "GET",
                &format!("/repos/o/r/commits/{SHA}/statuses?per_page=500"),
            )
            .with_header("authorization", "Bearer x"),
            "exceeds maximum 100",
        ),
        (
            "github",
            RecordedRequest::new("GET", "/repos/o/r/hooks")
                .with_header("authorization", "Bearer x"),
            "no operation in the github contract matches",
        ),
        (
            "github",
            RecordedRequest::new("DELETE", &format!("/repos/o/r/statuses/{SHA}"))
                .with_header("authorization", "Bearer x"),
            "method not allowed",
        ),
        (
            "gitlab",
            good_create("gitlab").with_json(&json!({"state":"failure","name":"n"})),
            "is not one of",
        ),
        (
            "gitlab",
            good_create("gitlab").with_json(&json!({"state":"success","target_url":"not a url"})),
            "not an absolute URI",
        ),
        (
            "gitlab",
            RecordedRequest::new(
                "POST",
                &format!("/api/v4/projects/1/statuses/{SHA}?private_token=t"),
            )
            .with_json(&json!({"state":"success"})),
            "no accepted credentials",
        ),
        (
            "gitlab",
            good_list("gitlab")
                .with_header("authorization", "Bearer x")
                .with_header("private-token", "")
                .with_header("authorization", "token x"),
            "no accepted credentials",
        ),
        (
            "gitlab",
            RecordedRequest::new(
                "GET",
                &format!("/api/v4/projects/1/repository/commits/{SHA}/statuses?sort=up"),
            )
            .with_header("private-token", "t"),
            "is not one of",
        ),
        (
            "bitbucket-cloud",
            good_create("bitbucket-cloud").with_json(
                &json!({"key": long(41), "state":"SUCCESSFUL","url":"https://bitbucket.org"}),
            ),
            "length 41 exceeds maxLength 40",
        ),
        (
            "bitbucket-cloud",
            good_create("bitbucket-cloud")
                .with_json(&json!({"key":"k","state":"SUCCESS","url":"https://bitbucket.org"})),
            "is not one of",
        ),
        (
            "bitbucket-cloud",
            good_create("bitbucket-cloud")
                .with_json(&json!({"key":"k","state":"FAILED","url":"relative/path"})),
            "not an absolute URI",
        ),
        (
            "bitbucket-cloud",
            good_create("bitbucket-cloud").with_header("authorization", "Basic bm9jb2xvbg=="),
            "no accepted credentials",
        ),
        (
            "bitbucket-server",
            RecordedRequest::new(
                "GET",
                &format!("/rest/api/latest/projects/P/repos/r/commits/{SHA}/builds"),
            )
            .with_header("authorization", "Bearer t"),
            "required query parameter `key` is missing",
        ),
        (
            "bitbucket-server",
            good_create("bitbucket-server").with_json(&json!({"key":"k","state":"SUCCESSFUL"})),
            "required property `url` is missing",
        ),
        (
            "bitbucket-server",
            good_create("bitbucket-server").with_json(
                &json!({"key":"k","state":"SUCCESSFUL","url": format!("https://x/{}", long(450))}),
            ),
            "exceeds maxLength 450",
        ),
        (
            "bitbucket-server",
            good_create("bitbucket-server")
                .with_json(&json!({"key":"k","state":"SUCCESSFUL","url":"u","ref":"heads/main"})),
            "does not match pattern",
        ),
        (
            "azure-devops",
            good_create("azure-devops")
                .with_json(&json!({"state":"succeeded","context":{"genre":"fluxcd"}})),
            "property `name` is required by the server",
        ),
        (
            "azure-devops",
            good_create("azure-devops")
                .with_json(&json!({"state":"success","context":{"name":"n"}})),
            "is not one of",
        ),
        (
            "azure-devops",
            RecordedRequest::new(
                "GET",
                &format!("/o/p/_apis/git/repositories/r/commits/{SHA}/statuses"),
            )
            .with_header("authorization", "Bearer t"),
            "required query parameter `api-version` is missing",
        ),
        (
            "azure-devops",
            good_create("azure-devops").with_header("authorization", "token pat"),
            "no accepted credentials",
        ),
        (
            "gitea",
            good_create("gitea").with_json(&json!({"state":"succeeded"})),
            "is not one of",
        ),
        (
            "gitea",
            good_create("gitea").with_json(&json!({"state":"skipped"})),
            "every supported server version knows",
        ),
        (
            "gitea",
            good_create("gitea").with_header("authorization", "Sudo admin"),
            "no accepted credentials",
        ),
        (
            "forgejo",
            good_create("forgejo").with_json(&json!({"state":"skipped"})),
            "is not one of",
        ),
        (
            "forgejo",
            RecordedRequest::new(
                "GET",
                &format!("/api/v1/repos/o/r/commits/{SHA}/statuses?limit=51"),
            )
            .with_header("authorization", "token t"),
            "exceeds maximum 50",
        ),
    ];
    for (name, req, expect) in cases {
        let c = Contract::load(name);
        match c.validate(&req) {
            Ok(m) => panic!(
                "{name}: {} {} accepted as {}",
                req.method, req.path, m.operation_id
            ),
            Err(errs) => assert!(
                errs.iter().any(|e| e.contains(expect)),
                "{name}: expected a violation containing {expect:?}, got {errs:?}"
            ),
        }
    }
}

#[test]
fn accepted_auth_forms_per_forge() {
    let cases: Vec<(&str, &str, &str, bool)> = vec![
        ("github", "authorization", "Bearer t", true),
        ("github", "authorization", "token t", true),
        ("github", "authorization", "Bearer ", false),
        ("gitlab", "private-token", "t", true),
        ("gitlab", "authorization", "Bearer t", true),
        ("gitlab", "authorization", "Basic dTpw", false),
        ("bitbucket-cloud", "authorization", "Bearer t", true),
        ("bitbucket-server", "authorization", "Bearer t", true),
        ("bitbucket-server", "authorization", "token t", false),
        ("azure-devops", "authorization", "Basic OnBhdA==", true),
        ("azure-devops", "authorization", "Bearer t", true),
        ("gitea", "authorization", "token t", true),
        ("gitea", "authorization", "Bearer t", true),
        ("gitea", "authorization", "Basic dTpw", true),
        ("forgejo", "authorization", "token t", true),
        ("forgejo", "x-forgejo-otp", "123456", false),
    ];
    for (name, header, value, ok) in cases {
        let c = Contract::load(name);
        let mut req = good_list(name);
        req.headers.remove("authorization");
        let req = req.with_header(header, value);
        assert_eq!(
            c.validate(&req).is_ok(),
            ok,
            "{name} {header}: {value} -> {:?}",
            c.validate(&req)
        );
    }
}

#[test]
fn unknown_contract_is_an_error() {
    assert!(Contract::try_load("sourcehut").is_err());
}
