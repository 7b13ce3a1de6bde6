//! Loads the forge API contracts (OpenAPI 3 / Swagger 2 files in `contracts/`) and checks
//! recorded requests against them: operation lookup, parameters, credentials, body schema.
//!
//! The schema validator is deliberately small: it knows the keywords these seven files use and
//! nothing else, so a contract that starts using a new keyword needs a new rule here.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use percent_encoding::percent_decode_str;
use regex::Regex;
use serde_json::Value;

/// Names accepted by [`Contract::load`].
pub const CONTRACT_NAMES: [&str; 7] = [
    "github",
    "gitlab",
    "bitbucket-cloud",
    "bitbucket-server",
    "azure-devops",
    "gitea",
    "forgejo",
];

const CONTRACT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contracts/");

/// One HTTP request as a test double received it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    /// Raw (still percent-encoded) path, without the query.
    pub path: String,
    /// Raw query string without the leading `?`; empty when there was none.
    pub query: String,
    /// Header names in lower case; repeated headers are joined with `", "`.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// Contract violations found in this request (empty when it conforms).
    pub violations: Vec<String>,
}

impl RecordedRequest {
    /// A request for `path_and_query` (e.g. `/repos/o/r/statuses/abc?x=1`).
    pub fn new(method: &str, path_and_query: &str) -> Self {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (path_and_query.to_string(), String::new()),
        };
        Self {
            method: method.to_ascii_uppercase(),
            path,
            query,
            ..Self::default()
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .insert(name.to_ascii_lowercase(), value.to_string());
        self
    }

    /// Sets the body to `value` and the content type to `application/json`.
    pub fn with_json(mut self, value: &Value) -> Self {
        self.body = serde_json::to_vec(value).expect("serialisable JSON");
        self.with_header("content-type", "application/json")
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// Decoded query parameters in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .into_owned()
            .collect()
    }

    /// First decoded value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The contract operation a request was matched to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationMatch {
    pub operation_id: String,
    pub method: String,
    /// Path template as written in the contract, e.g. `/repos/{owner}/{repo}/statuses/{sha}`.
    pub template: String,
    /// Part of the request path in front of the template (`/api/v3`, `/ctx/rest`, ...).
    pub base: String,
    /// Path parameters, percent-decoded.
    pub path_params: BTreeMap<String, String>,
}

/// Findings for a request that matched an operation, by kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestCheck {
    pub operation: OperationMatch,
    /// Missing or invalid path/query/header parameters.
    pub params: Vec<String>,
    /// No credentials in a form the contract allows.
    pub auth: Vec<String>,
    /// A body sent without a JSON `Content-Type`.
    pub content_type: Vec<String>,
    /// JSON syntax and schema problems of the body.
    pub body: Vec<String>,
}

impl RequestCheck {
    pub fn all(&self) -> Vec<String> {
        let mut v = self.params.clone();
        v.extend(self.auth.iter().cloned());
        v.extend(self.content_type.iter().cloned());
        v.extend(self.body.iter().cloned());
        v
    }
}

/// Which side of the exchange a schema is applied to. Requests may omit a discriminator
/// property that responses must carry (Bitbucket Cloud reuses its response schema for input
/// and documents that clients leave `type` out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param { name: String, multi: bool },
}

/// A way of presenting credentials that a security scheme allows.
#[derive(Clone, Debug, PartialEq, Eq)]
enum AuthForm {
    /// `Authorization: <scheme> <credentials>`; scheme stored in lower case.
    AuthorizationScheme(String),
    /// `Authorization` with any scheme (the contract does not say which).
    AnyAuthorization,
    /// A dedicated header such as `PRIVATE-TOKEN`; name stored in lower case.
    Header(String),
}

impl fmt::Display for AuthForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthForm::AuthorizationScheme(s) => write!(f, "Authorization: {s} ..."),
            AuthForm::AnyAuthorization => write!(f, "Authorization: ..."),
            AuthForm::Header(h) => write!(f, "{h}: ..."),
        }
    }
}

