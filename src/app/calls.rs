//! Calls: the decision for each ringing call, its live slot, its record.
//!
//! `StartCall` = the route (`ResolveService::route`, the same lookup and
//! cache as `ResolveAgent`) + one admission script on Redis
//! (`live::LiveCalls`) + the record's first fact written to Postgres before
//! answering (bounded by `record_timeout`; past it, or with Postgres down,
//! the fact goes to the Redis backlog and any replica writes it later).
//! Later requests name the call by (org, call id, called number, agent):
//! enough for any replica to rebuild its slot.

use std::{sync::Arc, time::Duration};

use chrono::Utc;

use super::{data::Data, local_slots::LocalSlots, resolve::ResolveService, routing::Verdict};
use crate::{
    api::pb,
    auth::Claims,
    cache::Cache,
    domain::{
        AgentId, CallCursor, CallFact, CallFilter, CallId, CallLimits, CallLookup, CallRecord,
        CustomerId, Decision, DisconnectReason, EndStatus, Fact, OrgId, Page, PageRequest,
        PhoneNumber, Reason, TransferTarget,
    },
    error::Error,
    live::{Admission, AdmissionRequest, CallKey, Ending, LiveCalls, LiveError, Renewal},
    observability::metrics::Metrics,
    store::PgStore,
};

pub use super::watch::{ActiveCallsView, WatchSettings};

/// What to do with a call whose limits Redis cannot check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenRedisDown {
    /// Answer it (and count it): a call refused for our outage is worse
    /// than one over the limit.
    Answer,
    /// Refuse it (SIP 503), or transfer it to the agent's fallback.
    Refuse,
}

#[derive(Clone, Copy, Debug)]
pub struct CallSettings {
    pub when_redis_down: WhenRedisDown,
    /// How long StartCall, AnswerCall and EndCall wait for Postgres to take
    /// the record before leaving it to the backlog.
    pub record_timeout: Duration,
}

/// A StartCall answer.
pub struct StartedCall {
    pub call_id: CallId,
    pub decision: Decision,
    /// The route as ResolveAgent gives it (`None`: no agent has the number).
    pub route: Option<pb::ResolveAgentResponse>,
    pub org_id: Option<OrgId>,
    pub lease_expires_ms: Option<i64>,
    pub replayed: bool,
    pub limits_unchecked: bool,
}

/// A renewed lease.
pub struct Lease {
    pub expires_ms: i64,
    pub rebuilt: bool,
}

/// A started call as its media server names it afterwards.
#[derive(Clone, Debug)]
pub struct CallRef {
    pub org_id: OrgId,
    pub call_id: CallId,
    pub called: PhoneNumber,
    pub agent_id: AgentId,
}

impl CallRef {
    fn key(&self) -> CallKey<'_> {
        CallKey {
            org_id: self.org_id,
            call_id: &self.call_id,
            called: self.called.as_str(),
            agent_id: self.agent_id,
        }
    }
}

#[derive(Clone)]
pub struct CallsService {
    resolve: ResolveService,
    live: LiveCalls,
    /// Org limits are written through it (the routes carry them).
    data: Data,
    /// The primary: records are written and read back there.
    records: PgStore,
    settings: CallSettings,
    metrics: Metrics,
    pub(super) watch: Arc<super::watch::Watchers>,
    /// This replica's own count, used only while Redis cannot be asked.
    local: Arc<LocalSlots>,
    /// When the Redis outage was last told at WARN.
    warned: Arc<Every>,
}

/// At most once per `period`: for warnings that every call of an outage
/// would repeat.
struct Every {
    period_ms: u64,
    since: std::time::Instant,
    /// Milliseconds after `since` of the last time it was due; `u64::MAX`
    /// before the first.
    last_ms: std::sync::atomic::AtomicU64,
}

