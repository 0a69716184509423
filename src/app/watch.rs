//! `WatchActiveCalls`: an organization's live counts, pushed on change.
//!
//! Each stream is a task that reads the counts from Redis (every replica's
//! calls, expired leases not counted) every `interval` and sends a view
//! only when it differs from the last one sent: changes within an interval
//! are coalesced into one message. A stream:
//! * holds one of `max_streams` slots, and one of `max_per_org` of its
//!   organization's, for its whole life (RESOURCE_EXHAUSTED beyond);
//! * ends with UNAUTHENTICATED when its token expires, with
//!   PERMISSION_DENIED when a tenant caller is no longer a member (checked
//!   every `recheck`), and cleanly at shutdown (so the drain is not held).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::{mpsc, watch};

use crate::{
    auth::Claims,
    domain::{AgentId, OrgId},
    error::Error,
    live::LiveCalls,
    store::PgStore,
};

/// How long a stream's closing error waits for room in a full buffer.
const FINAL_SEND: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct WatchSettings {
    /// The replica's in-flight requests (SWITCHBOARD_MAX_CONCURRENT_REQUESTS;
    /// `None`: no cap): each stream holds one for its whole life.
    pub in_flight: Option<Arc<tokio::sync::Semaphore>>,
    pub interval: Duration,
    pub recheck: Duration,
    pub max_streams: usize,
    /// Tenants' streams of one org (service_role's are not counted: a
    /// tenant cannot lock the platform out of its own view).
    pub max_per_org: usize,
    /// Streams of one user (a tenant's `sub`), so one member cannot take
    /// all of its org's.
    pub max_per_user: usize,
}

/// One message of the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveCallsView {
    pub org_id: OrgId,
    pub active: u32,
    pub limit: u32,
    /// (agent, live calls, its limit or 0), by agent.
    pub agents: Vec<(AgentId, u32, u32)>,
}

pub(crate) struct Watchers {
    settings: WatchSettings,
    store: PgStore,
    live: LiveCalls,
    open: Mutex<Open>,
    /// Flips to true at shutdown: every stream ends.
    shutdown: watch::Sender<bool>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_org: HashMap<OrgId, usize>,
    per_user: HashMap<uuid::Uuid, usize>,
}

fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = counts.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(key);
        }
    }
}

/// A stream's place; given back when the stream's task ends.
struct Slot {
    /// One of the replica's in-flight requests, for the stream's life.
    _in_flight: Option<tokio::sync::OwnedSemaphorePermit>,
    watchers: Arc<Watchers>,
    /// A tenant's stream: its org and user.
    tenant: Option<(OrgId, Option<uuid::Uuid>)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.watchers.open.lock() {
            open.total = open.total.saturating_sub(1);
            if let Some((org, user)) = self.tenant {
                release(&mut open.per_org, &org);
                if let Some(user) = user {
                    release(&mut open.per_user, &user);
                }
            }
        }
    }
}