#[derive(Clone, Debug)]
struct Operation {
    method: String,
    template: String,
    segments: Vec<Segment>,
    operation_id: String,
    /// JSON pointer of the operation object inside the document.
    pointer: String,
    /// Path- and operation-level parameters, `$ref`s resolved, operation level winning.
    params: Vec<Value>,
    /// Body schema and whether a body is required.
    body: Option<(Value, bool)>,
    auth: Vec<AuthForm>,
}

/// One forge contract, ready to validate requests.
#[derive(Clone, Debug)]
pub struct Contract {
    name: String,
    doc: Value,
    swagger2: bool,
    /// Path prefixes the templates are relative to (`""` = served at the root).
    bases: Vec<String>,
    operations: Vec<Operation>,
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

fn escape_pointer(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

impl Contract {
    /// Loads `contracts/<name>.json`. Panics when the file is missing or malformed: a broken
    /// contract is a bug in the testkit, not something a test can recover from.
    pub fn load(name: &str) -> Contract {
        Self::try_load(name).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_load(name: &str) -> Result<Contract, String> {
        if !CONTRACT_NAMES.contains(&name) {
            return Err(format!("unknown contract {name:?}"));
        }
        let path = format!("{CONTRACT_DIR}{name}.json");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
        let doc: Value = serde_json::from_str(&text).map_err(|e| format!("parsing {path}: {e}"))?;
        Self::from_document(name, doc)
    }

    fn from_document(name: &str, doc: Value) -> Result<Contract, String> {
        let swagger2 = doc.get("swagger").is_some();
        let mut bases = Vec::new();
        if swagger2 {
            let bp = doc["basePath"].as_str().unwrap_or("/");
            bases.push(bp.trim_end_matches('/').to_string());
        } else {
            for server in doc["servers"].as_array().into_iter().flatten() {
                let url = server["url"].as_str().unwrap_or("");
                let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
                let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
                bases.push(path.trim_end_matches('/').to_string());
            }
        }
        if name == "bitbucket-cloud" {
            // The real API lives under /2.0, but a test may point the client at a stub root.
            bases.push(String::new());
        }
        if bases.is_empty() {
            bases.push(String::new());
        }
        bases.dedup();

        let mut contract = Contract {
            name: name.to_string(),
            doc,
            swagger2,
            bases,
            operations: Vec::new(),
        };
        contract.operations = contract.collect_operations()?;
        Ok(contract)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The whole contract document.
    pub fn document(&self) -> &Value {
        &self.doc
    }

    pub fn is_swagger2(&self) -> bool {
        self.swagger2
    }

    /// `(method, template, operationId)` of every operation in the contract.
    pub fn operations(&self) -> Vec<(String, String, String)> {
        self.operations
            .iter()
            .map(|o| (o.method.clone(), o.template.clone(), o.operation_id.clone()))
            .collect()
    }

    /// Resolves a local `$ref` such as `#/components/schemas/status`.
    pub fn resolve_ref(&self, reference: &str) -> Option<&Value> {
        let pointer = reference.strip_prefix('#')?;
        self.doc.pointer(pointer)
    }

    /// Follows `$ref` chains until a non-reference object is reached.
    fn deref<'a>(&'a self, mut value: &'a Value) -> &'a Value {
        for _ in 0..32 {
            match value.get("$ref").and_then(Value::as_str) {
                Some(r) => match self.resolve_ref(r) {
                    Some(v) => value = v,
                    None => return value,
                },
                None => return value,
            }
        }
        value
    }

    fn collect_operations(&self) -> Result<Vec<Operation>, String> {
        let paths = self.doc["paths"]
            .as_object()
            .ok_or_else(|| format!("{}: no paths", self.name))?;
        let global_security = self.doc.get("security");
        let mut ops = Vec::new();
        for (template, item) in paths {
            let path_params: Vec<Value> = item
                .get("parameters")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|p| self.deref(p).clone()).collect())
                .unwrap_or_default();
            for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
                let Some(op) = item.get(method) else { continue };
                let mut params = path_params.clone();
                for p in op["parameters"].as_array().into_iter().flatten() {
                    let p = self.deref(p).clone();
                    params.retain(|q| !(q["name"] == p["name"] && q["in"] == p["in"]));
                    params.push(p);
                }
                let segments = template
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(|s| self.segment(s, &params))
                    .collect();
                let body = self.body_of(op, &params);
                // The forges accept their global schemes on every operation; the operation-level
                // lists in these extracts are narrower upstream artefacts (Azure names only
                // oauth2 there although PATs work everywhere), so both are honoured.
                let mut auth = Vec::new();
                for req_list in [op.get("security"), global_security].into_iter().flatten() {
                    for requirement in req_list.as_array().into_iter().flatten() {
                        for scheme in requirement
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(k, _)| k)
                        {
                            for form in self.auth_forms(scheme) {
                                if !auth.contains(&form) {
                                    auth.push(form);
                                }
                            }
                        }
                    }
                }
                ops.push(Operation {
                    method: method.to_ascii_uppercase(),
                    template: template.clone(),
                    segments,
                    operation_id: op["operationId"].as_str().unwrap_or(template).to_string(),
                    pointer: format!("/paths/{}/{method}", escape_pointer(template)),
                    params,
                    body,
                    auth,
                });
            }
        }
        Ok(ops)
    }