impl Every {
    fn new(period: Duration) -> Self {
        Every {
            period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
            since: std::time::Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }

    /// True at most once per period (one caller wins a race).
    fn due(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != u64::MAX && now.saturating_sub(last) < self.period_ms {
            return false;
        }
        self.last_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

fn service_only(claims: &Claims, what: &str) -> Result<(), Error> {
    if claims.is_service_role() {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!(
            "{what} is for media servers (service_role)"
        )))
    }
}

impl CallsService {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        resolve: ResolveService,
        live: LiveCalls,
        store: PgStore,
        cache: Cache,
        settings: CallSettings,
        watch: WatchSettings,
        metrics: Metrics,
    ) -> Self {
        CallsService {
            resolve,
            records: store.primary_only(),
            data: Data::new(store.clone(), cache),
            watch: Arc::new(super::watch::Watchers::new(watch, store, live.clone())),
            local: Arc::new(LocalSlots::new(live.settings().lease)),
            warned: Arc::new(Every::new(Duration::from_secs(10))),
            live,
            settings,
            metrics,
        }
    }

    /// How often a media server should renew a slot: a third of the lease,
    /// so one lost renewal does not lose the slot.
    pub(crate) fn renew_every(&self) -> Duration {
        self.live.settings().lease / 3
    }

