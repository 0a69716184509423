//! The cache tier that answered a `ResolveAgent`, moved to the trailers.
//!
//! Handlers set it as a response header (tonic has no API for trailers on a
//! unary response); the span and the log read it there, and this layer,
//! outermost, moves it after the message, where the media server reads it.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use super::Finish;

/// Metadata naming the tier that answered a `ResolveAgent`: memory, redis or db.
pub const CACHE_TIER_HEADER: &str = "x-switchboard-cache";

#[derive(Clone, Copy)]
pub struct TierToTrailers;

impl<B, E> Finish<Result<http::Response<B>, E>> for TierToTrailers {
    type Output = Result<http::Response<TierTrailer<B>>, E>;

    fn finish(&mut self, answer: Result<http::Response<B>, E>) -> Self::Output {
        answer.map(|response| {
            let (mut parts, body) = response.into_parts();
            let tier = parts
                .headers
                .remove(CACHE_TIER_HEADER)
                .map(|value| (http::HeaderName::from_static(CACHE_TIER_HEADER), value));
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
