//! When a failed request to Azure Blob Storage is sent again, and after how long: the bounded,
//! exponential policy the Azure SDK applied by default (azure_core 0.21's
//! `ExponentialRetryOptions`), as pure functions of what happened, so it is tested without a
//! server.
//!
//! Conditional writes are retried too, as the SDK did: a retry of a write whose first attempt
//! succeeded but whose answer was lost meets its own write, and the callers already read that
//! as the condition failing (412/409/404) and recover the way they do from another replica's
//! write (the upload asks where it stands; GC keeps or counts the blob as gone).

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use reqwest::StatusCode;

/// Retries after the first attempt.
pub(crate) const MAX_RETRIES: u32 = 8;
/// The wait before the first retry; it doubles with each retry.
pub(crate) const INITIAL_DELAY: Duration = Duration::from_millis(200);
/// No wait is longer (a `Retry-After` asking for more included).
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(30);
/// No retry starts after this long since the first attempt.
pub(crate) const MAX_ELAPSED: Duration = Duration::from_secs(60);
/// Up to this much is added to each wait, so replicas refused together do not retry together.
pub(crate) const MAX_JITTER: Duration = Duration::from_millis(255);

/// How an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Failure {
    /// No response: the connection could not be made or broke.
    Connection,
    /// A response with an error status.
    Status(StatusCode),
}

/// Whether a failure is transient (the same request may succeed later): a broken connection,
/// or 408, 429, 500, 502, 503, 504.
pub(crate) fn transient(failure: Failure) -> bool {
    match failure {
        Failure::Connection => true,
        Failure::Status(status) => matches!(
            status,
            StatusCode::REQUEST_TIMEOUT
                | StatusCode::TOO_MANY_REQUESTS
                | StatusCode::INTERNAL_SERVER_ERROR
                | StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT
        ),
    }
}

/// The wait before sending again after `failure`, `retries` retries having been made and
/// `elapsed` passed since the first attempt; `None` to give up. The wait is
/// `INITIAL_DELAY * 2^retries + jitter`, at least what the server asked (`retry_after`),
/// at most `MAX_DELAY`.
pub(crate) fn delay(
    failure: Failure,
    retries: u32,
    elapsed: Duration,
    retry_after: Option<Duration>,
    jitter: Duration,
) -> Option<Duration> {
    if !transient(failure) || retries >= MAX_RETRIES || elapsed >= MAX_ELAPSED {
        return None;
    }
    let backoff = INITIAL_DELAY
        .saturating_mul(1u32 << retries.min(16))
        .saturating_add(jitter.min(MAX_JITTER));
    Some(backoff.max(retry_after.unwrap_or_default()).min(MAX_DELAY))
}

/// The wait a 429 or 503 response asks for: `retry-after-ms` or `x-ms-retry-after-ms`
/// (milliseconds), or `Retry-After` (seconds or an HTTP date, `now` being the time).
pub(crate) fn retry_after(
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
) -> Option<Duration> {
    if !matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        return None;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = header(name).and_then(|v| v.parse::<u64>().ok()) {
            return Some(Duration::from_millis(ms));
        }
    }
    let value = header("retry-after")?;
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// A jitter taken from the clock's sub-second digits: no random generator needed.
pub(crate) fn jitter() -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    Duration::from_millis(u64::from(nanos / 1000 % 256))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    const NONE: Duration = Duration::ZERO;

    #[test]
    fn transient_failures_are_retried_with_a_growing_bounded_wait() {
        for code in [408, 429, 500, 502, 503, 504] {
            let failure = Failure::Status(StatusCode::from_u16(code).unwrap());
            assert_eq!(
                delay(failure, 0, NONE, None, NONE),
                Some(INITIAL_DELAY),
                "{code}"
            );
        }
        assert_eq!(
            delay(Failure::Connection, 2, NONE, None, Duration::from_millis(7)),
            Some(Duration::from_millis(807))
        );
        for code in [400, 403, 404, 409, 412, 416] {
            let failure = Failure::Status(StatusCode::from_u16(code).unwrap());
            assert_eq!(delay(failure, 0, NONE, None, NONE), None, "{code}");
        }
        // Bounded: the wait, the number of retries, the time.
        assert_eq!(
            delay(Failure::Connection, 7, NONE, None, NONE),
            Some(Duration::from_millis(25_600))
        );
        assert_eq!(
            delay(Failure::Connection, MAX_RETRIES, NONE, None, NONE),
            None
        );
        assert_eq!(delay(Failure::Connection, 1, MAX_ELAPSED, None, NONE), None);
        assert_eq!(
            delay(Failure::Connection, 0, NONE, None, Duration::from_secs(9)),
            Some(INITIAL_DELAY + MAX_JITTER)
        );
    }

    #[test]
    fn the_server_s_retry_after_lengthens_the_wait_up_to_the_bound() {
        let busy = Failure::Status(StatusCode::SERVICE_UNAVAILABLE);
        let two = Some(Duration::from_secs(2));
        assert_eq!(delay(busy, 0, NONE, two, NONE), two);
        assert_eq!(
            delay(busy, 0, NONE, Some(Duration::from_millis(5)), NONE),
            Some(INITIAL_DELAY)
        );
        assert_eq!(
            delay(busy, 0, NONE, Some(Duration::from_secs(3600)), NONE),
            Some(MAX_DELAY)
        );

        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_str(value).unwrap());
            }
            map
        };
        let busy = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(
            retry_after(busy, &headers(&[("retry-after", "3")]), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(
                busy,
                &headers(&[("x-ms-retry-after-ms", "250"), ("retry-after", "3")]),
                now
            ),
            Some(Duration::from_millis(250))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(10));
        assert_eq!(
            retry_after(
                StatusCode::TOO_MANY_REQUESTS,
                &headers(&[("retry-after", &later)]),
                now
            ),
            Some(Duration::from_secs(10))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(10));
        assert_eq!(
            retry_after(busy, &headers(&[("retry-after", &earlier)]), now),
            Some(NONE)
        );
        assert_eq!(
            retry_after(busy, &headers(&[("retry-after", "soon")]), now),
            None
        );
        // Only 429 and 503 carry it.
        assert_eq!(
            retry_after(
                StatusCode::INTERNAL_SERVER_ERROR,
                &headers(&[("retry-after", "3")]),
                now
            ),
            None
        );
        assert!(jitter() <= MAX_JITTER);
    }
}