    pub(crate) async fn start(
        &self,
        claims: &Claims,
        called: &PhoneNumber,
        caller: Option<&PhoneNumber>,
        call_id: Option<CallId>,
    ) -> Result<StartedCall, Error> {
        service_only(claims, "StartCall")?;
        let call_id = call_id.unwrap_or_else(CallId::generate);
        let Some(routed) = self
            .resolve
            .decide(claims, called, caller, call_id.as_str(), Utc::now())
            .await?
        else {
            // Nobody's number: counted, not recorded (no org to keep it).
            let decision = Decision::refused(Reason::NumberNotFound, None);
            self.metrics
                .calls
                .decided(decision.outcome, decision.reason);
            return Ok(StartedCall {
                call_id,
                decision,
                route: None,
                org_id: None,
                lease_expires_ms: None,
                replayed: false,
                limits_unchecked: false,
            });
        };
        let org_id = routed.org_id;
        let agent_id = routed.agent_id;
        // Refused by the pipeline (caller blocked, inactive, closed, a
        // loop): no slot; else the answering agent's fallback for a limit.
        let (refused_for, fallback) = match &routed.verdict {
            Verdict::Answer => (None, routed.fallback.clone()),
            Verdict::Refuse {
                reason,
                transfer_to,
            } => (Some(*reason), transfer_to.clone()),
        };
        let agent_version = routed.agent_version;
        // The answer's agent, org and caller as fields: the decision
        // carries them, and the limits are read from them.
        let mut route = routed.response.decoded().map_err(|_| Error::Internal)?;
        let agent = route.agent.as_ref().ok_or(Error::Internal)?;
        let org_limit = route
            .organization
            .as_ref()
            .map(|o| u32::try_from(o.max_concurrent_calls).unwrap_or(0))
            .unwrap_or(0);
        let agent_limit = agent
            .max_concurrent_calls
            .and_then(|l| u32::try_from(l).ok())
            .unwrap_or(0);
        let admission = self
            .live
            .admit(&AdmissionRequest {
                org_id,
                call_id: &call_id,
                called: called.as_str(),
                agent_id,
                org_limit,
                agent_limit,
                refused_for,
                fallback: fallback.as_ref().map(TransferTarget::as_str),
                agent_version: agent_version.filter(|_| refused_for.is_none()),
            })
            .await;
        let mut started = StartedCall {
            call_id,
            decision: Decision::answered(),
            route: None,
            org_id: Some(org_id),
            lease_expires_ms: None,
            replayed: false,
            limits_unchecked: false,
        };
        let record = match admission {
            Ok(Admission::Conflict) => {
                return Err(Error::invalid(
                    "call_id is already a call to another number of this organization",
                ))
            }
            Ok(Admission::Ended) => {
                return Err(Error::FailedPrecondition(
                    "this call has ended; a new call needs a new call_id".into(),
                ))
            }
            Ok(Admission::Replay {
                outcome,
                reason,
                transfer_to,
                lease_expires_ms,
                agent_id: first_agent,
                agent_version: first_version,
            }) => {
                started.decision = Decision {
                    outcome,
                    reason,
                    transfer_to: transfer_to.map(TransferTarget::from_db),
                };
                started.lease_expires_ms = lease_expires_ms;
                started.replayed = true;
                // Hours, serving or a version changed since the first
                // answer: the retry still gets the agent and version that
                // answered it (one read, only in that case).
                if let Some(first_agent) = first_agent.filter(|first| {
                    outcome == crate::domain::Outcome::Answer
                        && (*first != agent_id || first_version != agent_version)
                }) {
                    if let Some(served) =
                        self.resolve.served_agent(first_agent, first_version).await
                    {
                        route.agent_version =
                            first_version.map_or(0, |v| i32::try_from(v).unwrap_or(0));
                        route
                            .variables
                            .insert("agent_name".to_owned(), served.name.clone());
                        match first_version {
                            Some(v) => route
                                .variables
                                .insert("agent_version".to_owned(), v.to_string()),
                            None => route.variables.remove("agent_version"),
                        };
                        route.agent = Some(Box::new(served));
                    }
                }
                false
            }
            Ok(Admission::New {
                outcome,
                reason,
                transfer_to,
                lease_expires_ms,
                expired,
                record,
            }) => {
                self.metrics.calls.lease_expiries.add(expired);
                started.decision = Decision {
                    outcome,
                    reason,
                    transfer_to: transfer_to.map(TransferTarget::from_db),
                };
                started.lease_expires_ms = lease_expires_ms;
                if !record {
                    self.metrics.calls.records_skipped.inc();
                }
                record
            }
            Err(error) => {
                // Every call would say it during an outage: once in a while
                // at WARN (the metric counts them all), else at DEBUG.
                if self.warned.due() {
                    tracing::warn!(%error, "call limits could not be checked (Redis); calls are decided without them");
                } else {
                    tracing::debug!(%error, org_id = %org_id, "call limits could not be checked (Redis)");
                }
                started.limits_unchecked = true;
                started.decision = if let Some(reason) = refused_for {
                    Decision::refused(reason, fallback.as_ref())
                } else {
                    match self.settings.when_redis_down {
                        WhenRedisDown::Answer => {
                            self.metrics.calls.admission_failed_open.inc();
                            match self.local.admit(
                                org_id,
                                &started.call_id,
                                agent_id,
                                org_limit,
                                agent_limit,
                            ) {
                                Ok(()) => {
                                    started.lease_expires_ms = Some(
                                        Utc::now().timestamp_millis().saturating_add(
                                            i64::try_from(self.live.settings().lease.as_millis())
                                                .unwrap_or(i64::MAX),
                                        ),
                                    );
                                    Decision::answered()
                                }
                                Err(reason) => Decision::refused(reason, fallback.as_ref()),
                            }
                        }
                        WhenRedisDown::Refuse => {
                            self.metrics.calls.admission_failed_refused.inc();
                            Decision::refused(Reason::LimitsUnavailable, fallback.as_ref())
                        }
                    }
                };
                let refused = started.decision.outcome != crate::domain::Outcome::Answer;
                let record = !refused
                    || self.local.may_record_refusal(
                        org_id,
                        started.decision.reason,
                        self.live.settings().refusals_recorded_per_minute,
                    );
                if !record {
                    self.metrics.calls.records_skipped.inc();
                }
                record
            }
        };
        if !started.replayed {
            self.metrics
                .calls
                .decided(started.decision.outcome, started.decision.reason);
        }
        if record {
            let fact = CallFact {
                org_id,
                call_id: started.call_id.as_str().to_owned(),
                called_number: called.as_str().to_owned(),
                at: Utc::now(),
                what: Fact::Decided {
                    caller_number: caller.map(|c| c.as_str().to_owned()),
                    agent_id: Some(agent_id),
                    customer_id: route
                        .caller
                        .as_ref()
                        .and_then(|c| CustomerId::parse(&c.id).ok()),
                    outcome: started.decision.outcome,
                    reason: started.decision.reason,
                    transfer_to: started
                        .decision
                        .transfer_to
                        .as_ref()
                        .map(|t| t.as_str().to_owned()),
                    agent_version: agent_version
                        .filter(|_| started.decision.outcome == crate::domain::Outcome::Answer),
                },
            };
            self.record(&fact).await;
        }
        started.route = Some(route);
        Ok(started)
    }

