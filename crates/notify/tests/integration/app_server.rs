//! A stand-in for GitHub's App API (installation lookup and token exchange) that verifies the
//! RS256 signature and claims of every JWT, hands out numbered tokens with a chosen lifetime,
//! and records what it was asked.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A PKCS#1 key, the form GitHub hands out for Apps. Made for these tests only.
pub const APP_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEoAIBAAKCAQEAwK7AYoRNavMDaXQbOpA/NhHYh0N/XrUAkI0qCzMNC+aS9uqf
BmiF9FtXe+YJ16awBcNwS5T+01FHqvEIhkVUhDnDmbFNQgBnxVewtrrvC9Vmo1gV
0ePeChmW4dIS5yYI6ruCkgqYJrtwfbU2Toq2oHmHglH7WQBaBtDnoyZ0E16aeOGG
9+zoA/d/TPZMiLdkVdf7WmsBAFJUlFteEGa9HAjjyGe2Ln16vk3QPs9sWoUm9mC6
r+WAyU2eIhQJqmROsidBAcZLVDFchAuaW4HS/fjMqrt7wKQ4zMCDZ0cwQ9YFlaY/
BAMTOdvjQS68SzkYsiD68N2DAlf+1uWjigqGwQIDAQABAoH/dYO4nsOJhQYo7Gwn
6uUf7ITTrJps8iLHrNkWQs9oeuqt6pSlEyFXGfVoVLDm6Ww3iF1l212uc3eFcWbl
Q4drngYDRblDZUHrGT1zNCE03RPSdFWI+UarFAZlMoggMnNmdEukAW3sKsRI6GJH
iZ92j3n1tA4p6EBOp9mN9UiPpNkhBFf0d35oTRFeekshN+uPuw/vcTk/ua3rNvRo
wz5PO1AzC51IINUK/IR2Q1wocYwNWP9wybV0jA1TsTGl75Iv64rGbL9dJ9QnXO+E
mGFIlbGdpD4B68x+psDZJtEsGsrx3k00KQ6H8zywsrtZvv0pTnsZd/nCQOiFFfoo
jYrpAoGBAORI2J8NCNMleuqLN+Z+SalQZeVYL0V6uBlL376oTKrXpqnBKcE0dWPK
j0IkseGz98geZRoE7vNiq37wmGaPVTe72xwGdqR4zznO1BHZImv+I3FHHXH88Obl
Qs95C41R+0VH+defT0oOBqONcFPfnRZgel3tqOMnWQ368ox0YFFPAoGBANgTYumm
RlZabZmn2C7gC2LV25HK/ZrsJFMtQP6H7v6v59wXSanB4QErVoYLipi+3XIlLpWm
rHrWD6MAUI7jt6j1NgR2TPAIpionhCKHWXrXiSsSTmGZY0fD/xHfeoEUBBkSIjqx
qlg+k7T8ncENDDOt1nr9ue9+TT/KFR8txALvAoGAXt0ut5mRCz1OAN1tk2jzb1qr
nUyyCCthCZIQHoiNo4kOBwjwMwt7pMZuFcxt5x8EXrLSzKc0LQvZvFx62FPD0+9K
tDCzaNGTO7CJTAlxVnM7gz1MLSwxZ6Hpy5G/jTB+PGIWntXi+yEs/RYvkYshGkVp
VFMIlayqQzb/SAKsa90CgYASSdnGYu9zIaZDKiSvGwF7tRQni+HZOgF9FMh6grDk
16itRT9T4fgUbEGfiNyLPyRpI+KEgh35K6MZLc6juXxzDYYr7INokaLW0I9riL83
GYUfoyYFNsFjcqBlN+AbisEqChHhm+YKIAnKeNM1YtBUk3Mi59TUA4GwU39kKzB6
+wKBgAJs8Ns2Zme8w+xWi2k+5GfT3+tzNw04gvkBXnsmUqyZJ/1ylrOD6qzEeBf4
ReQSpli55HxpUZ1XcXwrku0CJcpoZ67crSMR9TYM03hBSBujBTSBwuPUI/3VqxOO
cphhXaBMjAo5drpph9dWRNT76obiZI3JZCIWGZYD5QE9TJSy
-----END RSA PRIVATE KEY-----
";

