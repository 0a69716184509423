//! Live calls in Redis: each organization's admitted calls as leases, the
//! decision remembered for retries, and the backlog of call records that
//! could not reach Postgres (`backlog.rs`).
//!
//! Invariants:
//! * Admission is one Lua script per call: purge expired leases, count,
//!   admit or refuse, remember the decision. Redis runs scripts one at a
//!   time, so with limit K exactly K calls hold a slot, whatever the number
//!   of replicas.
//! * Every key of one organization has the hash tag `{<org id>}`, so a
//!   script touches one Redis Cluster slot; every key is declared to the
//!   script except the per-agent sets the count script walks (same slot).
//! * Times come from Redis (`TIME` inside the scripts), never a replica's
//!   clock: lease expiry is a score in Redis milliseconds.
//! * A call's hash remembers its decision for `remember` after its last
//!   activity; once it says `ended`, no renewal brings the slot back.
//! * Keys live under the cache's prefix with their own format version
//!   (`switchboard:v2:[ns:]<database identity>:`, `LIVE_KEY_VERSION`): a
//!   reset database or another deployment counts nothing of ours, and a
//!   change of the routes' format (v3) does not split the counts between
//!   old and new replicas during a rolling upgrade.
//! * Nothing here decides an outcome beyond the counts: the core
//!   (`app::CallsService`) turns a result into a decision.

pub(crate) mod backlog;
mod scripts;

/// The live keys' own format version. The call hash gained a `version`
/// field in v3 of the routes, read as absent by older replicas and written
/// by newer ones, so both count in the same keys.
pub const LIVE_KEY_VERSION: &str = "switchboard:v2:";

/// The cache's prefix (`KEY_VERSION`…) with the live keys' version.
fn live_prefix(cache_prefix: &str) -> String {
    match cache_prefix.strip_prefix(crate::cache::KEY_VERSION) {
        Some(rest) => format!("{LIVE_KEY_VERSION}{rest}"),
        None => cache_prefix.to_owned(),
    }
}

use std::{sync::Arc, time::Duration};

use redis::RedisError;
use tokio::sync::OnceCell;

use crate::{
    cache::{
        redis_link::{Link, LinkTimeouts, NewMaster},
        RedisTier,
    },
    domain::{AgentId, CallId, OrgId, Outcome, Reason},
};

/// Settings of the live-call state.
#[derive(Clone, Copy, Debug)]
pub struct LiveSettings {
    /// A slot not renewed for this long is free again.
    pub lease: Duration,
    /// How long a call's decision is remembered after its last activity
    /// (retries of StartCall replay it; a renewal after EndCall is refused).
    pub remember: Duration,
    /// Each script's round trip.
    pub timeout: Duration,
    /// Records of refused or transferred calls kept per organization per
    /// minute (the rest are counted, not stored).
    pub refusals_recorded_per_minute: u32,
}

impl LiveSettings {
    /// How long a decision without a slot, or an ended call, is
    /// remembered: long enough for retries and late renewals (two leases,
    /// at least two minutes), no longer than `remember`.
    pub fn short_memory(&self) -> Duration {
        self.lease
            .saturating_mul(2)
            .max(Duration::from_secs(120))
            .min(self.remember)
    }
}

/// Why Redis could not answer.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("no Redis is configured")]
    NotConfigured,
    #[error("Redis is not connected yet")]
    NotConnected,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    #[error("unexpected answer from a script: {0}")]
    Shape(String),
}

/// What the admission script answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// A new call: its decision, how many expired leases were purged, and
    /// whether its record is to be written (refusals past the per-minute
    /// bound are only counted).
    New {
        outcome: Outcome,
        reason: Reason,
        transfer_to: Option<String>,
        lease_expires_ms: Option<i64>,
        expired: u64,
        record: bool,
    },
    /// A retry: the decision first given, with the agent and version that
    /// answered it.
    Replay {
        outcome: Outcome,
        reason: Reason,
        transfer_to: Option<String>,
        lease_expires_ms: Option<i64>,
        agent_id: Option<AgentId>,
        agent_version: Option<u32>,
    },
    /// The id is known in this org with another called number.
    Conflict,
    /// The call was answered and has ended: no slot is given again.
    Ended,
}

/// What the call asks of admission.
#[derive(Clone, Debug)]
pub struct AdmissionRequest<'a> {
    pub org_id: OrgId,
    pub call_id: &'a CallId,
    pub called: &'a str,
    pub agent_id: AgentId,
    pub org_limit: u32,
    /// 0: none.
    pub agent_limit: u32,
    /// `Some`: no slot is wanted, the decision is refused for this reason
    /// (the agent is inactive); still remembered for retries.
    pub refused_for: Option<Reason>,
    /// Where a refused call goes instead (the agent's fallback).
    pub fallback: Option<&'a str>,
    /// The version that answers, remembered for retries.
    pub agent_version: Option<u32>,
}

