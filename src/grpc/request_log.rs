//! Around every call: the request span (continuing the caller's W3C trace),
//! the request metrics, one log line (method, status, latency, org, cache
//! tier, trace id), and the client's gRPC deadline enforced with the right
//! status.
//!
//! tonic's own `Server::timeout` answers CANCELLED when the deadline passes;
//! a media server expects DEADLINE_EXCEEDED, so the deadline lives here.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use opentelemetry::trace::TraceId;
use tonic::{Code, Status};
use tower::{Layer, Service};
use tracing::{field::Empty, Instrument};

use crate::{domain::OrgId, metrics::Metrics, telemetry};

/// Put in a response's extensions by handlers, so the log names the org.
#[derive(Clone, Copy, Debug)]
pub struct LoggedOrg(pub OrgId);

#[derive(Clone)]
pub struct RequestLogLayer {
    /// The server's own limit; the client's `grpc-timeout` wins if shorter.
    pub max_request_time: Option<Duration>,
    pub metrics: Metrics,
}

impl<S> Layer<S> for RequestLogLayer {
    type Service = RequestLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLog {
            inner,
            max_request_time: self.max_request_time,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequestLog<S> {
    inner: S,
    max_request_time: Option<Duration>,
    metrics: Metrics,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequestLog<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: http_body::Body + Default + Unpin + Send + 'static,
{
    type Response = http::Response<TierTrailer<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready serves this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        let method = self.metrics.method(path);
        // A path we do not serve is logged as sent, but counted as `other`.
        let unknown_path = (self.metrics.method_label(method) == crate::metrics::OTHER_METHOD)
            .then(|| path.to_owned());
        let span = request_span(self.metrics.method_label(method));
        telemetry::continue_trace(&span, request.headers());
        let incoming_trace = telemetry::traceparent_trace_id(request.headers());
        let client_deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| parse_grpc_timeout(v.as_bytes()));
        let deadline = match (client_deadline, self.max_request_time) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let metrics = self.metrics.clone();
        let request_span = span.clone();
        let call = async move {
            let started = Instant::now();
            // The store reads it to bound each statement (`deadline`).
            let call = crate::deadline::scope(deadline.map(|d| started + d), inner.call(request));
            let mut result = match deadline {
                Some(deadline) => match tokio::time::timeout(deadline, call).await {
                    Ok(result) => result,
                    Err(_) => Ok(Status::deadline_exceeded("deadline exceeded").into_http()),
                },
                None => call.await,
            };
            if let Ok(response) = &mut result {
                decode_error_is_invalid_argument(response);
                let finished = Finished::of(response, started.elapsed());
                metrics.record_request(method, finished.code, finished.tier(), finished.latency);
                finished.record_on(&request_span);
                let method = unknown_path
                    .as_deref()
                    .unwrap_or(metrics.method_label(method));
                finished.log(
                    method,
                    telemetry::trace_id_of(&request_span, incoming_trace),
                );
            }
            result.map(tier_to_trailers)
        };
        Box::pin(call.instrument(span))
    }
}

/// The server span of one call, named `package.Service/Method` as the gRPC
/// semantic conventions have it. Fields are filled in when it ends.
fn request_span(method: &str) -> tracing::Span {
    let (service, rpc_method) = method.split_once('/').unwrap_or((method, ""));
    tracing::debug_span!(
        target: "switchboard::grpc",
        "grpc.request",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = rpc_method,
        rpc.grpc.status_code = Empty,
        org.id = Empty,
        switchboard.cache_tier = Empty,
    )
}

/// What the log line, the metrics and the span say about a finished call.
struct Finished<'a> {
    code: Code,
    org: Option<OrgId>,
    tier: Option<&'a http::HeaderValue>,
    latency: Duration,
}

impl<'a> Finished<'a> {
    fn of<B>(response: &'a http::Response<B>, latency: Duration) -> Self {
        // Unary errors are trailers-only responses, so their status is in the
        // headers; a success carries its OK in the trailers.
        let code = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map(Code::from_i32)
            .unwrap_or(Code::Ok);
        Finished {
            code,
            org: response.extensions().get::<LoggedOrg>().map(|o| o.0),
            tier: response.headers().get(crate::grpc::CACHE_TIER_HEADER),
            latency,
        }
    }

    fn tier(&self) -> Option<&[u8]> {
        self.tier.map(http::HeaderValue::as_bytes)
    }

    fn tier_str(&self) -> Option<&str> {
        self.tier.and_then(|v| v.to_str().ok())
    }

    fn record_on(&self, span: &tracing::Span) {
        if span.is_disabled() {
            return;
        }
        span.record("rpc.grpc.status_code", self.code as i64);
        if is_server_error(self.code) {
            span.record("otel.status_code", "error");
        }
        if let Some(org) = self.org {
            span.record("org.id", tracing::field::display(org));
        }
        if let Some(tier) = self.tier_str() {
            span.record("switchboard.cache_tier", tier);
        }
    }

    fn log(&self, method: &str, trace_id: Option<TraceId>) {
        let org = self.org.map(|o| o.to_string());
        tracing::info!(
            target: "switchboard::request",
            method,
            status = ?self.code,
            latency_us = self.latency.as_micros() as u64,
            org = org.as_deref().unwrap_or("-"),
            cache = self.tier_str().unwrap_or("-"),
            trace_id = trace_id.map(tracing::field::display),
            "request"
        );
    }
}

/// The codes the gRPC semantic conventions count as the server's failure
/// (a client's mistake, like NOT_FOUND, leaves the span unset).
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// Handlers set the cache tier as a response header (tonic has no API for
/// trailers on a unary response); the log reads it there, and here it moves
/// to the trailers, after the message, where the media server reads it.
fn tier_to_trailers<B>(response: http::Response<B>) -> http::Response<TierTrailer<B>> {
    let (mut parts, body) = response.into_parts();
    let tier = parts
        .headers
        .remove(crate::grpc::CACHE_TIER_HEADER)
        .map(|value| {
            (
                http::HeaderName::from_static(crate::grpc::CACHE_TIER_HEADER),
                value,
            )
        });
    http::Response::from_parts(parts, TierTrailer { inner: body, tier })
}

/// A response body that adds one entry to the gRPC trailers.
pub struct TierTrailer<B> {
    inner: B,
    tier: Option<(http::HeaderName, http::HeaderValue)>,
}

impl<B: http_body::Body + Unpin> http_body::Body for TierTrailer<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_trailers() {
                Ok(mut trailers) => {
                    if let Some((name, value)) = this.tier.take() {
                        trailers.insert(name, value);
                    }
                    Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// tonic answers INTERNAL when a request does not decode (bad bytes, or
/// nesting beyond prost's recursion limit). That is the client's fault: say
/// INVALID_ARGUMENT, as for every other bad input.
fn decode_error_is_invalid_argument<B>(response: &mut http::Response<B>) {
    let headers = response.headers_mut();
    let is_internal = headers.get("grpc-status").is_some_and(|v| v == "13");
    let is_decode = headers.get("grpc-message").is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(b"failed%20to%20decode") || v.starts_with(b"failed to decode")
    });
    if is_internal && is_decode {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static(
                "request%20is%20not%20a%20valid%20message%20(malformed%20or%20nested%20too%20deeply)",
            ),
        );
    }
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
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
