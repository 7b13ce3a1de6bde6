//! GitHub's App API on a GitHub `StubForge` (see `StubForge::serve_github_app`): the installation lookups
//! (`GET /orgs/{owner}/installation`, `GET /users/{owner}/installation`) and the
//! installation-token exchange (`POST /app/installations/{id}/access_tokens`), verifying the
//! RS256 signature and claims of every JWT, handing out numbered tokens with a chosen
//! lifetime, and recording what it was asked. No contract covers these calls (the contracts
//! hold the commit-status operations only), so GitHub's documented answers are built here.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::contract::RecordedRequest;

/// The App's private key: PKCS#1, the form GitHub hands out for Apps. Made for tests only.
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
    /// Path below the stub's base URL, e.g. `/app/installations/77/access_tokens`.
    pub path: String,
    pub accept: Option<String>,
    /// Whether the JWT was signed by the App's key with sane claims.
    pub jwt_valid: bool,
}

/// The App API's state, kept with the stub's.
#[derive(Debug)]
pub(crate) struct AppApi {
    calls: Vec<AppCall>,
    issued: u32,
    token_lifetime: Duration,
    orgs: BTreeMap<String, u64>,
    users: BTreeMap<String, u64>,
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
    let key = DecodingKey::from_rsa_pem(APP_PUBLIC_KEY.as_bytes()).expect("the test key parses");
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[APP_ID, APP_CLIENT_ID]);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    let Ok(data) = jsonwebtoken::decode::<Claims>(jwt, &key, &validation) else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // GitHub's own rules: issued in the past, at most ten minutes of life.
    data.claims.iat <= now && data.claims.exp > now && data.claims.exp - data.claims.iat <= 600
}

/// Whether `path` is one of the App API's.
pub(crate) fn is_app_path(method: &str, path: &str) -> bool {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(
        (method, &parts[..]),
        ("GET", ["orgs" | "users", _, "installation"])
            | ("POST", ["app", "installations", _, "access_tokens"])
    )
}

impl AppApi {
    pub(crate) fn new(orgs: &[(&str, u64)], users: &[(&str, u64)]) -> Self {
        Self {
            calls: Vec::new(),
            issued: 0,
            token_lifetime: Duration::from_secs(3600),
            orgs: orgs.iter().map(|(o, i)| ((*o).to_owned(), *i)).collect(),
            users: users.iter().map(|(o, i)| ((*o).to_owned(), *i)).collect(),
        }
    }

    /// Records `rec` and answers it as GitHub does: status and JSON body. `rfc3339` writes
    /// the tokens' expiry.
    pub(crate) fn answer(
        &mut self,
        rec: &RecordedRequest,
        rfc3339: fn(SystemTime) -> String,
    ) -> (u16, Value) {
        let call = AppCall {
            method: rec.method.clone(),
            path: rec.path.clone(),
            accept: rec.header("accept").map(str::to_owned),
            jwt_valid: jwt_valid(rec.header("authorization")),
        };
        self.calls.push(call.clone());
        if !call.jwt_valid {
            return (
                401,
                json!({"message": "A JSON web token could not be decoded", "status": "401"}),
            );
        }
        let parts: Vec<&str> = call.path.trim_start_matches('/').split('/').collect();
        let not_found = (404, json!({"message": "Not Found", "status": "404"}));
        let installation = |id: Option<&u64>, owner: &str| match id {
            Some(id) => (200, json!({"id": id, "account": {"login": owner}})),
            None => not_found.clone(),
        };
        match (call.method.as_str(), &parts[..]) {
            ("GET", ["orgs", owner, "installation"]) => installation(self.orgs.get(*owner), owner),
            ("GET", ["users", owner, "installation"]) => {
                installation(self.users.get(*owner), owner)
            }
            ("POST", ["app", "installations", _, "access_tokens"]) => {
                self.issued += 1;
                let expires = SystemTime::now() + self.token_lifetime;
                (
                    201,
                    json!({
                        "token": format!("ghs_installation{}", self.issued),
                        "expires_at": rfc3339(expires),
                        "permissions": {"statuses": "write"},
                    }),
                )
            }
            _ => not_found,
        }
    }

    pub(crate) fn calls(&self) -> Vec<AppCall> {
        self.calls.clone()
    }

    pub(crate) fn issued(&self) -> u32 {
        self.issued
    }

    pub(crate) fn set_token_lifetime(&mut self, lifetime: Duration) {
        self.token_lifetime = lifetime;
    }
}