/// What a renewal (or an answer) answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    Alive {
        lease_expires_ms: i64,
        rebuilt: bool,
    },
    /// The call has ended: its slot stays free.
    Ended,
    /// The decision took no slot (transfer, reject).
    NoSlot,
    /// Another called number or agent than the call's.
    Conflict,
    /// Redis does not know the call (lost, or never started): ask again
    /// with `rebuild` once the call is checked against its route.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Freed now (`held`: whether it still held a slot); `was` its state.
    Ended {
        held: bool,
        answered: bool,
    },
    /// Ended before: nothing freed.
    AlreadyEnded,
    Conflict,
    /// Not known (see `Renewal::Unknown`).
    Unknown,
}

/// An organization's live counts, from Redis's clock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub active: u32,
    /// (agent, live calls), sorted by agent.
    pub agents: Vec<(AgentId, u32)>,
}

/// The call, as its later requests name it.
#[derive(Clone, Debug)]
pub struct CallKey<'a> {
    pub org_id: OrgId,
    pub call_id: &'a CallId,
    pub called: &'a str,
    pub agent_id: AgentId,
}

#[derive(Clone)]
pub struct LiveCalls {
    /// The cache's tier: where Redis is, and the key prefix (the
    /// database's identity).
    redis: Option<RedisTier>,
    /// A connection of our own, whose response timeout is the scripts'
    /// (the cache's is a few milliseconds: a slow answer there is a miss,
    /// here it would be an unchecked call).
    link: Arc<OnceCell<Link>>,
    settings: LiveSettings,
    /// The link's background tasks stop once every clone is dropped.
    alive: Arc<()>,
}

/// The keys of one organization.
struct OrgKeys {
    active: String,
    agents: String,
    /// `agent_prefix` + agent id: that agent's leases.
    agent_prefix: String,
    call_prefix: String,
    refusals: String,
}

impl OrgKeys {
    fn new(prefix: &str, org: OrgId) -> Self {
        let base = format!("{prefix}calls:{{{org}}}:");
        OrgKeys {
            active: format!("{base}active"),
            agents: format!("{base}agents"),
            agent_prefix: format!("{base}agent:"),
            call_prefix: format!("{base}call:"),
            refusals: format!("{base}refusals"),
        }
    }

    fn agent(&self, agent: AgentId) -> String {
        format!("{}{agent}", self.agent_prefix)
    }

    fn call(&self, call: &CallId) -> String {
        format!("{}{}", self.call_prefix, call.as_str())
    }
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl LiveCalls {
    pub(crate) fn new(redis: Option<RedisTier>, settings: LiveSettings) -> Self {
        let live = LiveCalls {
            redis,
            link: Arc::new(OnceCell::new()),
            settings,
            alive: Arc::new(()),
        };
        if let Some(tier) = &live.redis {
            let target = tier.target().clone();
            let cell = live.link.clone();
            let alive = Arc::downgrade(&live.alive);
            let timeouts = LinkTimeouts {
                connect: Duration::from_secs(1),
                // Retried once (`run`): room for both.
                response: settings.timeout.saturating_mul(3),
            };
            tokio::spawn(async move {
                let mut delay = Duration::from_millis(50);
                while alive.upgrade().is_some() {
                    // A new master needs nothing from us: renewals rebuild
                    // what it lost.
                    let new_master: NewMaster = Arc::new(|| {});
                    match Link::connect(&target, timeouts, new_master, alive.clone()).await {
                        Ok(link) => {
                            let _ = cell.set(link);
                            return;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "live-call Redis link not up yet; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(2));
                        }
                    }
                }
            });
        }
        live
    }

    pub(crate) fn settings(&self) -> &LiveSettings {
        &self.settings
    }

    /// Whether scripts can run: our connection is up and the key prefix
    /// known. Start-up waits for it as for the cache's tier.
    pub(crate) fn is_connected(&self) -> bool {
        self.link().is_ok()
    }

    fn link(&self) -> Result<(Link, String), LiveError> {
        let tier = self.redis.as_ref().ok_or(LiveError::NotConfigured)?;
        let link = self.link.get().ok_or(LiveError::NotConnected)?;
        let prefix = tier.key_prefix().ok_or(LiveError::NotConnected)?;
        Ok((link.clone(), live_prefix(&prefix)))
    }

    /// Runs a script within the timeout, and once more (twice as long)
    /// after a timeout: every script is idempotent (a second admission of
    /// the same call replays the first), so a slow moment costs time, not
    /// an unchecked call. Its answer as strings.
    async fn run(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        link: &mut Link,
    ) -> Result<(Vec<String>, bool), LiveError> {
        let mut timeout = self.settings.timeout;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let answer =
                tokio::time::timeout(timeout, invocation.invoke_async::<Vec<String>>(link)).await;
            match answer {
                Ok(Ok(answer)) => return Ok((answer, attempts > 1)),
                Ok(Err(error)) if error.is_timeout() && attempts < 2 => {}
                Ok(Err(error)) => return Err(error.into()),
                Err(_) if attempts < 2 => {}
                Err(_) => return Err(LiveError::Timeout(timeout)),
            }
            timeout = timeout.saturating_mul(2);
        }
    }

