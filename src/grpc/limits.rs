//! Overload protection as tower layers: a global cap on requests in flight
//! and a per-tenant share of it, both answering RESOURCE_EXHAUSTED at once
//! instead of queueing, and oversized messages answered with the limit named.
//!
//! Why not tower's `GlobalConcurrencyLimitLayer` + `load_shed`: it takes its
//! permit in `poll_ready`, before the request (and so its path) is known, so
//! health checks could not be exempted and probes would fail exactly when the
//! server is busiest; and its `Overloaded` error is not a gRPC status. A
//! semaphore tried in `call` does the same job with the path in hand.
//!
//! Health is never shed: a probe that fails under load makes Kubernetes
//! restart a replica that is working, which moves its load onto the others.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::Semaphore;
use tonic::{Code, Status};
use tower::{Layer, Service};
use uuid::Uuid;

use super::LoggedOrg;
use crate::{
    auth::{Claims, DbRole},
    domain::OrgId,
    error::Error,
};

const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// How long a user's org, learned from an answer, keys their next requests.
/// Only fairness depends on it (RLS still decides what they see), so a
/// user moved to another org is counted against the old one for at most this.
const LEARNED_ORG_TTL: Duration = Duration::from_secs(60);
const LEARNED_ORG_CAPACITY: u64 = 100_000;

/// The limits, validated by `config`. A zero count turns that limit off.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Requests in flight on this replica, health excepted.
    pub max_concurrent_requests: usize,
    /// Requests in flight for one tenant (see [`TenantKey`]).
    pub tenant_max_concurrent: usize,
    /// Largest request message tonic will decode.
    pub max_message_bytes: usize,
    /// Largest metadata of one request (its HTTP/2 header list, counted as
    /// HTTP/2 does: name, value and 32 bytes per entry); beyond it,
    /// RESOURCE_EXHAUSTED. HTTP/2 itself is set to twice this, a hard stop
    /// answered with HTTP 431 before any of our code runs, which gRPC
    /// clients can only report as UNKNOWN; in between, the client gets a
    /// status that names the limit.
    pub max_header_list_bytes: u32,
}

