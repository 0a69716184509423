//! `ResolveAgent`: the call path. Turns "this number was dialed" into the
//! answer the media server needs, or the reason there is none.
//!
//! Who gets a cached answer: the routes in the cache are facts about a
//! number, fetched by whoever asked first; serving one to a caller must give
//! exactly what RLS would. `service_role` (the media servers) sees every org,
//! so it is served from the cache. A tenant token is resolved by Postgres
//! under its claims every time, because its membership is read from
//! `profiles` on every request (a removed user loses access on the very next
//! call) and no cache of ours can know that sooner than Postgres does.

use std::{sync::Arc, time::Duration};

use chrono::Utc;

use super::routing::{HoursMemo, Verdict};

use crate::{
    api::{
        convert::{customer_to_pb, resolution_to_pb},
        pb,
        route_wire::RouteView,
    },
    auth::Claims,
    cache::{Breaker, Cache, CallerRecord, Tier},
    domain::{OrgId, PhoneNumber, Reason, TransferTarget},
    error::Error,
    store::PgStore,
};

/// A route found for a number, read for the pipeline, with the caller's
/// record (`None`: no caller number, or the org does not know it).
pub(crate) struct Found {
    pub(crate) view: RouteView,
    pub(crate) caller: CallerRecord,
    /// Which tier answered for the route.
    pub(crate) tier: Tier,
}

/// A `ResolveAgent` answer and where it came from.
pub struct Resolved {
    pub(crate) response: pb::ResolveAgentResponse,
    pub(crate) org_id: Option<OrgId>,
    /// Which tier answered for the agent.
    pub(crate) tier: Tier,
}

#[derive(Clone)]
pub struct ResolveService {
    /// Tenants' lookups: may be a read replica.
    store: PgStore,
    /// Reads whose answer is cached: always the primary, whose NOTIFY drives
    /// invalidation (a lagging replica could refill what was just evicted).
    fill_store: PgStore,
    cache: Cache,
    /// Open while Postgres is unreachable: misses fail at once instead of
    /// each waiting out the pool's acquire timeout.
    database: Arc<Breaker>,
    /// Business hours parsed once per agent version (`routing.rs`).
    hours: Arc<HoursMemo>,
}

fn no_agent() -> Error {
    Error::NotFound("no agent answers this number".into())
}

/// What ResolveAgent answers when StartCall would not answer the call.
fn not_answered(reason: Reason, transfer_to: Option<&TransferTarget>) -> Error {
    let why = match reason {
        Reason::CallerBlocked => "the caller is blocked by a caller rule",
        Reason::Closed => "the agent for this number is closed (outside its business hours)",
        Reason::RoutingLoop => {
            "no agent answers: the caller rules and after-hours agents loop or pass the hop limit"
        }
        _ => "the agent for this number is inactive",
    };
    Error::FailedPrecondition(match transfer_to {
        Some(target) => format!("{why}; StartCall transfers to {}", target.as_str()),
        None => why.to_owned(),
    })
}

impl ResolveService {
    pub(crate) fn new(store: PgStore, cache: Cache) -> Self {
        ResolveService {
            fill_store: store.primary_only(),
            store,
            cache,
            database: Arc::new(Breaker::new(1, Duration::from_millis(1000))),
            hours: Arc::default(),
        }
    }

    pub(super) fn hours(&self) -> &HoursMemo {
        &self.hours
    }

    /// The primary, which the cache is filled from.
    pub(super) fn fill_store(&self) -> &PgStore {
        &self.fill_store
    }

    /// Whether cache misses fail at once because Postgres is unreachable.
    pub(crate) fn database_breaker_open(&self) -> bool {
        self.database.is_open()
    }

    /// ResolveAgent: the decision pipeline (`routing.rs`) without limits.
    pub(crate) async fn resolve(
        &self,
        claims: &Claims,
        called: &PhoneNumber,
        caller: Option<&PhoneNumber>,
        call_id: &str,
    ) -> Result<Resolved, Error> {
        let routed = self
            .decide(claims, called, caller, call_id, Utc::now())
            .await?
            .ok_or_else(no_agent)?;
        match routed.verdict {
            Verdict::Answer => Ok(Resolved {
                response: routed.response,
                org_id: Some(routed.org_id),
                tier: routed.tier,
            }),
            Verdict::Refuse {
                reason,
                transfer_to,
            } => Err(not_answered(reason, transfer_to.as_ref())),
        }
    }

