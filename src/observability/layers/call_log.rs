//! Every call counted (requests by method and code, latency by method and
//! answering tier) and logged in one line: method, status, latency, org,
//! cache tier, trace id. Refused calls too: every refusal happens below.

use std::time::Instant;

use opentelemetry::trace::TraceId;

use tower::Service;

use super::{Job, OnResponse, Outcome, Req, Then};
use crate::observability::{
    metrics::{MethodId, Metrics, OTHER_METHOD},
    tracing::{current_trace_id, traceparent_trace_id},
};

#[derive(Clone)]
pub struct CallLog {
    pub(super) metrics: Metrics,
}

impl Job for CallLog {
    type Call<F> = Then<F, Call>;

    fn call<S: Service<Req<B>>, B>(&self, inner: &mut S, request: Req<B>) -> Self::Call<S::Future> {
        // Before the layers below run their `call` (the limits' checks).
        let started = Instant::now();
        let path = request.uri().path();
        let method = self.metrics.method(path);
        // A path we do not serve is logged as sent, but counted as `other`.
        let unknown_path =
            (self.metrics.method_label(method) == OTHER_METHOD).then(|| path.to_owned());
        let incoming_trace = traceparent_trace_id(request.headers());
        let call = Call {
            metrics: self.metrics.clone(),
            method,
            unknown_path,
            incoming_trace,
            started,
        };
        Then::new(inner.call(request), call)
    }
}

/// What is known of a call before it is answered.
pub struct Call {
    metrics: Metrics,
    method: MethodId,
    unknown_path: Option<String>,
    incoming_trace: Option<TraceId>,
    started: Instant,
}

impl OnResponse for Call {
    fn on_response<B>(&mut self, response: &mut http::Response<B>) {
        let outcome = Outcome::of(response);
        let latency = self.started.elapsed();
        let metrics = &self.metrics;
        metrics.record_request(
            self.method,
            outcome.code,
            outcome.tier.map(str::as_bytes),
            latency,
        );
        let method = self
            .unknown_path
            .as_deref()
            .unwrap_or(metrics.method_label(self.method));
        tracing::info!(
            target: "switchboard::request",
            method,
            status = ?outcome.code,
            latency_us = latency.as_micros() as u64,
            // Formatted only when the line is written (a field's value is
            // evaluated only for an enabled event).
            org = %OrgOrDash(outcome.org),
            cache = outcome.tier.unwrap_or("-"),
            trace_id = current_trace_id(self.incoming_trace).map(tracing::field::display),
            "request"
        );
    }
}

/// The log's org field: the id, or `-`.
struct OrgOrDash(Option<crate::domain::OrgId>);

impl std::fmt::Display for OrgOrDash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(org) => std::fmt::Display::fmt(&org, f),
            None => f.write_str("-"),
        }
    }
}