/// The public half of [`APP_KEY`], as GitHub keeps it.
const APP_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAwK7AYoRNavMDaXQbOpA/
NhHYh0N/XrUAkI0qCzMNC+aS9uqfBmiF9FtXe+YJ16awBcNwS5T+01FHqvEIhkVU
hDnDmbFNQgBnxVewtrrvC9Vmo1gV0ePeChmW4dIS5yYI6ruCkgqYJrtwfbU2Toq2
oHmHglH7WQBaBtDnoyZ0E16aeOGG9+zoA/d/TPZMiLdkVdf7WmsBAFJUlFteEGa9
HAjjyGe2Ln16vk3QPs9sWoUm9mC6r+WAyU2eIhQJqmROsidBAcZLVDFchAuaW4HS
/fjMqrt7wKQ4zMCDZ0cwQ9YFlaY/BAMTOdvjQS68SzkYsiD68N2DAlf+1uWjigqG
wQIDAQAB
-----END PUBLIC KEY-----
";

pub const APP_ID: &str = "4242";
/// The same App's client ID, which GitHub accepts as the JWT issuer too.
pub const APP_CLIENT_ID: &str = "Iv23liQk8fZ2sFluxApp";

/// One request to the App API.
#[derive(Clone, Debug)]
pub struct AppCall {
    pub method: String,
    pub path: String,
    pub accept: Option<String>,
    /// Whether the JWT was signed by the App's key with sane claims.
    pub jwt_valid: bool,
}

struct State {
    calls: Vec<AppCall>,
    issued: u32,
    token_lifetime: Duration,
    orgs: BTreeMap<String, u64>,
    users: BTreeMap<String, u64>,
}

pub struct AppServer {
    base: String,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for AppServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Deserialize)]
struct Claims {
    iat: u64,
    exp: u64,
}

fn jwt_valid(authorization: Option<&str>) -> bool {
    let Some(jwt) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
        return false;
    };
    let key = DecodingKey::from_rsa_pem(APP_PUBLIC_KEY.as_bytes()).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[APP_ID, APP_CLIENT_ID]);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    let Ok(data) = jsonwebtoken::decode::<Claims>(jwt, &key, &validation) else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // GitHub's own rules: issued in the past, at most ten minutes of life.
    data.claims.iat <= now && data.claims.exp > now && data.claims.exp - data.claims.iat <= 600
}

fn reply(status: u16, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
        .unwrap()
}

fn answer(state: &Mutex<State>, call: &AppCall) -> Response<Full<Bytes>> {
    if !call.jwt_valid {
        return reply(
            401,
            &json!({"message": "A JSON web token could not be decoded", "status": "401"}),
        );
    }
    let mut st = state.lock().unwrap();
    let parts: Vec<&str> = call.path.trim_start_matches('/').split('/').collect();
    let not_found = || reply(404, &json!({"message": "Not Found", "status": "404"}));
    match (call.method.as_str(), &parts[..]) {
        ("GET", ["orgs", owner, "installation"]) => match st.orgs.get(*owner) {
            Some(id) => reply(200, &json!({"id": id, "account": {"login": owner}})),
            None => not_found(),
        },
        ("GET", ["users", owner, "installation"]) => match st.users.get(*owner) {
            Some(id) => reply(200, &json!({"id": id, "account": {"login": owner}})),
            None => not_found(),
        },
        ("POST", ["app", "installations", _, "access_tokens"]) => {
            st.issued += 1;
            let expires =
                chrono::Utc::now() + chrono::Duration::from_std(st.token_lifetime).unwrap();
            reply(
                201,
                &json!({
                    "token": format!("ghs_installation{}", st.issued),
                    "expires_at": expires.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    "permissions": {"statuses": "write"},
                }),
            )
        }
        _ => not_found(),
    }
}

impl AppServer {
    /// Installations: `orgs` and `users` map owner logins to installation IDs.
    pub async fn start(orgs: &[(&str, u64)], users: &[(&str, u64)]) -> AppServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            calls: Vec::new(),
            issued: 0,
            token_lifetime: Duration::from_secs(3600),
            orgs: orgs.iter().map(|(o, i)| ((*o).to_owned(), *i)).collect(),
            users: users.iter().map(|(o, i)| ((*o).to_owned(), *i)).collect(),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move {
                            let header = |name: &str| {
                                req.headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned)
                            };
                            let call = AppCall {
                                method: req.method().as_str().to_owned(),
                                path: req.uri().path().to_owned(),
                                accept: header("accept"),
                                jwt_valid: jwt_valid(header("authorization").as_deref()),
                            };
                            state.lock().unwrap().calls.push(call.clone());
                            Ok::<_, std::convert::Infallible>(answer(&state, &call))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        AppServer { base, state, task }
    }

    /// The `githubAppBaseURL` to configure (no trailing `/`, as users write it).
    pub fn base_url(&self) -> String {
        self.base.clone()
    }

    pub fn calls(&self) -> Vec<AppCall> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Token exchanges so far.
    pub fn tokens_issued(&self) -> u32 {
        self.state.lock().unwrap().issued
    }

    /// Lifetime of the tokens handed out from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state.lock().unwrap().token_lifetime = lifetime;
    }
}
