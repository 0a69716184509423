//! The layers around every call, outside the limits, auth and handlers.
//! One job each, outermost first:
//!
//! 1. [`cache_tier`]: moves `x-switchboard-cache` from the headers, where
//!    handlers put it and the layers below read it, to the trailers.
//! 2. [`span`]: the request span, continuing the caller's W3C trace; the
//!    call's outcome recorded on it.
//! 3. [`call_log`]: the request counter and latency histogram, and the one
//!    log line per call (refused calls too), inside the span.
//! 4. [`decode_error`]: tonic's INTERNAL for a request that does not decode
//!    becomes INVALID_ARGUMENT, before anything counts it.
//! 5. [`deadline`]: min(client `grpc-timeout`, server limit), visible to the
//!    store (`crate::deadline`), enforced as DEADLINE_EXCEEDED.
//!
//! No layer boxes its future or clones its inner service per call: tonic
//! boxes the whole call's future once, above us.

mod cache_tier;
mod call_log;
mod deadline;
mod decode_error;
mod span;

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tonic::Code;
use tower::{Layer, Service};

pub use cache_tier::{AnsweredFrom, CACHE_TIER_HEADER};

/// Header names read on every call, parsed once (a `&str` name is parsed
/// again on every lookup).
pub(crate) static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
pub(crate) static GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");
static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

use self::{
    cache_tier::TierToTrailers, call_log::CallLog, deadline::Deadline,
    decode_error::DecodeErrorIsInvalidArgument, span::RequestSpan,
};
use super::metrics::Metrics;
use crate::domain::OrgId;

/// Put in a response's extensions by handlers, so the log names the org.
#[derive(Clone, Copy, Debug)]
pub struct LoggedOrg(pub OrgId);

/// The five layers above, in their order.
#[derive(Clone)]
pub struct RequestLayers {
    /// The server's own limit; the client's `grpc-timeout` wins if shorter.
    pub max_request_time: Duration,
    pub metrics: Metrics,
}

type Stack<S> = Around<
    AfterCall<TierToTrailers>,
    Around<
        RequestSpan,
        Around<CallLog, Around<AfterCall<DecodeErrorIsInvalidArgument>, Around<Deadline, S>>>,
    >,
>;

impl<S> Layer<S> for RequestLayers {
    type Service = Stack<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let deadline = Deadline {
            max_request_time: self.max_request_time,
        };
        let inner = Around::new(deadline, inner);
        let inner = Around::new(AfterCall(DecodeErrorIsInvalidArgument), inner);
        let metrics = self.metrics.clone();
        let inner = Around::new(CallLog { metrics }, inner);
        let metrics = self.metrics.clone();
        let inner = Around::new(RequestSpan { metrics }, inner);
        Around::new(AfterCall(TierToTrailers), inner)
    }
}

/// One request layer's work on a call: what it does before handing the
/// call to the layers below, and how it runs their future. The service
/// around it is `Around`, the same for every layer: readiness is the
/// layers' below, and the call goes to them directly (no clone, no box).
pub trait Job {
    /// The future of the layers below, `F`, as this layer runs it.
    type Call<F>;

    fn call<S: Service<Req<B>>, B>(&self, inner: &mut S, request: Req<B>) -> Self::Call<S::Future>;
}

type Req<B> = http::Request<B>;

#[derive(Clone)]
pub struct Around<J, S> {
    job: J,
    inner: S,
}

impl<J, S> Around<J, S> {
    fn new(job: J, inner: S) -> Self {
        Around { job, inner }
    }
}

impl<J, S, ReqBody, Response> Service<http::Request<ReqBody>> for Around<J, S>
where
    J: Job,
    S: Service<http::Request<ReqBody>>,
    J::Call<S::Future>: Future<Output = Result<Response, S::Error>>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = J::Call<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        self.job.call(&mut self.inner, request)
    }
}

/// What a layer does with the answer of the layers below.
pub trait Finish<Answer> {
    type Output;

    fn finish(&mut self, answer: Answer) -> Self::Output;
}

/// A layer that only looks at, or fixes, a response in place.
pub trait OnResponse {
    fn on_response<B>(&mut self, response: &mut http::Response<B>);
}

impl<P: OnResponse, B, E> Finish<Result<http::Response<B>, E>> for P {
    type Output = Result<http::Response<B>, E>;

    fn finish(&mut self, mut answer: Self::Output) -> Self::Output {
        if let Ok(response) = &mut answer {
            self.on_response(response);
        }
        answer
    }
}

pin_project! {
    /// The call of the layers below, then `finish` on its answer.
    pub struct Then<F, P> {
        #[pin]
        call: F,
        finish: P,
    }
}

impl<F, P> Then<F, P> {
    fn new(call: F, finish: P) -> Self {
        Then { call, finish }
    }
}

impl<F: Future, P: Finish<F::Output>> Future for Then<F, P> {
    type Output = P::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<P::Output> {
        let this = self.project();
        let answer = ready!(this.call.poll(cx));
        Poll::Ready(this.finish.finish(answer))
    }
}

/// A layer whose work is all on the answer: `P` on every call.
#[derive(Clone, Copy)]
pub struct AfterCall<P>(P);

impl<P: Copy> Job for AfterCall<P> {
    type Call<F> = Then<F, P>;

    fn call<S: Service<Req<B>>, B>(&self, inner: &mut S, request: Req<B>) -> Self::Call<S::Future> {
        Then::new(inner.call(request), self.0)
    }
}

/// What a finished call's response says, for the span and the log.
struct Outcome {
    code: Code,
    org: Option<OrgId>,
    tier: Option<&'static str>,
}

impl Outcome {
    fn of<B>(response: &http::Response<B>) -> Self {
        // Unary errors are trailers-only responses, so their status is in the
        // headers; a success carries its OK in the trailers.
        let code = response
            .headers()
            .get(&GRPC_STATUS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map(Code::from_i32)
            .unwrap_or(Code::Ok);
        Outcome {
            code,
            org: response.extensions().get::<LoggedOrg>().map(|o| o.0),
            tier: response.extensions().get::<AnsweredFrom>().map(|t| t.0),
        }
    }
}
