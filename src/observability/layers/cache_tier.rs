//! The cache tier that answered a `ResolveAgent`, sent in the trailers.
//!
//! Handlers put it in the response's extensions ([`AnsweredFrom`]; tonic has
//! no API for trailers on a unary response, and an extension costs no header
//! parsing); the span and the log read it there, and this layer, outermost,
//! writes it after the message as `x-switchboard-cache`, where the media
//! server reads it.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use super::Finish;

/// Metadata naming the tier that answered a `ResolveAgent`: memory, redis or db.
pub const CACHE_TIER_HEADER: &str = "x-switchboard-cache";

/// Parsed once: a `&str` name is parsed again on every use.
static CACHE_TIER_NAME: http::HeaderName = http::HeaderName::from_static(CACHE_TIER_HEADER);

/// Put in a response's extensions by handlers: the cache tier that answered
/// (`memory`, `redis`, `db`).
#[derive(Clone, Copy, Debug)]
pub struct AnsweredFrom(pub &'static str);

#[derive(Clone, Copy)]
pub struct TierToTrailers;

impl<B, E> Finish<Result<http::Response<B>, E>> for TierToTrailers {
    type Output = Result<http::Response<TierTrailer<B>>, E>;

    fn finish(&mut self, answer: Result<http::Response<B>, E>) -> Self::Output {
        answer.map(|response| {
            let (parts, body) = response.into_parts();
            let tier = parts.extensions.get::<AnsweredFrom>().map(|tier| {
                (
                    CACHE_TIER_NAME.clone(),
                    http::HeaderValue::from_static(tier.0),
                )
            });
            http::Response::from_parts(parts, TierTrailer { inner: body, tier })
        })
    }
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