    /// Writes a fact to Postgres within `record_timeout`, else keeps it in
    /// the backlog. A record that neither store takes is counted and
    /// logged as lost; one the database refuses for good, as dropped.
    async fn record(&self, fact: &CallFact) -> Recorded {
        let written = tokio::time::timeout(
            self.settings.record_timeout,
            self.records.record_call_fact(fact),
        )
        .await;
        match written {
            Ok(Ok(())) => return Recorded::Written,
            Ok(Err(error)) if !is_transient(&error) => {
                tracing::error!(%error, org_id = %fact.org_id, "a call record was refused by the database");
                self.metrics.calls.records_dropped.inc();
                return Recorded::Refused(error);
            }
            Ok(Err(_)) | Err(_) => {}
        }
        match self.live.push_backlog(fact).await {
            Ok(()) => {
                self.metrics.calls.records_backlogged.inc();
                Recorded::Kept
            }
            Err(error) => {
                tracing::error!(%error, org_id = %fact.org_id, "a call record was lost: neither Postgres nor the Redis backlog took it");
                self.metrics.calls.records_lost.inc();
                Recorded::Lost
            }
        }
    }

    /// Whether `call` names the number's current agent and org: what a
    /// call Redis does not know (lost, or never started) must show before
    /// any state is made for it.
    async fn matches_route(&self, call: &CallRef) -> Result<bool, Error> {
        let reachable = self
            .resolve
            .reachable_agents(&Claims::service(), &call.called)
            .await?;
        let agent = call.agent_id.to_string();
        Ok(reachable
            .is_some_and(|(org_id, agents)| org_id == call.org_id && agents.contains(&agent)))
    }

    /// Renews the slot; with `answered`, also ringing → in progress.
    pub(crate) async fn keep_alive(
        &self,
        claims: &Claims,
        call: &CallRef,
        answered: bool,
    ) -> Result<Lease, Error> {
        service_only(
            claims,
            if answered {
                "AnswerCall"
            } else {
                "KeepCallAlive"
            },
        )?;
        let key = call.key();
        let mut renewal = self.live.renew(&key, answered, false).await;
        if matches!(renewal, Ok(Renewal::Unknown)) {
            if !self.matches_route(call).await? {
                return Err(not_a_call());
            }
            renewal = self.live.renew(&key, answered, true).await;
        }
        let lease =
            match renewal {
                Ok(Renewal::Alive {
                    lease_expires_ms,
                    rebuilt,
                }) => Lease {
                    expires_ms: lease_expires_ms,
                    rebuilt,
                },
                Ok(Renewal::Ended) => {
                    return Err(Error::FailedPrecondition(
                        "the call has ended; its slot is not renewed".into(),
                    ))
                }
                Ok(Renewal::NoSlot) => return Err(Error::FailedPrecondition(
                    "the call was not answered by an agent (transfer or reject): it holds no slot"
                        .into(),
                )),
                Ok(Renewal::Conflict) => return Err(not_the_calls()),
                Ok(Renewal::Unknown) => return Err(Error::Internal),
                // Redis is away: a call this replica admitted alone is renewed
                // here; any other is answered UNAVAILABLE (its answer still
                // recorded, once it is shown to be the number's).
                Err(error) => {
                    if self.local.renew(call.org_id, &call.call_id) {
                        Lease {
                            expires_ms: Utc::now().timestamp_millis().saturating_add(
                                i64::try_from(self.live.settings().lease.as_millis())
                                    .unwrap_or(i64::MAX),
                            ),
                            rebuilt: false,
                        }
                    } else {
                        if answered && self.matches_route(call).await.unwrap_or(false) {
                            self.record(&self.fact(call, Fact::Answered)).await;
                        }
                        return Err(unavailable(error));
                    }
                }
            };
        if answered {
            self.record(&self.fact(call, Fact::Answered)).await;
        }
        Ok(lease)
    }

    fn fact(&self, call: &CallRef, what: Fact) -> CallFact {
        CallFact {
            org_id: call.org_id,
            call_id: call.call_id.as_str().to_owned(),
            called_number: call.called.as_str().to_owned(),
            at: Utc::now(),
            what,
        }
    }

