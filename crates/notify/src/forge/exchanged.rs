//! Exchanged tokens (GitHub App installation tokens, Azure workload-identity access tokens):
//! the sans-I/O shape every token exchange has, and the one loop that sends its requests
//! through the transport.

use std::time::{Duration, SystemTime};

use crate::error::Failure;
use crate::request::Response;
use crate::transport;
use crate::{DeliveryError, ForgeRequest, Secret};

/// What a token exchange wants next.
#[derive(Debug)]
pub(crate) enum Step {
    /// Send this request and hand its answer to [`TokenExchange::answer`].
    Send(ForgeRequest),
    /// The token, and how long it may be kept.
    Done(Secret, Duration),
}

/// An exchange's error: boxed, being rare and large.
pub(crate) type Refused = Box<DeliveryError>;

/// A token exchange without I/O: it builds each request and reads each answer; whoever drives
/// it does the sending. `now` is the clock the JWTs and lifetimes are computed from.
pub(crate) trait TokenExchange {
    /// The first request.
    fn start(&mut self, now: SystemTime) -> Result<ForgeRequest, Refused>;
    /// The answer to the last request sent (or why there was none).
    fn answer(
        &mut self,
        answer: Result<Response, Failure>,
        now: SystemTime,
    ) -> Result<Step, Refused>;
}

/// Runs `exchange` to its end, each request under `timeout`: the one place its requests meet
/// the network.
pub(crate) async fn run(
    mut exchange: impl TokenExchange,
    client: &reqwest::Client,
    timeout: Duration,
) -> Result<(Secret, Duration), DeliveryError> {
    let mut request = exchange.start(SystemTime::now()).map_err(|e| *e)?;
    loop {
        tracing::trace!(method = %request.method, url = %request.url, "token exchange request");
        let answer = transport::send(client, &request, timeout)
            .await
            .map_err(|e| e.failure(timeout));
        match exchange.answer(answer, SystemTime::now()).map_err(|e| *e)? {
            Step::Send(next) => request = next,
            Step::Done(token, usable) => return Ok((token, usable)),
        }
    }
}
