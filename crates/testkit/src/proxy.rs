//! A real forwarding HTTP proxy on 127.0.0.1: `CONNECT` tunnels (for HTTPS) and absolute-form
//! plain HTTP requests, optionally behind Basic proxy authentication, recording what it relayed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Start-up options of a [`ForwardProxy`].
#[derive(Clone, Debug, Default)]
pub struct ProxyOptions {
    /// When set, requests without `Proxy-Authorization: Basic base64(user:pass)` get 407.
    pub require_basic_auth: Option<(String, String)>,
}

#[derive(Default)]
struct Log {
    connects: Vec<String>,
    forwarded: Vec<String>,
    rejected: usize,
}

struct Inner {
    opts: ProxyOptions,
    log: Mutex<Log>,
}

impl Inner {
    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running proxy. Dropping it stops accepting and closes open tunnels.
pub struct ForwardProxy {
    inner: Arc<Inner>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for ForwardProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for ForwardProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardProxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ForwardProxy {
    /// Binds 127.0.0.1:0 and starts serving. Must be called inside a tokio runtime.
    pub async fn start(opts: ProxyOptions) -> ForwardProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let inner = Arc::new(Inner {
            opts,
            log: Mutex::new(Log::default()),
        });
        let task = tokio::spawn(accept_loop(listener, inner.clone()));
        ForwardProxy { inner, addr, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, without credentials.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://user:pass@127.0.0.1:<port>` when authentication is required, else [`Self::url`].
    pub fn url_with_credentials(&self) -> String {
        match &self.inner.opts.require_basic_auth {
            Some((u, p)) => {
                let enc = |s: &str| {
                    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                        .to_string()
                };
                format!("http://{}:{}@{}", enc(u), enc(p), self.addr)
            }
            None => self.url(),
        }
    }

    /// `host:port` targets of the CONNECT tunnels that were opened.
    pub fn connects(&self) -> Vec<String> {
        self.inner.log().connects.clone()
    }

    /// Absolute URIs of the plain HTTP requests that were forwarded.
    pub fn forwarded(&self) -> Vec<String> {
        self.inner.log().forwarded.clone()
    }

    /// How many requests were refused with 407.
    pub fn rejected(&self) -> usize {
        self.inner.log().rejected
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(_) => continue,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let inner = inner.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| proxy(inner.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
        });
    }
}

fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

fn empty() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

fn text(status: StatusCode, msg: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(msg.to_string()));
    *resp.status_mut() = status;
    resp
}

fn authorized(inner: &Inner, req: &Request<Incoming>) -> bool {
    let Some((user, pass)) = &inner.opts.require_basic_auth else {
        return true;
    };
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    req.headers()
        .get(hyper::header::PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .is_some_and(|(scheme, cred)| {
            scheme.eq_ignore_ascii_case("basic") && cred.trim() == expected
        })
}

async fn proxy(
    inner: Arc<Inner>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, hyper::Error> {
    if !authorized(&inner, &req) {
        inner.log().rejected += 1;
        let mut resp = text(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "proxy authentication required\n",
        );
        resp.headers_mut().insert(
            hyper::header::PROXY_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"csc-testkit\""),
        );
        return Ok(resp);
    }
    if req.method() == Method::CONNECT {
        return Ok(tunnel(inner, req).await);
    }
    Ok(forward(inner, req).await)
}

async fn tunnel(inner: Arc<Inner>, req: Request<Incoming>) -> Response<ProxyBody> {
    let Some(target) = req.uri().authority().map(|a| a.to_string()) else {
        return text(StatusCode::BAD_REQUEST, "CONNECT needs host:port\n");
    };
    // Connecting before answering lets an unreachable target surface as 502, as real proxies do.
    let upstream = match TcpStream::connect(&target).await {
        Ok(s) => s,
        Err(e) => return text(StatusCode::BAD_GATEWAY, &format!("connect {target}: {e}\n")),
    };
    inner.log().connects.push(target);
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            let mut client = TokioIo::new(upgraded);
            let mut upstream = upstream;
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
    });
    Response::new(empty())
}

async fn forward(inner: Arc<Inner>, req: Request<Incoming>) -> Response<ProxyBody> {
    let uri = req.uri().clone();
    if uri.scheme_str() != Some("http") {
        return text(
            StatusCode::BAD_REQUEST,
            "only absolute-form http:// requests and CONNECT are proxied\n",
        );
    }
    let Some(host) = uri.host().map(str::to_string) else {
        return text(StatusCode::BAD_REQUEST, "missing host\n");
    };
    let port = uri.port_u16().unwrap_or(80);
    let stream = match TcpStream::connect((host.as_str(), port)).await {
        Ok(s) => s,
        Err(e) => {
            return text(
                StatusCode::BAD_GATEWAY,
                &format!("connect {host}:{port}: {e}\n"),
            );
        }
    };
    inner.log().forwarded.push(uri.to_string());

    let (mut parts, body) = req.into_parts();
    parts.uri = uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .parse()
        .expect("origin-form of a valid URI");
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or(host);
    // Hop-by-hop headers belong to the client-proxy leg only.
    for h in [
        "proxy-authorization",
        "proxy-connection",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
    ] {
        parts.headers.remove(h);
    }
    if !parts.headers.contains_key(hyper::header::HOST) {
        parts.headers.insert(
            hyper::header::HOST,
            authority
                .parse()
                .expect("authority is a valid header value"),
        );
    }
    let outgoing = Request::from_parts(parts, body);

    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(pair) => pair,
        Err(e) => return text(StatusCode::BAD_GATEWAY, &format!("handshake: {e}\n")),
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    match sender.send_request(outgoing).await {
        // The origin's body is streamed back as it arrives.
        Ok(resp) => resp.map(|b| b.boxed()),
        Err(e) => text(StatusCode::BAD_GATEWAY, &format!("upstream: {e}\n")),
    }
}