    fn segment(&self, s: &str, params: &[Value]) -> Segment {
        let Some(name) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
            return Segment::Literal(s.to_string());
        };
        let declared_multi = params
            .iter()
            .any(|p| p["name"] == name && p["x-multi-segment"] == Value::Bool(true));
        // Azure DevOps Server puts a virtual directory in front of the collection
        // (`/tfs/Coll/...`), so the first path element may span several segments.
        let azure_root =
            self.name == "azure-devops" && (name == "organization" || name == "collection");
        Segment::Param {
            name: name.to_string(),
            multi: declared_multi || azure_root,
        }
    }

    fn body_of(&self, op: &Value, params: &[Value]) -> Option<(Value, bool)> {
        if self.swagger2 {
            params
                .iter()
                .find(|p| p["in"] == "body")
                .map(|p| (p["schema"].clone(), p["required"] == Value::Bool(true)))
        } else {
            let rb = self.deref(op.get("requestBody")?);
            let content = rb["content"].as_object()?;
            let schema = content
                .iter()
                .find(|(mt, _)| mt.starts_with("application/json"))
                .or_else(|| content.iter().next())
                .map(|(_, c)| c["schema"].clone())?;
            Some((schema, rb["required"] == Value::Bool(true)))
        }
    }

    fn security_scheme(&self, name: &str) -> Option<&Value> {
        if self.swagger2 {
            self.doc["securityDefinitions"].get(name)
        } else {
            self.doc["components"]["securitySchemes"].get(name)
        }
    }

    fn auth_forms(&self, scheme_name: &str) -> Vec<AuthForm> {
        let Some(scheme) = self.security_scheme(scheme_name) else {
            return Vec::new();
        };
        let kind = scheme["type"].as_str().unwrap_or("");
        match kind {
            "basic" => vec![AuthForm::AuthorizationScheme("basic".into())],
            "oauth2" => vec![AuthForm::AuthorizationScheme("bearer".into())],
            "http" => {
                let s = scheme["scheme"].as_str().unwrap_or("").to_ascii_lowercase();
                vec![AuthForm::AuthorizationScheme(s)]
            }
            "apiKey" => {
                let header = scheme["name"].as_str().unwrap_or("");
                if scheme["in"] != "header" {
                    // Query-string credentials (`private_token`, `access_token`, `token`) work
                    // but are deprecated or discouraged by every forge and leak into access
                    // logs, so a request relying on them is reported.
                    return Vec::new();
                }
                let lower = header.to_ascii_lowercase();
                if lower.contains("sudo") || lower.contains("otp") {
                    // Sudo / 2FA headers only modify an otherwise authenticated request.
                    return Vec::new();
                }
                if lower != "authorization" {
                    return vec![AuthForm::Header(lower)];
                }
                // An apiKey in `Authorization` does not say which scheme word to use; the
                // contracts spell it out in prose ("'Authorization: token <token>'").
                let text = format!(
                    "{} {}",
                    scheme["description"].as_str().unwrap_or(""),
                    scheme["x-contract-notes"].as_str().unwrap_or("")
                );
                let re = Regex::new(r"Authorization: ([A-Za-z]+) ").expect("static regex");
                let mut forms: Vec<AuthForm> = Vec::new();
                for cap in re.captures_iter(&text) {
                    let f = AuthForm::AuthorizationScheme(cap[1].to_ascii_lowercase());
                    if !forms.contains(&f) {
                        forms.push(f);
                    }
                }
                if forms.is_empty() && text.contains("Basic HTTP Authentication") {
                    forms.push(AuthForm::AuthorizationScheme("basic".into()));
                }
                if forms.is_empty() {
                    forms.push(AuthForm::AnyAuthorization);
                }
                forms
            }
            _ => Vec::new(),
        }
    }

    /// Candidate template-relative paths for a raw request path, with the stripped base.
    fn relative_paths<'p>(&self, path: &'p str) -> Vec<(&'p str, &'p str)> {
        let mut out = Vec::new();
        for base in &self.bases {
            if base.is_empty() {
                out.push(("", path));
                continue;
            }
            // The base may follow a context path (`/bitbucket/rest`, `/gitea/api/v1`). Bases
            // start with '/', so every hit is segment aligned at its start.
            let mut from = 0;
            while let Some(i) = path[from..].find(base.as_str()) {
                let end = from + i + base.len();
                if end == path.len() || path.as_bytes()[end] == b'/' {
                    out.push((&path[..end], &path[end..]));
                }
                from += i + 1;
            }
        }
        out
    }

    /// Finds the operation for `method` + raw `path` (no query).
    pub fn find_operation(&self, method: &str, path: &str) -> Option<OperationMatch> {
        self.find_operation_index(method, path).map(|(_, m)| m)
    }

    fn find_operation_index(&self, method: &str, path: &str) -> Option<(usize, OperationMatch)> {
        let method = method.to_ascii_uppercase();
        for (base, rel) in self.relative_paths(path) {
            let segs: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
            for (i, op) in self.operations.iter().enumerate() {
                if op.method != method {
                    continue;
                }
                let mut params = BTreeMap::new();
                if match_segments(&op.segments, &segs, &mut params) {
                    return Some((
                        i,
                        OperationMatch {
                            operation_id: op.operation_id.clone(),
                            method: op.method.clone(),
                            template: op.template.clone(),
                            base: base.to_string(),
                            path_params: params,
                        },
                    ));
                }
            }
        }
        None
    }

    /// Checks `req` against the contract. On success returns the matched operation; otherwise
    /// every violation found, each a readable sentence.
    pub fn validate(&self, req: &RecordedRequest) -> Result<OperationMatch, Vec<String>> {
        let check = self.check_request(req)?;
        let errs = check.all();
        if errs.is_empty() {
            Ok(check.operation)
        } else {
            Err(errs)
        }
    }

    /// Like [`Contract::validate`], but keeps the findings apart by kind so a stub can answer
    /// the way the forge would (401 for credentials, 4xx validation errors for bodies). `Err`
    /// means no operation matched.
    pub fn check_request(&self, req: &RecordedRequest) -> Result<RequestCheck, Vec<String>> {
        let Some((index, m)) = self.find_operation_index(&req.method, &req.path) else {
            let known = self.find_any_method(&req.path);
            return Err(vec![match known {
                Some(methods) => format!(
                    "{} {}: method not allowed by the {} contract (allowed: {})",
                    req.method,
                    req.path,
                    self.name,
                    methods.join(", ")
                ),
                None => format!(
                    "{} {}: no operation in the {} contract matches this path",
                    req.method, req.path, self.name
                ),
            }]);
        };
        let op = &self.operations[index];
        let prefix = format!("{} {} ({})", req.method, req.path, m.operation_id);
        let tag = |v: Vec<String>| -> Vec<String> {
            v.into_iter().map(|e| format!("{prefix}: {e}")).collect()
        };
        let mut params = Vec::new();
        self.check_params(op, &m, req, &mut params);
        let mut auth = Vec::new();
        self.check_auth(op, req, &mut auth);
        let mut content_type = Vec::new();
        let mut body = Vec::new();
        self.check_body(op, req, &mut content_type, &mut body);
        Ok(RequestCheck {
            operation: m,
            params: tag(params),
            auth: tag(auth),
            content_type: tag(content_type),
            body: tag(body),
        })
    }

    fn find_any_method(&self, path: &str) -> Option<Vec<String>> {
        let mut methods = Vec::new();
        for (_, rel) in self.relative_paths(path) {
            let segs: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
            for op in &self.operations {
                if match_segments(&op.segments, &segs, &mut BTreeMap::new())
                    && !methods.contains(&op.method)
                {
                    methods.push(op.method.clone());
                }
            }
        }
        (!methods.is_empty()).then_some(methods)
    }

    fn param_schema<'a>(&'a self, p: &'a Value) -> &'a Value {
        if self.swagger2 {
            p
        } else {
            p.get("schema").unwrap_or(&Value::Null)
        }
    }

    fn check_params(
        &self,
        op: &Operation,
        m: &OperationMatch,
        req: &RecordedRequest,
        errs: &mut Vec<String>,
    ) {
        let query = req.query_pairs();
        for p in &op.params {
            let name = p["name"].as_str().unwrap_or("");
            let required = p["required"] == Value::Bool(true);
            let location = p["in"].as_str().unwrap_or("");
            let raw: Option<String> = match location {
                "path" => m.path_params.get(name).cloned(),
                "query" => query
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .or_else(|| {
                        // Azure DevOps also reads the version from `Accept: ...;api-version=X`,
                        // which is how its Go SDK sends it.
                        (name == "api-version")
                            .then(|| accept_api_version(req.header("accept")?))
                            .flatten()
                    }),
                "header" => req.header(name).map(str::to_string),
                _ => continue,
            };
            match raw {
                None if required => {
                    errs.push(format!("required {location} parameter `{name}` is missing"))
                }
                None => {}
                Some(v) if location == "path" && v.is_empty() => {
                    errs.push(format!("path parameter `{name}` is empty"))
                }
                Some(v) => {
                    let schema = self.param_schema(p);
                    let value = coerce_param(&v, schema);
                    let mut perrs = Vec::new();
                    self.validate_schema_at(
                        schema,
                        &value,
                        &format!("{location} parameter `{name}`"),
                        Direction::Request,
                        &mut perrs,
                    );
                    errs.extend(perrs);
                }
            }
        }
    }

    fn check_auth(&self, op: &Operation, req: &RecordedRequest, errs: &mut Vec<String>) {
        if op.auth.is_empty() {
            return;
        }
        let authorization = req.header("authorization");
        let ok = op.auth.iter().any(|form| match form {
            AuthForm::Header(h) => req.header(h).is_some_and(|v| !v.trim().is_empty()),
            AuthForm::AnyAuthorization => authorization.is_some_and(|v| !v.trim().is_empty()),
            AuthForm::AuthorizationScheme(s) => authorization.is_some_and(|v| {
                let (scheme, cred) = v.trim().split_once(' ').unwrap_or((v, ""));
                let cred = cred.trim();
                scheme.eq_ignore_ascii_case(s)
                    && !cred.is_empty()
                    && (s != "basic" || basic_is_well_formed(cred))
            }),
        });
        if !ok {
            let allowed: Vec<String> = op.auth.iter().map(ToString::to_string).collect();
            let got = match authorization {
                Some(v) => format!(
                    "Authorization: {} ...",
                    v.split_whitespace().next().unwrap_or("")
                ),
                None => "no Authorization header".to_string(),
            };
            errs.push(format!(
                "no accepted credentials (allowed: {}; got {got})",
                allowed.join(" | ")
            ));
        }
    }

    fn check_body(
        &self,
        op: &Operation,
        req: &RecordedRequest,
        ct_errs: &mut Vec<String>,
        errs: &mut Vec<String>,
    ) {
        let Some((schema, required)) = &op.body else {
            if !req.body.is_empty() {
                errs.push(format!(
                    "unexpected request body ({} bytes) on an operation without one",
                    req.body.len()
                ));
            }
            return;
        };
        if req.body.is_empty() {
            let schema_requires = !self.deref(schema)["required"]
                .as_array()
                .is_none_or(Vec::is_empty);
            if *required || schema_requires {
                errs.push("request body is required but empty".to_string());
            }
            return;
        }
        match req.header("content-type") {
            Some(ct) if is_json_media_type(ct) => {}
            Some(ct) => ct_errs.push(format!("Content-Type `{ct}` is not JSON")),
            None => ct_errs.push("Content-Type header missing on a JSON body".to_string()),
        }
        match serde_json::from_slice::<Value>(&req.body) {
            Ok(value) => self.validate_schema_at(schema, &value, "body", Direction::Request, errs),
            Err(e) => errs.push(format!("body is not valid JSON: {e}")),
        }
    }

    /// Validates `value` against `schema` (which may contain local `$ref`s into this contract).
    pub fn validate_value(
        &self,
        schema: &Value,
        value: &Value,
        direction: Direction,
    ) -> Vec<String> {
        let mut errs = Vec::new();
        self.validate_schema_at(schema, value, "$", direction, &mut errs);
        errs
    }

    /// Validates a response body the way a client would see it: looks up the documented
    /// response for `status` and checks the body against its JSON schema (if it has one).
    pub fn validate_response(
        &self,
        m: &OperationMatch,
        status: u16,
        body: &[u8],
    ) -> Result<(), Vec<String>> {
        let Some(op) = self
            .operations
            .iter()
            .find(|o| o.operation_id == m.operation_id && o.method == m.method)
        else {
            return Err(vec![format!("unknown operation {}", m.operation_id)]);
        };
        let responses = &self.doc.pointer(&op.pointer).expect("operation pointer")["responses"];
        // GitLab and Azure document 200 for creates that really answer 201 (the contracts note
        // this), so an undocumented success code is checked against the documented one.
        let documented_success = || {
            (200..300)
                .contains(&status)
                .then(|| {
                    responses.as_object().and_then(|r| {
                        r.iter()
                            .find(|(code, _)| code.starts_with('2'))
                            .map(|(_, v)| v)
                    })
                })
                .flatten()
        };
        let Some(resp) = responses
            .get(status.to_string())
            .or_else(|| responses.get("default"))
            .or_else(documented_success)
        else {
            return Err(vec![format!(
                "{}: status {status} is not documented",
                m.operation_id
            )]);
        };
        let resp = self.deref(resp);
        let schema = if self.swagger2 {
            resp.get("schema")
        } else {
            resp["content"].as_object().and_then(|c| {
                c.iter()
                    .find(|(mt, _)| is_json_media_type(mt))
                    .and_then(|(_, v)| v.get("schema"))
            })
        };
        let Some(schema) = schema else {
            return Ok(());
        };
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            vec![format!(
                "{} {status}: response body is not JSON: {e}",
                m.operation_id
            )]
        })?;
        let errs = self.validate_value(schema, &value, Direction::Response);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs
                .into_iter()
                .map(|e| format!("{} {status}: {e}", m.operation_id))
                .collect())
        }
    }

    fn validate_schema_at(
        &self,
        schema: &Value,
        value: &Value,
        at: &str,
        dir: Direction,
        errs: &mut Vec<String>,
    ) {
        let Some(obj) = schema.as_object() else {
            return;
        };
        if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
            match self.resolve_ref(r) {
                Some(target) => self.validate_schema_at(target, value, at, dir, errs),
                None => errs.push(format!("{at}: unresolvable $ref {r}")),
            }
            // Siblings of $ref are ignored by OpenAPI 3.0 / Swagger 2, except the contract's own
            // additions, which exist precisely to tighten a referenced schema in one place.
            check_contract_required(obj, value, at, errs);
            return;
        }

        let nullable = obj.get("nullable") == Some(&Value::Bool(true))
            || obj.get("x-nullable") == Some(&Value::Bool(true));
        if value.is_null() {
            if nullable {
                return;
            }
            if obj.contains_key("type") || obj.contains_key("enum") {
                errs.push(format!("{at}: null is not allowed"));
                return;
            }
        }

        if let Some(t) = obj.get("type").and_then(Value::as_str)
            && !type_matches(t, value)
        {
            errs.push(format!("{at}: expected {t}, got {}", json_type_name(value)));
            return;
        }

        let mut in_enum = true;
        if let Some(options) = obj.get("enum").and_then(Value::as_array)
            && !options.contains(value)
        {
            in_enum = false;
            errs.push(format!(
                "{at}: {value} is not one of {}",
                Value::Array(options.clone())
            ));
        }
        if dir == Direction::Request
            && in_enum
            && let Some(options) = obj
                .get("x-contract-portable-enum")
                .and_then(Value::as_array)
            && !options.contains(value)
        {
            errs.push(format!(
                "{at}: {value} is not one of the values every supported server version knows {}",
                Value::Array(options.clone())
            ));
        }

        match value {
            Value::String(s) => self.check_string(obj, s, at, errs),
            Value::Number(n) => check_number(obj, n, at, errs),
            Value::Object(map) => self.check_object(obj, map, at, dir, errs),
            Value::Array(items) => self.check_array(obj, items, at, dir, errs),
            _ => {}
        }
        check_contract_required(obj, value, at, errs);

        if let Some(all) = obj.get("allOf").and_then(Value::as_array) {
            for s in all {
                self.validate_schema_at(s, value, at, dir, errs);
            }
        }
        if let Some(one) = obj.get("oneOf").and_then(Value::as_array) {
            let matching = one
                .iter()
                .filter(|s| {
                    let mut e = Vec::new();
                    self.validate_schema_at(s, value, at, dir, &mut e);
                    e.is_empty()
                })
                .count();
            if matching != 1 {
                errs.push(format!(
                    "{at}: must match exactly one oneOf alternative, matches {matching}"
                ));
            }
        }
        if let Some(any) = obj.get("anyOf").and_then(Value::as_array) {
            let ok = any.iter().any(|s| {
                let mut e = Vec::new();
                self.validate_schema_at(s, value, at, dir, &mut e);
                e.is_empty()
            });
            if !ok {
                errs.push(format!("{at}: matches no anyOf alternative"));
            }
        }
    }

    fn check_string(
        &self,
        obj: &serde_json::Map<String, Value>,
        s: &str,
        at: &str,
        errs: &mut Vec<String>,
    ) {
        // Forges count characters, not bytes (GitHub's 140, Bitbucket's 40).
        let len = s.chars().count() as u64;
        if let Some(max) = obj.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            errs.push(format!("{at}: length {len} exceeds maxLength {max}"));
        }
        if let Some(min) = obj.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            errs.push(format!("{at}: length {len} is below minLength {min}"));
        }
        if let Some(p) = obj.get("pattern").and_then(Value::as_str) {
            match Regex::new(p) {
                Ok(re) if !re.is_match(s) => {
                    errs.push(format!("{at}: {s:?} does not match pattern {p}"))
                }
                Ok(_) => {}
                Err(e) => errs.push(format!("{at}: contract pattern {p} does not compile: {e}")),
            }
        }
        let format = obj
            .get("format")
            .or_else(|| obj.get("x-contract-format"))
            .and_then(Value::as_str);
        // Only `uri` is checked: it is the one format a forge enforces on input (GitLab
        // target_url, Bitbucket Cloud url). Dates and e-mails appear only in responses.
        if format == Some("uri") && url::Url::parse(s).is_err() {
            errs.push(format!("{at}: {s:?} is not an absolute URI"));
        }
    }

    fn check_object(
        &self,
        obj: &serde_json::Map<String, Value>,
        map: &serde_json::Map<String, Value>,
        at: &str,
        dir: Direction,
        errs: &mut Vec<String>,
    ) {
        let discriminator = obj
            .get("discriminator")
            .and_then(|d| d.get("propertyName"))
            .and_then(Value::as_str);
        for req in obj
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(name) = req.as_str() else { continue };
            if dir == Direction::Request && Some(name) == discriminator {
                continue;
            }
            if !map.contains_key(name) {
                errs.push(format!("{at}: required property `{name}` is missing"));
            }
        }
        let props = obj.get("properties").and_then(Value::as_object);
        for (key, v) in map {
            let child = format!("{at}.{key}");
            match props.and_then(|p| p.get(key)) {
                Some(s) => self.validate_schema_at(s, v, &child, dir, errs),
                None => match obj.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        errs.push(format!("{at}: property `{key}` is not allowed"))
                    }
                    Some(s @ Value::Object(_)) => self.validate_schema_at(s, v, &child, dir, errs),
                    _ => {}
                },
            }
        }
    }

    fn check_array(
        &self,
        obj: &serde_json::Map<String, Value>,
        items: &[Value],
        at: &str,
        dir: Direction,
        errs: &mut Vec<String>,
    ) {
        if let Some(min) = obj.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            errs.push(format!("{at}: {} items, minItems is {min}", items.len()));
        }
        if let Some(max) = obj.get("maxItems").and_then(Value::as_u64)
            && (items.len() as u64) > max
        {
            errs.push(format!("{at}: {} items, maxItems is {max}", items.len()));
        }
        if obj.get("uniqueItems") == Some(&Value::Bool(true)) {
            for (i, a) in items.iter().enumerate() {
                if items[..i].contains(a) {
                    errs.push(format!("{at}[{i}]: duplicate item"));
                }
            }
        }
        if let Some(item_schema) = obj.get("items") {
            for (i, v) in items.iter().enumerate() {
                self.validate_schema_at(item_schema, v, &format!("{at}[{i}]"), dir, errs);
            }
        }
    }
}

