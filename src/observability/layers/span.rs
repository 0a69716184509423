//! The server span of every call: named `package.Service/Method` as the
//! gRPC semantic conventions have it, a child of the caller's W3C
//! `traceparent` if it sent one, and entered whenever the layers below run
//! (so their spans and the log line are inside it). When the call ends, its
//! status, org and cache tier are recorded on it.

use tonic::Code;
use tracing::{field::Empty, instrument::Instrumented, level_filters::LevelFilter, Instrument};

use tower::Service;

use super::{Job, OnResponse, Outcome, Req, Then};
use crate::observability::{metrics::Metrics, tracing::continue_trace};

#[derive(Clone)]
pub struct RequestSpan {
    /// The method names (a path we do not serve is `other`).
    pub(super) metrics: Metrics,
}

impl Job for RequestSpan {
    type Call<F> = Then<Instrumented<F>, RecordOutcome>;

    fn call<S: Service<Req<B>>, B>(&self, inner: &mut S, request: Req<B>) -> Self::Call<S::Future> {
        let span = request_span(&self.metrics, request.uri().path());
        continue_trace(&span, request.headers());
        // The layers below do part of their work in `call`: inside the span
        // too, so their own spans are its children.
        let call = span.in_scope(|| inner.call(request));
        Then::new(call.instrument(span.clone()), RecordOutcome(span))
    }
}

/// Records the call's status, org and cache tier on its span.
pub struct RecordOutcome(tracing::Span);

impl OnResponse for RecordOutcome {
    fn on_response<B>(&mut self, response: &mut http::Response<B>) {
        let span = &self.0;
        if span.is_disabled() {
            return;
        }
        let outcome = Outcome::of(response);
        span.record("rpc.grpc.status_code", outcome.code as i64);
        if is_server_error(outcome.code) {
            span.record("otel.status_code", "error");
        }
        if let Some(org) = outcome.org {
            span.record("org.id", tracing::field::display(org));
        }
        if let Some(tier) = outcome.tier {
            span.record("switchboard.cache_tier", tier);
        }
    }
}

fn request_span(metrics: &Metrics, path: &str) -> tracing::Span {
    // Without a layer that wants DEBUG spans (no exporter, no debug log) the
    // span would be disabled: skip the method lookup too.
    if tracing::Level::DEBUG > LevelFilter::current() {
        return tracing::Span::none();
    }
    let method = metrics.method_label(metrics.method(path));
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