    /// Frees the slot and records the end; the record as it is then.
    pub(crate) async fn end(
        &self,
        claims: &Claims,
        call: &CallRef,
        status: EndStatus,
        disconnect_reason: Option<DisconnectReason>,
    ) -> Result<CallRecord, Error> {
        service_only(claims, "EndCall")?;
        let held_here = self.local.end(call.org_id, &call.call_id);
        let key = call.key();
        let mut ending = self.live.end(&key, false).await;
        if matches!(ending, Ok(Ending::Unknown)) {
            if !self.matches_route(call).await? {
                return Err(not_a_call());
            }
            ending = self.live.end(&key, true).await;
        }
        let answered = match &ending {
            Ok(Ending::Conflict) => return Err(not_the_calls()),
            Ok(Ending::Ended { answered, .. }) => Some(*answered),
            Ok(Ending::AlreadyEnded) => None,
            Ok(Ending::Unknown) => return Err(Error::Internal),
            Err(error) => {
                tracing::warn!(%error, org_id = %call.org_id, "the call's slot could not be freed now (Redis); its lease frees it");
                if !held_here && !self.matches_route(call).await? {
                    return Err(not_a_call());
                }
                None
            }
        };
        let fact = self.fact(
            call,
            Fact::Ended {
                status,
                disconnect_reason,
            },
        );
        // Also when Redis says it had ended: that may be this very end,
        // retried after a timeout. The first end recorded wins.
        match self.record(&fact).await {
            Recorded::Written => {}
            Recorded::Refused(error) => return Err(error),
            // Postgres did not take it now: answer what we know.
            Recorded::Kept | Recorded::Lost => return Ok(CallRecord::from_fact(&fact, answered)),
        }
        match self
            .records
            .get_call(
                &Claims::service(),
                &CallLookup::ByCallId {
                    org_id: Some(call.org_id),
                    call_id: call.call_id.as_str().to_owned(),
                },
            )
            .await
        {
            // The answer may still wait in the backlog: Redis knew it was
            // answered, so say what the record converges to.
            Ok(mut record) => {
                if answered == Some(true)
                    && record.answered_at.is_none()
                    && record.status == Some(crate::domain::CallStatus::Missed)
                {
                    record.status = Some(crate::domain::CallStatus::Completed);
                }
                Ok(record)
            }
            Err(Error::NotFound(_)) => Ok(CallRecord::from_fact(&fact, answered)),
            Err(error) if is_transient(&error) => Ok(CallRecord::from_fact(&fact, answered)),
            Err(error) => Err(error),
        }
    }

    pub(crate) async fn get(
        &self,
        claims: &Claims,
        lookup: &CallLookup,
    ) -> Result<CallRecord, Error> {
        if claims.is_service_role() {
            if let CallLookup::ByCallId { org_id: None, .. } = lookup {
                return Err(Error::invalid(
                    "org_id is required with call_id for service_role (call ids are unique per organization)",
                ));
            }
        }
        self.records.get_call(claims, lookup).await
    }

    pub(crate) async fn list(
        &self,
        claims: &Claims,
        filter: &CallFilter,
        page: PageRequest<CallCursor>,
    ) -> Result<Page<CallRecord>, Error> {
        self.records.list_calls(claims, filter, page).await
    }

    pub(crate) async fn limits(
        &self,
        claims: &Claims,
        org: Option<OrgId>,
    ) -> Result<CallLimits, Error> {
        if claims.is_service_role() && org.is_none() {
            return Err(Error::invalid("org_id is required for service_role"));
        }
        match self.records.call_limits(claims, org).await? {
            Some(limits) => Ok(limits),
            None if claims.is_service_role() => Err(Error::not_found("organization")),
            None => Err(Error::PermissionDenied(
                "only an organization's admins read its call limits".into(),
            )),
        }
    }

    pub(crate) async fn set_org_limit(
        &self,
        claims: &Claims,
        org: OrgId,
        limit: Option<u32>,
    ) -> Result<CallLimits, Error> {
        service_only(claims, "SetOrganizationCallLimit")?;
        let written = self
            .data
            .write(|store| store.set_org_call_limit(claims, org, limit))
            .await?;
        Ok(written.limits)
    }

