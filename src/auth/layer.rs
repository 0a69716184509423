//! The tower layer that turns `authorization` metadata into [`Claims`].
//!
//! Health and reflection answer without a token: probes and `grpcurl list`
//! need them, and they reveal nothing of any tenant. Every other path needs a
//! verified token before the request reaches a handler.

use std::task::{Context, Poll};

use futures_util::future::{Either, Ready};
use tonic::Status;
use tower::{Layer, Service};

use super::{Claims, JwtVerifier};
use crate::error::Error;

const OPEN_PREFIXES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

#[derive(Clone)]
pub struct AuthLayer {
    verifier: JwtVerifier,
}

impl AuthLayer {
    pub fn new(verifier: JwtVerifier) -> Self {
        AuthLayer { verifier }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    verifier: JwtVerifier,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        if OPEN_PREFIXES.iter().any(|prefix| path.starts_with(prefix)) {
            return Either::Left(self.inner.call(request));
        }
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        // The token never goes into the span; the role it grants does.
        let span = tracing::debug_span!(
            target: "switchboard::auth",
            "auth.verify",
            auth.role = tracing::field::Empty,
            auth.rejected = tracing::field::Empty,
        );
        let verified = span.in_scope(|| self.verifier.verify_header(header));
        match verified {
            Ok(claims) => {
                span.record("auth.role", claims.role.as_str());
                request.extensions_mut().insert(claims);
                Either::Left(self.inner.call(request))
            }
            Err(error) => {
                span.record("auth.rejected", true);
                tracing::debug!(%path, reason = %error, "rejected token");
                let status: Status = error.into();
                Either::Right(futures_util::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// The verified claims of a request. Absent only if the layer was not
/// installed, which is a bug, not a client error; still answered safely.
pub fn claims_of<T>(request: &tonic::Request<T>) -> Result<Claims, Error> {
    request
        .extensions()
        .get::<Claims>()
        .cloned()
        .ok_or_else(|| Error::Unauthenticated("missing authorization metadata".into()))
}
