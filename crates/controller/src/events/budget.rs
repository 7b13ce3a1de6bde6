//! The request-body budget (`--max-body-bytes-in-flight`): bytes of event bodies being read or
//! decoded at once, across all connections. A body is charged before it is read (or frame by
//! frame when it has no `Content-Length`) for its raw bytes plus what decoding may keep, and
//! the charge is held until the answer is sent; a body the budget cannot take is refused with
//! 503, which Flux's event recorders retry.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Flux's request body cap: 3 MiB; a body of exactly this size is accepted.
pub const MAX_BODY: usize = 3 * 1024 * 1024;
/// What decoding may keep beyond the body's own size (see [`decode_limit`]).
const DECODE_SLACK: usize = 64 * 1024;
/// Bodies up to this size may also use the reserve, so that ordinary events still get through
/// while large ones hold the rest of the budget.
const SMALL_BODY: usize = 64 * 1024;
/// The smallest budget: one body of [`MAX_BODY`] must fit beside the reserve.
pub const MIN_BUDGET: usize = 8 * 1024 * 1024;

/// Bytes the decoded event may hold for a body of `len` bytes.
pub fn decode_limit(len: usize) -> usize {
    len + DECODE_SLACK
}

/// The charge for a body of `len` bytes: the bytes themselves, then the decoded event.
fn cost(len: usize) -> usize {
    len + decode_limit(len)
}

#[derive(Clone)]
pub struct BodyBudget {
    general: Arc<Semaphore>,
    /// An eighth of the budget, for small bodies only.
    reserve: Arc<Semaphore>,
}

/// Budget held for one request; returned when dropped.
#[derive(Default)]
pub struct Charge {
    permits: Vec<OwnedSemaphorePermit>,
    bytes: usize,
}

/// Why a body was not read.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Over [`MAX_BODY`]: 413.
    TooLarge,
    /// The budget is spent: 503 with `Retry-After`.
    Busy,
    /// The client broke off, sent a malformed body, or took longer than the read timeout: 400.
    Unreadable,
}

impl BodyBudget {
    pub fn new(total: usize) -> Self {
        let reserve = total / 8;
        BodyBudget {
            general: Arc::new(Semaphore::new(total - reserve)),
            reserve: Arc::new(Semaphore::new(reserve)),
        }
    }

    /// Bytes not charged to any request right now.
    pub fn available(&self) -> usize {
        self.general.available_permits() + self.reserve.available_permits()
    }

    /// Adds `bytes` to `charge`, from the general pool or, while the request stays small, the
    /// reserve. `false` when neither has room.
    fn charge(&self, charge: &mut Charge, bytes: usize) -> bool {
        let Ok(n) = u32::try_from(bytes) else {
            return false;
        };
        let small = charge.bytes + bytes <= cost(SMALL_BODY);
        let permit = self.general.clone().try_acquire_many_owned(n).or_else(|e| {
            if small {
                self.reserve.clone().try_acquire_many_owned(n)
            } else {
                Err(e)
            }
        });
        match permit {
            Ok(p) => {
                charge.permits.push(p);
                charge.bytes += bytes;
                true
            }
            Err(_) => false,
        }
    }

    /// Reads a whole body within `timeout`, charged to the budget. On `TooLarge` and `Busy`
    /// the rest of `body` is still unread, for [`discard`].
    pub async fn read(
        &self,
        headers: &HeaderMap,
        body: &mut Body,
        timeout: Duration,
    ) -> Result<(Vec<u8>, Charge), BodyError> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let mut charge = Charge::default();
        let mut buf = Vec::new();
        match declared {
            Some(n) if n > MAX_BODY => return Err(BodyError::TooLarge),
            Some(n) => {
                if !self.charge(&mut charge, cost(n)) {
                    return Err(BodyError::Busy);
                }
                buf.reserve_exact(n);
            }
            None => {
                if !self.charge(&mut charge, DECODE_SLACK) {
                    return Err(BodyError::Busy);
                }
            }
        }
        let read = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| BodyError::Unreadable)?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if buf.len() + data.len() > MAX_BODY {
                    return Err(BodyError::TooLarge);
                }
                if declared.is_none() && !self.charge(&mut charge, 2 * data.len()) {
                    return Err(BodyError::Busy);
                }
                buf.extend_from_slice(&data);
            }
            Ok(())
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(())) => Ok((buf, charge)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BodyError::Unreadable),
        }
    }
}

/// Reads what is left of a refused request's body without keeping it, so that the client reads
/// the answer rather than a connection reset. A client waiting for `100 Continue` has sent
/// nothing yet and gets the answer at once.
pub async fn discard(headers: &HeaderMap, mut body: Body, timeout: Duration) {
    // A body far over the cap is not worth reading: the connection is closed instead.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > 2 * MAX_BODY) {
        return;
    }
    let expects = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects {
        return;
    }
    let drain = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > MAX_BODY {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(timeout, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(len: Option<usize>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(n) = len {
            h.insert(header::CONTENT_LENGTH, n.to_string().parse().unwrap());
        }
        h
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn charges_are_held_until_dropped_and_small_bodies_use_the_reserve() {
        let budget = BodyBudget::new(MIN_BUDGET);
        let total = budget.available();
        let big = vec![b' '; MAX_BODY];
        let (bytes, held) = budget
            .read(&headers(Some(MAX_BODY)), &mut Body::from(big.clone()), T)
            .await
            .unwrap();
        assert_eq!(bytes.len(), MAX_BODY);
        assert_eq!(budget.available(), total - cost(MAX_BODY));
        // A second large body finds no room…
        let second = budget
            .read(&headers(Some(MAX_BODY)), &mut Body::from(big.clone()), T)
            .await;
        assert_eq!(second.err(), Some(BodyError::Busy));
        // …but a small event still gets through, on the reserve.
        let (small, _c) = budget
            .read(&headers(Some(2)), &mut Body::from("{}"), T)
            .await
            .unwrap();
        assert_eq!(small, b"{}");
        drop((held, _c));
        assert_eq!(budget.available(), total);
        assert!(
            budget
                .read(&headers(Some(MAX_BODY)), &mut Body::from(big), T)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn size_limits_with_and_without_a_length() {
        let budget = BodyBudget::new(64 << 20);
        let exact = vec![b'x'; MAX_BODY];
        let over = vec![b'x'; MAX_BODY + 1];
        assert!(
            budget
                .read(&headers(None), &mut Body::from(exact.clone()), T)
                .await
                .is_ok()
        );
        assert_eq!(
            budget
                .read(
                    &headers(Some(MAX_BODY + 1)),
                    &mut Body::from(over.clone()),
                    T
                )
                .await
                .err(),
            Some(BodyError::TooLarge)
        );
        assert_eq!(
            budget
                .read(&headers(None), &mut Body::from(over), T)
                .await
                .err(),
            Some(BodyError::TooLarge)
        );
        assert_eq!(budget.available(), 64 << 20, "nothing stays charged");
    }
}