impl Limits {
    /// What HTTP/2 is told (`SETTINGS_MAX_HEADER_LIST_SIZE`).
    pub(crate) fn http2_max_header_list_bytes(&self) -> u32 {
        self.max_header_list_bytes.saturating_mul(2)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent_requests: 512,
            tenant_max_concurrent: 8,
            max_message_bytes: 256 * 1024,
            max_header_list_bytes: 16 * 1024,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The global cap, outside auth: a shed request costs no token verification.
#[derive(Clone)]
pub struct GlobalLimitLayer {
    /// `None` when the cap is off.
    permits: Option<Arc<Semaphore>>,
    max_concurrent: usize,
    max_message_bytes: usize,
    max_header_list_bytes: usize,
}

impl GlobalLimitLayer {
    pub(crate) fn new(limits: &Limits) -> Self {
        GlobalLimitLayer {
            permits: (limits.max_concurrent_requests > 0)
                .then(|| Arc::new(Semaphore::new(limits.max_concurrent_requests))),
            max_concurrent: limits.max_concurrent_requests,
            max_message_bytes: limits.max_message_bytes,
            max_header_list_bytes: limits.max_header_list_bytes as usize,
        }
    }

    /// The in-flight permits (`None` when the cap is off): a stream takes
    /// one for its whole life, beyond the one its handler held.
    pub(crate) fn in_flight(&self) -> Option<Arc<Semaphore>> {
        self.permits.clone()
    }
}

fn refuse<B: Default>(message: String) -> http::Response<B> {
    Status::from(Error::ResourceExhausted(message)).into_http()
}

impl<S> Layer<S> for GlobalLimitLayer {
    type Service = GlobalLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GlobalLimit {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GlobalLimit<S> {
    inner: S,
    layer: GlobalLimitLayer,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GlobalLimit<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready serves this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let max_message_bytes = self.layer.max_message_bytes;
        let metadata_bytes = header_list_size(request.headers());
        if metadata_bytes > self.layer.max_header_list_bytes {
            return Box::pin(futures_util::future::ready(Ok(refuse(format!(
                "request metadata is {metadata_bytes} bytes; the limit is {} bytes \
                 (SWITCHBOARD_MAX_HEADER_LIST_BYTES)",
                self.layer.max_header_list_bytes
            )))));
        }
        let permit = match &self.layer.permits {
            Some(permits) if !request.uri().path().starts_with(HEALTH_PREFIX) => {
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        return Box::pin(futures_util::future::ready(Ok(refuse(format!(
                            "server overloaded: {} requests in flight is the limit \
                             (SWITCHBOARD_MAX_CONCURRENT_REQUESTS); retry with backoff",
                            self.layer.max_concurrent
                        )))));
                    }
                }
            }
            _ => None,
        };
        Box::pin(async move {
            let mut result = inner.call(request).await;
            drop(permit);
            if let Ok(response) = &mut result {
                oversize_is_resource_exhausted(response, max_message_bytes);
            }
            result
        })
    }
}

/// The size HTTP/2 gives a header list (RFC 9113 §6.5.2). Pseudo-headers
/// are not in the map and their few bytes are left out.
fn header_list_size(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

/// tonic refuses a message over `max_decoding_message_size` with OUT_OF_RANGE
/// and its own wording; gRPC says RESOURCE_EXHAUSTED, and the client should
/// learn which setting it ran into.
fn oversize_is_resource_exhausted<B: Default>(
    response: &mut http::Response<B>,
    max_message_bytes: usize,
) {
    let headers = response.headers();
    if headers
        .get(&crate::observability::GRPC_STATUS)
        .is_none_or(|v| v != "11")
    {
        return;
    }
    let Some(message) = headers
        .get(&crate::observability::GRPC_MESSAGE)
        .map(|v| percent_decode(v.as_bytes()))
    else {
        return;
    };
    let Some(rest) = message.strip_prefix("Error, decoded message length too large: found ") else {
        return;
    };
    let found: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let status = Status::new(
        Code::ResourceExhausted,
        format!(
            "request message is {found} bytes; the limit is {max_message_bytes} bytes \
             (SWITCHBOARD_MAX_MESSAGE_BYTES)"
        ),
    );
    let replacement = status.into_http::<B>();
    for name in ["grpc-status", "grpc-message"] {
        if let Some(value) = replacement.headers().get(name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
}

/// tonic's `grpc-message` is percent-encoded; an escape that is not one is
/// kept as it is.
fn percent_decode(input: &[u8]) -> String {
    percent_encoding::percent_decode(input)
        .decode_utf8_lossy()
        .into_owned()
}

/// Whose share a request counts against.
///
/// The org a tenant user belongs to is known only to Postgres (`profiles`),
/// read under RLS inside the query; looking it up before every request would
/// add a database round trip to the hot path. Instead the first answers a
/// user gets name their org ([`LoggedOrg`], set by the handlers for the log),
/// and from then on (for [`LEARNED_ORG_TTL`]) the user's requests count
/// against that org, so one org's users share one share. Until then, and for
/// users whose answers name no org, the key is the verified `sub`. Anonymous
/// tokens share one key.
///
/// `service_role` (the media servers) is not limited per tenant: its org is
/// the called number's, known only once the resolve is done, and its
/// `ResolveAgent` is served from memory in microseconds; the global cap
/// covers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum TenantKey {
    Org(OrgId),
    User(Uuid),
    Anonymous,
}

/// The per-tenant share, inside auth (it needs the verified claims).
#[derive(Clone)]
pub struct TenantLimitLayer {
    state: Option<Arc<TenantState>>,
}

struct TenantState {
    limit: usize,
    /// Requests in flight per key; a key leaves the map at zero, so its
    /// size is the number of tenants with something in flight. A `std`
    /// mutex: held for a hash-map update, never across an `.await`.
    in_flight: Mutex<HashMap<TenantKey, usize>>,
    /// `sub` → org, learned from answers.
    orgs: moka::sync::Cache<Uuid, OrgId>,
}

impl TenantLimitLayer {
    pub(crate) fn new(limits: &Limits) -> Self {
        TenantLimitLayer {
            state: (limits.tenant_max_concurrent > 0).then(|| {
                Arc::new(TenantState {
                    limit: limits.tenant_max_concurrent,
                    in_flight: Mutex::new(HashMap::new()),
                    orgs: moka::sync::Cache::builder()
                        .max_capacity(LEARNED_ORG_CAPACITY)
                        .time_to_live(LEARNED_ORG_TTL)
                        .build(),
                })
            }),
        }
    }
}

impl TenantState {
    fn key(&self, claims: &Claims) -> Option<TenantKey> {
        match (claims.role, claims.sub) {
            (DbRole::ServiceRole, _) => None,
            (_, Some(sub)) => Some(match self.orgs.get(&sub) {
                Some(org) => TenantKey::Org(org),
                None => TenantKey::User(sub),
            }),
            (_, None) => Some(TenantKey::Anonymous),
        }
    }

    fn try_enter(self: &Arc<Self>, key: TenantKey) -> Option<TenantPermit> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let count = in_flight.entry(key).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(TenantPermit {
            state: self.clone(),
            key,
        })
    }
}

/// One request's place in its tenant's share, given back on drop (also when
/// the request is cancelled).
struct TenantPermit {
    state: Arc<TenantState>,
    key: TenantKey,
}

impl Drop for TenantPermit {
    fn drop(&mut self) {
        let mut in_flight = self
            .state
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = in_flight.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                in_flight.remove(&self.key);
            }
        }
    }
}

