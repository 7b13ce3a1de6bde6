//! A recording stand-in for Flux's notification-controller event API: records every request
//! (method, path, headers, body bytes) and answers with a scripted status. It can be taken
//! down and brought back on the same port, to play an outage.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub content_type: Option<Vec<u8>>,
    pub authorization: Option<String>,
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub answered: u16,
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    /// Answers for the next requests, in order; then `default_status`.
    script: VecDeque<(u16, String)>,
    default_status: u16,
}

pub struct EventReceiver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
    }
}

impl EventReceiver {
    /// Binds 127.0.0.1:0 and answers 202 to everything.
    pub async fn start() -> EventReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State {
            default_status: 202,
            ..State::default()
        }));
        let r = EventReceiver {
            addr,
            state,
            task: Mutex::new(None),
        };
        r.serve(listener);
        r
    }

    /// `http://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn serve(&self, listener: TcpListener) {
        let state = self.state.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                conns.spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, hyper::Error>(answer(&state, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Stops listening and drops open connections: connections are refused until `resume`.
    pub fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn resume(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(Instant::now() < deadline, "rebind {}: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        self.serve(listener);
    }

    /// What every request is answered with once the script is used up.
    pub fn set_status(&self, status: u16) {
        self.state.lock().unwrap().default_status = status;
    }

    /// Answers the next request with `status` and `body`.
    pub fn push_answer(&self, status: u16, body: &str) {
        self.state
            .lock()
            .unwrap()
            .script
            .push_back((status, body.to_string()));
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Waits until `f` holds for what was received.
    pub async fn wait_for(&self, timeout: Duration, f: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if f(&self.state.lock().unwrap().received) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn answer(state: &Mutex<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let header = |name: &str| req.headers().get(name).map(|v| v.as_bytes().to_vec());
    let content_type = header("content-type");
    let authorization = header("authorization").map(|v| String::from_utf8_lossy(&v).into_owned());
    let Ok(body) = req.into_body().collect().await else {
        return Response::builder()
            .status(400)
            .body(Full::new(Bytes::new()))
            .expect("response");
    };
    let mut s = state.lock().unwrap();
    let (status, text) = s
        .script
        .pop_front()
        .unwrap_or_else(|| (s.default_status, String::new()));
    s.received.push(Received {
        method,
        path,
        content_type,
        authorization,
        body: body.to_bytes().to_vec(),
        answered: status,
    });
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(text)))
        .expect("response")
}
