//! The call's deadline: the shorter of the client's `grpc-timeout` and the
//! server's limit. The store sees it (`crate::deadline`) and bounds each
//! statement by it; when it passes, the call answers DEADLINE_EXCEEDED.
//!
//! tonic's own `Server::timeout` answers CANCELLED when the deadline passes;
//! a media server expects DEADLINE_EXCEEDED, so the deadline lives here.

use std::time::{Duration, Instant};

use tokio::{
    task::futures::TaskLocalFuture,
    time::{error::Elapsed, Timeout},
};
use tonic::Status;

use tower::Service;

use super::{Finish, Job, Req, Then};

#[derive(Clone, Copy)]
pub struct Deadline {
    pub(super) max_request_time: Duration,
}

impl Job for Deadline {
    type Call<F> = Then<Timeout<TaskLocalFuture<Option<Instant>, F>>, Exceeded>;

    fn call<S: Service<Req<B>>, B>(&self, inner: &mut S, request: Req<B>) -> Self::Call<S::Future> {
        let time_left = request
            .headers()
            .get(&super::GRPC_TIMEOUT)
            .and_then(|v| parse_grpc_timeout(v.as_bytes()))
            .map_or(self.max_request_time, |client| {
                client.min(self.max_request_time)
            });
        let deadline = Instant::now() + time_left;
        // The store reads it to bound each statement.
        let call = crate::deadline::scope(Some(deadline), inner.call(request));
        Then::new(tokio::time::timeout(time_left, call), Exceeded)
    }
}

/// A call still running at its deadline answers DEADLINE_EXCEEDED.
#[derive(Clone, Copy)]
pub struct Exceeded;

impl<B: Default, E> Finish<Result<Result<http::Response<B>, E>, Elapsed>> for Exceeded {
    type Output = Result<http::Response<B>, E>;

    fn finish(&mut self, answer: Result<Self::Output, Elapsed>) -> Self::Output {
        answer.unwrap_or_else(|_| Ok(Status::deadline_exceeded("deadline exceeded").into_http()))
    }
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount.checked_mul(3600)?),
        b'M' => Duration::from_secs(amount.checked_mul(60)?),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(
            parse_grpc_timeout(b"250m"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"123456789m"), None);
        assert_eq!(parse_grpc_timeout(b"m"), None);
        assert_eq!(parse_grpc_timeout(b"10x"), None);
    }
}