impl<S> Layer<S> for TenantLimitLayer {
    type Service = TenantLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TenantLimit {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct TenantLimit<S> {
    inner: S,
    state: Option<Arc<TenantState>>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for TenantLimit<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Health and reflection carry no claims: nothing to key on.
        let admitted = self.state.as_ref().and_then(|state| {
            let claims = request.extensions().get::<Claims>()?;
            let key = state.key(claims)?;
            Some((state.clone(), key, claims.sub))
        });
        let Some((state, key, sub)) = admitted else {
            return Box::pin(inner.call(request));
        };
        let Some(permit) = state.try_enter(key) else {
            return Box::pin(futures_util::future::ready(Ok(refuse(format!(
                "too many requests in flight for your organization: {} is the limit \
                 (SWITCHBOARD_TENANT_MAX_CONCURRENT); retry with backoff",
                state.limit
            )))));
        };
        Box::pin(async move {
            let result = inner.call(request).await;
            drop(permit);
            if let (Ok(response), Some(sub)) = (&result, sub) {
                if let Some(LoggedOrg(org)) = response.extensions().get::<LoggedOrg>() {
                    if !matches!(key, TenantKey::Org(known) if known == *org) {
                        state.orgs.insert(sub, *org);
                    }
                }
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonic_wording_is_percent_decoded() {
        assert_eq!(
            percent_decode(b"Error,%20decoded%20message%20length%20too%20large%3A%20found%201"),
            "Error, decoded message length too large: found 1"
        );
        assert_eq!(percent_decode(b"100%"), "100%");
    }

    #[test]
    fn oversize_answer_names_the_limit() {
        let mut response = Status::out_of_range(
            "Error, decoded message length too large: found 300000 bytes, the limit is: 1024 bytes",
        )
        .into_http::<tonic::body::Body>();
        oversize_is_resource_exhausted(&mut response, 1024);
        assert_eq!(response.headers()["grpc-status"], "8");
        let message = percent_decode(response.headers()["grpc-message"].as_bytes());
        assert_eq!(
            message,
            "request message is 300000 bytes; the limit is 1024 bytes (SWITCHBOARD_MAX_MESSAGE_BYTES)"
        );
    }

    #[test]
    fn a_tenant_share_is_given_back() {
        let layer = TenantLimitLayer::new(&Limits {
            tenant_max_concurrent: 2,
            ..Limits::default()
        });
        let Some(state) = layer.state else {
            panic!("limit is on")
        };
        let key = TenantKey::Anonymous;
        let first = state.try_enter(key);
        let second = state.try_enter(key);
        assert!(first.is_some() && second.is_some());
        assert!(state.try_enter(key).is_none(), "the third is refused");
        assert!(
            state.try_enter(TenantKey::User(Uuid::nil())).is_some(),
            "another tenant is not"
        );
        drop(first);
        assert!(
            state.try_enter(key).is_some(),
            "a finished request frees its place"
        );
        drop(second);
        let in_flight = state
            .in_flight
            .lock()
            .map(|m| m.len())
            .unwrap_or(usize::MAX);
        assert_eq!(in_flight, 0, "idle tenants leave the map");
    }
}