    /// The route with the caller's record, active agent or not; `None`
    /// when no agent answers the number. What the pipeline decides on.
    pub(crate) async fn route(
        &self,
        claims: &Claims,
        called: &PhoneNumber,
        caller: Option<&PhoneNumber>,
    ) -> Result<Option<Found>, Error> {
        if !claims.is_service_role() {
            // Boxed: the statement's future is large, and a cache hit
            // should not carry (and move) its room.
            return Box::pin(self.resolve_under_rls(claims, called, caller)).await;
        }
        let Some(found) = self
            .cache
            .route_or_fill(called.as_str(), caller.map(PhoneNumber::as_str), || {
                self.fetch_route(claims, called, caller)
            })
            .await?
        else {
            return Ok(None);
        };
        let view = RouteView::read(&found.route).ok_or(Error::Internal)?;
        let caller = match (caller, found.caller) {
            (None, _) => None,
            (Some(_), Some(fetched)) => fetched,
            (Some(caller), None) => {
                let org_id = view.org_id;
                self.cache
                    .caller_or_fill(org_id, caller.as_str(), || {
                        self.fetch_caller(claims, org_id, caller)
                    })
                    .await
            }
        };
        Ok(Some(Found {
            view,
            caller,
            tier: found.tier,
        }))
    }

    /// Tenants: one statement under their claims, RLS decides.
    async fn resolve_under_rls(
        &self,
        claims: &Claims,
        called: &PhoneNumber,
        caller: Option<&PhoneNumber>,
    ) -> Result<Option<Found>, Error> {
        let Some(resolution) = self
            .guarded(self.store.resolve_agent(claims, called, caller))
            .await?
        else {
            return Ok(None);
        };
        let mut response = resolution_to_pb(&resolution);
        let caller = response.caller.take().map(|c| Arc::new(*c));
        // Read as a cached route is: one pipeline for every tier.
        let view = RouteView::read(&RouteView::pack(&response)).ok_or(Error::Internal)?;
        Ok(Some(Found {
            view,
            caller,
            tier: Tier::Db,
        }))
    }

    /// Fills the memory tier with every route, up to its capacity, in pages
    /// of `page` numbers, so the first call to each number is a memory hit.
    /// Caller records are not preloaded. If anything is invalidated while
    /// it runs, the preload stops and drops what it loaded (a page read
    /// before the change could be stale); calls then fill lazily.
    pub(crate) async fn preload(&self, page: i64) -> Result<u64, Error> {
        let Some(preload) = self.cache.preload() else {
            return Ok(0);
        };
        let claims = Claims::service();
        let capacity = preload.capacity();
        let mut loaded: u64 = 0;
        let mut after: Option<String> = None;
        while loaded < capacity {
            let batch = self
                .fill_store
                .routes_after(&claims, after.as_deref(), page)
                .await?;
            let Some(last) = batch.last() else { break };
            after = Some(last.agent.phone_number.as_str().to_owned());
            let routes: Vec<_> = batch
                .iter()
                .map(|r| (r.agent.phone_number.as_str(), resolution_to_pb(r)))
                .collect();
            if !preload.keep(&routes).await {
                return Err(Error::Unavailable(
                    "the cache preload saw a change and stopped; calls fill the cache lazily"
                        .into(),
                ));
            }
            loaded += batch.len() as u64;
        }
        Ok(loaded.min(capacity))
    }

    /// Runs a database call behind the breaker.
    async fn guarded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        if !self.database.allow() {
            return Err(Error::Unavailable("the database is unavailable".into()));
        }
        let result = call.await;
        match &result {
            Err(Error::Unavailable(_)) => self.database.record_failure(),
            // Shed (busy): says nothing about whether the database is up.
            Err(Error::ResourceExhausted(_) | Error::DeadlineExceeded(_)) => {}
            _ => self.database.record_success(),
        }
        result
    }

    /// The route from the primary, with the caller's record from the same
    /// statement. `None`: no agent answers the number.
    async fn fetch_route(
        &self,
        claims: &Claims,
        called: &PhoneNumber,
        caller: Option<&PhoneNumber>,
    ) -> Result<Option<pb::ResolveAgentResponse>, Error> {
        let resolution = self
            .guarded(self.fill_store.resolve_agent(claims, called, caller))
            .await?;
        Ok(resolution.as_ref().map(resolution_to_pb))
    }

    /// The caller's record in the agent's org (`None`: the org does not
    /// know this caller).
    async fn fetch_caller(
        &self,
        claims: &Claims,
        org_id: OrgId,
        caller: &PhoneNumber,
    ) -> Result<CallerRecord, Error> {
        match self
            .guarded(
                self.fill_store
                    .lookup_customer(claims, caller, Some(org_id)),
            )
            .await
        {
            Ok(customer) => Ok(Some(Arc::new(customer_to_pb(&customer)))),
            Err(Error::NotFound(_)) => Ok(None),
            Err(error) => {
                tracing::warn!(%error, "caller lookup failed; answering without the caller record");
                Err(error)
            }
        }
    }
}