    pub(crate) async fn admit(&self, call: &AdmissionRequest<'_>) -> Result<Admission, LiveError> {
        let (mut link, prefix) = self.link()?;
        let keys = OrgKeys::new(&prefix, call.org_id);
        let (answer, retried) = self
            .run(
                scripts::ADMIT
                    .key(&keys.active)
                    .key(keys.agent(call.agent_id))
                    .key(&keys.agents)
                    .key(keys.call(call.call_id))
                    .key(&keys.refusals)
                    .arg(call.call_id.as_str())
                    .arg(call.called)
                    .arg(call.agent_id.to_string())
                    .arg(call.org_limit)
                    .arg(call.agent_limit)
                    .arg(ms(self.settings.lease))
                    .arg(ms(self.settings.remember))
                    .arg(call.refused_for.map(Reason::as_db).unwrap_or(""))
                    .arg(call.fallback.unwrap_or(""))
                    .arg(self.settings.refusals_recorded_per_minute)
                    .arg(ms(self.settings.short_memory()))
                    .arg(
                        call.agent_version
                            .map(|v| v.to_string())
                            .unwrap_or_default(),
                    ),
                &mut link,
            )
            .await?;
        match scripts::parse_admission(&answer)? {
            // Our own first attempt ran after all: this is its decision,
            // new to the caller (its record is written again: idempotent).
            Admission::Replay {
                outcome,
                reason,
                transfer_to,
                lease_expires_ms,
                ..
            } if retried => Ok(Admission::New {
                outcome,
                reason,
                transfer_to,
                lease_expires_ms,
                expired: 0,
                record: true,
            }),
            admission => Ok(admission),
        }
    }

    /// Renews the call's lease (and, with `answered`, marks it in
    /// progress). Rebuilds a slot Redis lost: the call is live, so it is
    /// not refused even above the limit.
    pub(crate) async fn renew(
        &self,
        call: &CallKey<'_>,
        answered: bool,
        rebuild: bool,
    ) -> Result<Renewal, LiveError> {
        let (mut link, prefix) = self.link()?;
        let keys = OrgKeys::new(&prefix, call.org_id);
        let (answer, _) = self
            .run(
                scripts::RENEW
                    .key(&keys.active)
                    .key(keys.agent(call.agent_id))
                    .key(&keys.agents)
                    .key(keys.call(call.call_id))
                    .arg(call.call_id.as_str())
                    .arg(call.called)
                    .arg(call.agent_id.to_string())
                    .arg(ms(self.settings.lease))
                    .arg(ms(self.settings.remember))
                    .arg(if answered { "1" } else { "0" })
                    .arg(if rebuild { "1" } else { "0" }),
                &mut link,
            )
            .await?;
        scripts::parse_renewal(&answer)
    }

    /// Frees the call's slot and marks it ended; `mark_unknown`: mark a
    /// call Redis does not know ended too (checked against its route).
    pub(crate) async fn end(
        &self,
        call: &CallKey<'_>,
        mark_unknown: bool,
    ) -> Result<Ending, LiveError> {
        let (mut link, prefix) = self.link()?;
        let keys = OrgKeys::new(&prefix, call.org_id);
        let (answer, _) = self
            .run(
                scripts::END
                    .key(&keys.active)
                    .key(keys.agent(call.agent_id))
                    .key(keys.call(call.call_id))
                    .arg(call.call_id.as_str())
                    .arg(call.called)
                    .arg(call.agent_id.to_string())
                    .arg(ms(self.settings.short_memory()))
                    .arg(if mark_unknown { "1" } else { "0" }),
                &mut link,
            )
            .await?;
        scripts::parse_ending(&answer)
    }

    /// The organization's live calls now (leases past their expiry not
    /// counted), in all and per agent.
    pub(crate) async fn counts(&self, org: OrgId) -> Result<Counts, LiveError> {
        let (mut link, prefix) = self.link()?;
        let keys = OrgKeys::new(&prefix, org);
        let (answer, _) = self
            .run(
                scripts::COUNT
                    .key(&keys.active)
                    .key(&keys.agents)
                    .arg(&keys.agent_prefix),
                &mut link,
            )
            .await?;
        scripts::parse_counts(&answer)
    }
}