    /// A stream of the org's live counts: service_role names the org,
    /// a tenant watches its own.
    pub(crate) async fn watch(
        &self,
        claims: &Claims,
        org: Option<OrgId>,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<ActiveCallsView, Error>>, Error> {
        let org = if claims.is_service_role() {
            org.ok_or_else(|| Error::invalid("org_id is required for service_role"))?
        } else {
            let member = self.records.member_org(claims).await?.ok_or_else(|| {
                Error::PermissionDenied("you are not a member of any organization".into())
            })?;
            if org.is_some_and(|asked| asked != member) {
                return Err(Error::PermissionDenied(
                    "you may watch only your own organization".into(),
                ));
            }
            member
        };
        self.watch.open(claims.clone(), org).await
    }

    /// Ends every WatchActiveCalls stream (shutdown).
    pub(crate) fn close_streams(&self) {
        self.watch.close_all();
    }

    /// Replays the backlog into Postgres until it is empty or Postgres
    /// fails; the number of facts written.
    pub(crate) async fn drain_backlog(&self, consumer: &str) -> Result<u64, LiveError> {
        let mut written = 0;
        loop {
            let entries = self.live.read_backlog(consumer).await?;
            if entries.is_empty() {
                return Ok(written);
            }
            let mut settled = Vec::with_capacity(entries.len());
            for entry in entries {
                let Some(fact) = entry.fact else {
                    tracing::error!(id = %entry.id, "an unreadable call-record backlog entry was dropped");
                    self.metrics.calls.records_dropped.inc();
                    settled.push(entry.id);
                    continue;
                };
                match self.records.record_call_fact(&fact).await {
                    Ok(()) => {
                        written += 1;
                        self.metrics.calls.records_replayed.inc();
                        settled.push(entry.id);
                    }
                    Err(error) if !is_transient(&error) => {
                        tracing::error!(%error, org_id = %fact.org_id, "a backlogged call record was refused by the database and dropped");
                        self.metrics.calls.records_dropped.inc();
                        settled.push(entry.id);
                    }
                    Err(_) => {
                        // Postgres is still away: keep the rest for later.
                        self.live.settle_backlog(&settled).await?;
                        return Ok(written);
                    }
                }
            }
            self.live.settle_backlog(&settled).await?;
        }
    }
}

/// Worth retrying later: the database could not be reached or was busy.
fn is_transient(error: &Error) -> bool {
    matches!(
        error,
        Error::Unavailable(_) | Error::ResourceExhausted(_) | Error::DeadlineExceeded(_)
    )
}

/// What became of a record's fact.
enum Recorded {
    Written,
    /// In the Redis backlog, for any replica to write later.
    Kept,
    /// The database refused it for good (its organization is gone).
    Refused(Error),
    Lost,
}

fn not_a_call() -> Error {
    Error::invalid(
        "no such call: call_id is not known, and org_id and agent_id are not those of called_number's agent",
    )
}

fn not_the_calls() -> Error {
    Error::invalid(
        "called_number or agent_id is not the call's (call_id names another call of this organization)",
    )
}

fn unavailable(error: LiveError) -> Error {
    tracing::warn!(%error, "live call state unavailable");
    Error::Unavailable(
        "the live call state (Redis) is unavailable; keep the call and renew again".into(),
    )
}

impl CallRecord {
    /// What is known of a call from its last fact alone (Postgres did not
    /// answer).
    fn from_fact(fact: &CallFact, answered: Option<bool>) -> CallRecord {
        let (ended_at, disconnect_reason, status) = match &fact.what {
            Fact::Ended {
                status,
                disconnect_reason,
            } => (
                Some(fact.at),
                *disconnect_reason,
                match (status, answered) {
                    (EndStatus::Failed, _) => Some(crate::domain::CallStatus::Failed),
                    (EndStatus::Completed, Some(true)) => {
                        Some(crate::domain::CallStatus::Completed)
                    }
                    (EndStatus::Completed, Some(false)) => Some(crate::domain::CallStatus::Missed),
                    (EndStatus::Completed, None) => None,
                },
            ),
            _ => (None, None, None),
        };
        CallRecord {
            id: uuid::Uuid::nil(),
            org_id: fact.org_id,
            call_id: fact.call_id.clone(),
            agent_id: None,
            customer_id: None,
            called_number: fact.called_number.clone(),
            caller_number: None,
            outcome: None,
            reason: None,
            transfer_to: None,
            status,
            started_at: fact.at,
            answered_at: None,
            ended_at,
            duration_ms: None,
            disconnect_reason,
            agent_version: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_warning_is_due_once_per_period() {
        let hourly = Every::new(Duration::from_secs(3600));
        assert!(hourly.due());
        assert!(!hourly.due());
        let always = Every::new(Duration::ZERO);
        assert!(always.due());
        assert!(always.due());
    }
}
