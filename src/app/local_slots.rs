//! The limits one replica applies alone while Redis cannot be asked: the
//! calls this replica admitted during the outage, as leases in its own
//! memory. So an organization with limit K has at most K live calls per
//! replica admitted meanwhile (N replicas: N×K), instead of none at all.
//! Entries expire like Redis leases (renewed by KeepCallAlive on this
//! replica, freed by EndCall); nothing here is shared or persisted.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::domain::{AgentId, CallId, OrgId, Reason};

struct Slot {
    call_id: CallId,
    agent: AgentId,
    expires: Instant,
}

pub(crate) struct LocalSlots {
    lease: Duration,
    by_org: Mutex<HashMap<OrgId, Vec<Slot>>>,
    /// Refusals recorded per (org, reason) in the current minute, while
    /// Redis (which keeps this bound otherwise) cannot be asked.
    refusals: Mutex<HashMap<(OrgId, Reason), (Instant, u32)>>,
}

/// The refusal bound's window, as Redis keeps it.
const REFUSAL_WINDOW: Duration = Duration::from_secs(60);

impl LocalSlots {
    pub(crate) fn new(lease: Duration) -> Self {
        LocalSlots {
            lease,
            by_org: Mutex::new(HashMap::new()),
            refusals: Mutex::new(HashMap::new()),
        }
    }

    /// Whether one more refusal of `org` for `reason` may be recorded in
    /// this minute (at most `per_minute`; this replica's own count).
    pub(crate) fn may_record_refusal(&self, org: OrgId, reason: Reason, per_minute: u32) -> bool {
        let Ok(mut refusals) = self.refusals.lock() else {
            return true;
        };
        let now = Instant::now();
        if refusals.len() > 10_000 {
            refusals.retain(|_, (since, _)| now.duration_since(*since) < REFUSAL_WINDOW);
        }
        let (since, count) = refusals.entry((org, reason)).or_insert((now, 0));
        if now.duration_since(*since) >= REFUSAL_WINDOW {
            *since = now;
            *count = 0;
        }
        *count += 1;
        *count <= per_minute
    }

    /// Admits the call against this replica's own count, or says which
    /// limit it is at. A call already held is admitted again (a retry).
    pub(crate) fn admit(
        &self,
        org: OrgId,
        call_id: &CallId,
        agent: AgentId,
        org_limit: u32,
        agent_limit: u32,
    ) -> Result<(), Reason> {
        let Ok(mut by_org) = self.by_org.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let slots = by_org.entry(org).or_default();
        slots.retain(|s| s.expires > now);
        if let Some(held) = slots.iter_mut().find(|s| &s.call_id == call_id) {
            held.expires = now + self.lease;
            return Ok(());
        }
        if slots.len() >= org_limit as usize {
            return Err(Reason::OrganizationAtLimit);
        }
        if agent_limit > 0
            && slots.iter().filter(|s| s.agent == agent).count() >= agent_limit as usize
        {
            return Err(Reason::AgentAtLimit);
        }
        slots.push(Slot {
            call_id: call_id.clone(),
            agent,
            expires: now + self.lease,
        });
        Ok(())
    }

    /// Renews a call held here; false if it is not.
    pub(crate) fn renew(&self, org: OrgId, call_id: &CallId) -> bool {
        let Ok(mut by_org) = self.by_org.lock() else {
            return false;
        };
        let now = Instant::now();
        match by_org.get_mut(&org).and_then(|slots| {
            slots
                .iter_mut()
                .find(|s| &s.call_id == call_id && s.expires > now)
        }) {
            Some(slot) => {
                slot.expires = now + self.lease;
                true
            }
            None => false,
        }
    }

    /// Frees a call held here; whether it was.
    pub(crate) fn end(&self, org: OrgId, call_id: &CallId) -> bool {
        let Ok(mut by_org) = self.by_org.lock() else {
            return false;
        };
        let Some(slots) = by_org.get_mut(&org) else {
            return false;
        };
        let before = slots.len();
        slots.retain(|s| &s.call_id != call_id);
        let held = slots.len() < before;
        if slots.is_empty() {
            by_org.remove(&org);
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (OrgId, AgentId) {
        (
            OrgId::from_uuid(uuid::Uuid::from_u128(1)),
            AgentId::from_uuid(uuid::Uuid::from_u128(2)),
        )
    }

    fn call(n: u32) -> CallId {
        CallId::parse(&format!("call-{n}")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_replica_alone_admits_up_to_the_limits_and_frees_on_end() {
        let slots = LocalSlots::new(Duration::from_secs(30));
        let (org, agent) = ids();
        assert_eq!(slots.admit(org, &call(1), agent, 2, 0), Ok(()));
        assert_eq!(slots.admit(org, &call(2), agent, 2, 0), Ok(()));
        assert_eq!(slots.admit(org, &call(1), agent, 2, 0), Ok(()), "a retry");
        assert_eq!(
            slots.admit(org, &call(3), agent, 2, 0),
            Err(Reason::OrganizationAtLimit)
        );
        assert!(slots.end(org, &call(1)));
        assert!(!slots.end(org, &call(1)));
        assert_eq!(
            slots.admit(org, &call(3), agent, 5, 1),
            Err(Reason::AgentAtLimit)
        );
        assert_eq!(slots.admit(org, &call(3), agent, 5, 2), Ok(()));
        assert!(slots.renew(org, &call(3)));
        assert!(!slots.renew(org, &call(1)));
    }

    #[test]
    fn refusals_recorded_are_bounded_per_org_and_reason() {
        let slots = LocalSlots::new(Duration::from_secs(30));
        let (org, _) = ids();
        let recorded = (0..10)
            .filter(|_| slots.may_record_refusal(org, Reason::OrganizationAtLimit, 3))
            .count();
        assert_eq!(recorded, 3);
        assert!(slots.may_record_refusal(org, Reason::AgentAtLimit, 3));
    }

    #[test]
    fn leases_expire() {
        let slots = LocalSlots::new(Duration::ZERO);
        let (org, agent) = ids();
        assert_eq!(slots.admit(org, &call(1), agent, 1, 0), Ok(()));
        assert_eq!(slots.admit(org, &call(2), agent, 1, 0), Ok(()));
    }
}