fn check_contract_required(
    obj: &serde_json::Map<String, Value>,
    value: &Value,
    at: &str,
    errs: &mut Vec<String>,
) {
    let (Some(names), Some(map)) = (
        obj.get("x-contract-required-properties")
            .and_then(Value::as_array),
        value.as_object(),
    ) else {
        return;
    };
    for name in names.iter().filter_map(Value::as_str) {
        let present = map
            .get(name)
            .is_some_and(|v| !v.is_null() && v.as_str() != Some(""));
        if !present {
            errs.push(format!(
                "{at}: property `{name}` is required by the server (x-contract-required-properties)"
            ));
        }
    }
}

fn check_number(
    obj: &serde_json::Map<String, Value>,
    n: &serde_json::Number,
    at: &str,
    errs: &mut Vec<String>,
) {
    let Some(x) = n.as_f64() else { return };
    if let Some(max) = obj.get("maximum").and_then(Value::as_f64)
        && x > max
    {
        errs.push(format!("{at}: {n} exceeds maximum {max}"));
    }
    if let Some(min) = obj.get("minimum").and_then(Value::as_f64)
        && x < min
    {
        errs.push(format!("{at}: {n} is below minimum {min}"));
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        // Unknown words (e.g. Swagger's `file`) are not constraints this validator knows.
        _ => true,
    }
}

fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Query and path values arrive as text; give them the JSON type their schema declares so the
/// same validator can check them.
fn coerce_param(raw: &str, schema: &Value) -> Value {
    match schema["type"].as_str() {
        Some("integer") => raw
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(raw.to_string())),
        Some("number") => raw
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(raw.to_string())),
        Some("boolean") => match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(raw.to_string()),
        },
        _ => Value::String(raw.to_string()),
    }
}

fn accept_api_version(accept: &str) -> Option<String> {
    accept.split([';', ',']).find_map(|part| {
        let (k, v) = part.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("api-version")).then(|| v.trim().to_string())
    })
}

/// `application/json`, `application/json; charset=utf-8`, `application/vnd.x+json`.
pub fn is_json_media_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn basic_is_well_formed(cred: &str) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(cred)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .is_some_and(|s| s.contains(':'))
}

fn match_segments(pattern: &[Segment], segs: &[&str], out: &mut BTreeMap<String, String>) -> bool {
    let Some((first, rest)) = pattern.split_first() else {
        return segs.is_empty();
    };
    match first {
        Segment::Literal(l) => {
            segs.first().is_some_and(|s| s == l) && match_segments(rest, &segs[1..], out)
        }
        Segment::Param { name, multi } => {
            let max = if *multi {
                segs.len()
            } else {
                segs.len().min(1)
            };
            for take in 1..=max {
                let mut attempt = out.clone();
                attempt.insert(
                    name.clone(),
                    segs[..take]
                        .iter()
                        .map(|s| decode(s))
                        .collect::<Vec<_>>()
                        .join("/"),
                );
                if match_segments(rest, &segs[take..], &mut attempt) {
                    *out = attempt;
                    return true;
                }
            }
            false
        }
    }
}
