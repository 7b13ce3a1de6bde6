//! What one [`Forge::execute_with`](crate::Forge::execute_with) cost and learnt, besides its
//! outcome: the requests made by kind, the credential's rate-limit budget as the forge's answer
//! headers state it, and the validator (`ETag`) of a read, for the next conditional read.

use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;

/// A read answer larger than this is not kept as validated content (the store stays small);
/// the next read of it is simply unconditional.
pub const MAX_VALIDATED_BYTES: usize = 64 * 1024;

/// The rate-limit budget of a credential, as one answer's headers state it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests left in the current window (`X-RateLimit-Remaining`, `RateLimit-Remaining`).
    pub remaining: Option<u64>,
    /// The window's whole budget (`X-RateLimit-Limit`, `RateLimit-Limit`).
    pub limit: Option<u64>,
    /// When the window resets, in ms since the epoch (`X-RateLimit-Reset`, `RateLimit-Reset`).
    pub reset_at_ms: Option<i64>,
    /// Bitbucket Cloud's `X-RateLimit-NearLimit: true`: less than a fifth of the budget is
    /// left (it states neither the remaining count nor a reset: its window is a rolling hour).
    pub near_limit: bool,
}

impl RateLimit {
    /// `None` when the answer carries no rate-limit header at all.
    pub fn from_headers(headers: &HeaderMap, now: SystemTime) -> Option<RateLimit> {
        let text = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| headers.get(*n))
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let number = |names: &[&str]| text(names).and_then(crate::error::whole_number);
        let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        // A delay, epoch seconds or epoch milliseconds, read as the retry classification
        // reads them, without overflow.
        let reset_at_ms = number(&["x-ratelimit-reset", "ratelimit-reset"]).map(|v| {
            let secs = crate::error::reset_epoch_secs(v, now_secs);
            i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
        });
        let rate = RateLimit {
            remaining: number(&["x-ratelimit-remaining", "ratelimit-remaining"]),
            limit: number(&["x-ratelimit-limit", "ratelimit-limit"]),
            reset_at_ms,
            near_limit: text(&["x-ratelimit-nearlimit"])
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        };
        (rate != RateLimit::default()).then_some(rate)
    }
}

/// A read answer's `ETag` and the answer it validates: a later `304 Not Modified` to the same
/// request means "still this".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validator {
    /// The read request's URL.
    pub url: String,
    /// The `ETag` value, sent back as `If-None-Match`.
    pub etag: String,
    /// The body of the answer the `ETag` was sent with.
    pub body: Vec<u8>,
}

/// Requests made and what their answers said, for one execution.
#[derive(Clone, Debug, Default)]
pub struct Exchange {
    /// Reads sent (the duplicate check), including conditional ones.
    pub reads: u32,
    /// Writes sent.
    pub writes: u32,
    /// The budget as the last answer that stated it did.
    pub rate_limit: Option<RateLimit>,
    /// A new validator for the read, to keep for the next one.
    pub validator: Option<Validator>,
    /// The read was answered `304 Not Modified` and the kept answer was used.
    pub not_modified: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn budgets_from_each_forge_s_headers() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let github = headers(&[
            ("x-ratelimit-limit", "5000"),
            ("x-ratelimit-remaining", "10"),
            ("x-ratelimit-reset", "1700000020"),
        ]);
        assert_eq!(
            RateLimit::from_headers(&github, now),
            Some(RateLimit {
                remaining: Some(10),
                limit: Some(5000),
                reset_at_ms: Some(1_700_000_020_000),
                near_limit: false
            })
        );
        let gitlab = headers(&[("ratelimit-remaining", "3"), ("ratelimit-reset", "30")]);
        let r = RateLimit::from_headers(&gitlab, now).unwrap();
        assert_eq!(r.remaining, Some(3));
        assert_eq!(r.reset_at_ms, Some(1_700_000_030_000));
        let bitbucket = headers(&[
            ("x-ratelimit-limit", "1000"),
            ("x-ratelimit-nearlimit", "true"),
        ]);
        let r = RateLimit::from_headers(&bitbucket, now).unwrap();
        assert!(r.near_limit);
        assert_eq!((r.limit, r.remaining), (Some(1000), None));
        assert_eq!(RateLimit::from_headers(&headers(&[]), now), None);
        let junk = headers(&[("x-ratelimit-remaining", "lots")]);
        assert_eq!(RateLimit::from_headers(&junk, now), None);
        // Epoch milliseconds are recognised; a value too large for any integer saturates
        // instead of wrapping into the past.
        let ms = headers(&[("x-ratelimit-reset", "1700000020000")]);
        let r = RateLimit::from_headers(&ms, now).unwrap();
        assert_eq!(r.reset_at_ms, Some(1_700_000_020_000));
        let huge = headers(&[("ratelimit-reset", "99999999999999999999999")]);
        let r = RateLimit::from_headers(&huge, now).unwrap();
        assert!(r.reset_at_ms.unwrap() > 1_700_000_020_000);
        // Values no forge sends do not overflow.
        let absurd = headers(&[
            ("x-ratelimit-remaining", "18446744073709551615"),
            ("x-ratelimit-reset", "18446744073709551615"),
        ]);
        let r = RateLimit::from_headers(&absurd, now).unwrap();
        assert_eq!(r.remaining, Some(u64::MAX));
        let long = "9".repeat(3 * 1024 * 1024);
        let huge_count = headers(&[("x-ratelimit-remaining", long.as_str())]);
        // Saturates, like the retry classification reads it.
        let r = RateLimit::from_headers(&huge_count, now).unwrap();
        assert_eq!(r.remaining, Some(u64::MAX));
    }
}