/// When the token expires, from its `exp` claim (seconds).
fn expires_at(claims: &Claims) -> Option<SystemTime> {
    let json: serde_json::Value = serde_json::from_str(&claims.json).ok()?;
    let exp = json.get("exp")?.as_u64()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

impl Watchers {
    pub(crate) fn new(settings: WatchSettings, store: PgStore, live: LiveCalls) -> Self {
        Watchers {
            settings,
            store: store.primary_only(),
            live,
            open: Mutex::new(Open::default()),
            shutdown: watch::channel(false).0,
        }
    }

    /// Ends every stream (shutdown).
    pub(crate) fn close_all(&self) {
        self.shutdown.send_replace(true);
    }

    fn take_slot(self: &Arc<Self>, claims: &Claims, org: OrgId) -> Result<Slot, Error> {
        let mut open = self.open.lock().map_err(|_| Error::Internal)?;
        if open.total >= self.settings.max_streams {
            return Err(Error::ResourceExhausted(format!(
                "this replica serves {} WatchActiveCalls streams already (SWITCHBOARD_WATCH_MAX_STREAMS); retry later or on another replica",
                self.settings.max_streams
            )));
        }
        let in_flight = match &self.settings.in_flight {
            Some(permits) => Some(permits.clone().try_acquire_owned().map_err(|_| {
                Error::ResourceExhausted(
                    "server overloaded: every in-flight request is taken \
                     (SWITCHBOARD_MAX_CONCURRENT_REQUESTS; a stream holds one for its life); retry with backoff"
                        .into(),
                )
            })?),
            None => None,
        };
        let tenant = (!claims.is_service_role()).then_some((org, claims.sub));
        if let Some((org, user)) = tenant {
            let of_org = open.per_org.get(&org).copied().unwrap_or(0);
            if of_org >= self.settings.max_per_org {
                return Err(Error::ResourceExhausted(format!(
                    "the organization has {} WatchActiveCalls streams open on this replica already (SWITCHBOARD_WATCH_MAX_PER_ORG)",
                    self.settings.max_per_org
                )));
            }
            let of_user = user
                .and_then(|u| open.per_user.get(&u).copied())
                .unwrap_or(0);
            if of_user >= self.settings.max_per_user {
                return Err(Error::ResourceExhausted(format!(
                    "you have {} WatchActiveCalls streams open on this replica already (SWITCHBOARD_WATCH_MAX_PER_USER)",
                    self.settings.max_per_user
                )));
            }
            open.per_org.insert(org, of_org + 1);
            if let Some(user) = user {
                open.per_user.insert(user, of_user + 1);
            }
        }
        open.total += 1;
        Ok(Slot {
            _in_flight: in_flight,
            watchers: self.clone(),
            tenant,
        })
    }

    /// The org's limit in force and its agents' limits, as the service reads
    /// them (the caller's right to watch is checked before).
    async fn limits(&self, org: OrgId) -> Result<(u32, HashMap<AgentId, u32>), Error> {
        let service = Claims::service();
        let limits = self
            .store
            .call_limits(&service, Some(org))
            .await?
            .ok_or_else(|| Error::not_found("organization"))?;
        let agents = self.store.agent_call_limits(&service, org).await?;
        Ok((limits.in_force, agents))
    }

    /// Opens a stream of `org`'s counts for `claims` (already allowed to
    /// see `org`). The receiver ends when the stream does.
    pub(crate) async fn open(
        self: &Arc<Self>,
        claims: Claims,
        org: OrgId,
    ) -> Result<mpsc::Receiver<Result<ActiveCallsView, Error>>, Error> {
        let slot = self.take_slot(&claims, org)?;
        let (mut limit, mut agent_limits) = self.limits(org).await?;
        let (sender, receiver) = mpsc::channel(4);
        let watchers = self.clone();
        let mut shutdown = self.shutdown.subscribe();
        let expiry = expires_at(&claims)
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .unwrap_or(Duration::ZERO);
        tokio::spawn(async move {
            let _slot = slot;
            let mut poll = tokio::time::interval(watchers.settings.interval);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut recheck = tokio::time::interval(watchers.settings.recheck);
            recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            recheck.tick().await;
            let expired = tokio::time::sleep(expiry);
            tokio::pin!(expired);
            let mut last: Option<ActiveCallsView> = None;
            if *shutdown.borrow_and_update() {
                return;
            }
            loop {
                tokio::select! {
                    _ = sender.closed() => break,
                    // Only `true` is ever sent.
                    _ = shutdown.changed() => break,
                    () = &mut expired => {
                        // The last word waits a little for a slow reader.
                        let _ = tokio::time::timeout(
                            FINAL_SEND,
                            sender.send(Err(Error::Unauthenticated(
                                "the token expired; open a new stream with a fresh token".into(),
                            ))),
                        )
                        .await;
                        break;
                    }
                    _ = recheck.tick() => {
                        if !claims.is_service_role() {
                            match watchers.store.member_org(&claims).await {
                                Ok(Some(member_of)) if member_of == org => {}
                                Ok(_) => {
                                    let _ = tokio::time::timeout(
                                        FINAL_SEND,
                                        sender.send(Err(Error::PermissionDenied(
                                            "you are no longer a member of this organization".into(),
                                        ))),
                                    )
                                    .await;
                                    break;
                                }
                                // The database is away: keep streaming what Redis says.
                                Err(_) => {}
                            }
                        }
                        if let Ok((l, a)) = watchers.limits(org).await {
                            limit = l;
                            agent_limits = a;
                        }
                    }
                    _ = poll.tick() => {
                        let counts = match watchers.live.counts(org).await {
                            Ok(counts) => counts,
                            Err(error) => {
                                tracing::debug!(%error, "active counts unavailable");
                                continue;
                            }
                        };
                        let mut agents: Vec<(AgentId, u32, u32)> = counts
                            .agents
                            .iter()
                            .map(|(agent, n)| (*agent, *n, agent_limits.get(agent).copied().unwrap_or(0)))
                            .collect();
                        for (agent, agent_limit) in &agent_limits {
                            if !agents.iter().any(|(a, _, _)| a == agent) {
                                agents.push((*agent, 0, *agent_limit));
                            }
                        }
                        agents.sort();
                        let view = ActiveCallsView { org_id: org, active: counts.active, limit, agents };
                        if last.as_ref() != Some(&view) {
                            // Never wait on a client that does not read: a
                            // full buffer skips this view (the next tick
                            // sends the state then), so shutdown, expiry and
                            // membership are still seen.
                            match sender.try_send(Ok(view.clone())) {
                                Ok(()) => last = Some(view),
                                Err(mpsc::error::TrySendError::Full(_)) => {}
                                Err(mpsc::error::TrySendError::Closed(_)) => break,
                            }
                        }
                    }
                }
            }
        });
        Ok(receiver)
    }
}
