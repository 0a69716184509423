//! Call records and concurrent-call limits.
//!
//! A record is written as facts (`CallFact`), each one upsert (one round
//! trip, `record_call_fact`) keyed by
//! (org, call id) that merges into the row: the decision's fields are the
//! decision's, started/answered/ended take the earliest seen, the first
//! end wins; the status is derived by the database (trigger
//! `calls_derive_status`). So facts converge whatever order they arrive in,
//! on whichever replica, and replaying one changes nothing.
//! References stay inside the org: the agent and the customer are looked
//! up in the record's own org, and a reference that is gone (deleted
//! meanwhile) is stored as null rather than failing the write.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::{
    postgres::{get, limit_from_db, limit_to_db},
    sql_literal,
    tx::Access,
    PgStore,
};
use crate::{
    auth::Claims,
    domain::{
        AgentId, CallCursor, CallFact, CallFilter, CallLimits, CallLookup, CallRecord, CallStatus,
        CustomerId, DisconnectReason, Fact, OrgId, Outcome, Page, PageRequest, PlanTier, Reason,
        TransferTarget,
    },
    error::Error,
};

const CALL_COLUMNS: &str = "id, org_id, call_id, agent_id, customer_id, called_number, \
     caller_number, outcome, reason, transfer_to, status, started_at, answered_at, ended_at, \
     duration_ms, disconnect_reason, agent_version";

/// An organization's limit after a write, and the numbers whose cached
/// routes carry the old one.
pub struct OrgLimitWritten {
    pub limits: CallLimits,
    pub numbers: Vec<String>,
}

impl PgStore {
    /// Merges one fact into the call's record, as `service_role`: one
    /// simple-protocol round trip (an implicit transaction: the role, the
    /// upsert), since it sits on StartCall's path. Values are literals
    /// (`sql_literal`), each already parsed into its domain type.
    pub(crate) async fn record_call_fact(&self, fact: &CallFact) -> Result<(), Error> {
        let sql = record_sql(fact).ok_or(Error::Internal)?;
        self.single_statement(Access::Write, "record_call_fact", &sql)
            .await
            .map(|_| ())
    }

    pub(crate) async fn get_call(
        &self,
        claims: &Claims,
        lookup: &CallLookup,
    ) -> Result<CallRecord, Error> {
        let sql = format!(
            "select {CALL_COLUMNS} from public.calls \
             where ($1::uuid is null or id = $1) \
               and ($2::text is null or call_id = $2) \
               and ($3::uuid is null or org_id = $3) \
             order by org_id limit 2"
        );
        let (id, call_id, org) = match lookup {
            CallLookup::ById(id) => (Some(*id), None, None),
            CallLookup::ByCallId { org_id, call_id } => {
                (None, Some(call_id.as_str()), org_id.map(|o| o.as_uuid()))
            }
        };
        let select = sqlx::query(&sql).bind(id).bind(call_id).bind(org);
        let rows = self
            .transaction(claims, Access::Read, "get_call", async |tx| {
                tx.fetch_all(select).await
            })
            .await?;
        match rows.as_slice() {
            [] => Err(Error::not_found("call")),
            [row] => call_from_row(row),
            _ => Err(Error::invalid(
                "calls of several organizations have this call_id; name org_id",
            )),
        }
    }

    /// Newest first.
    pub(crate) async fn list_calls(
        &self,
        claims: &Claims,
        filter: &CallFilter,
        page: PageRequest<CallCursor>,
    ) -> Result<Page<CallRecord>, Error> {
        let sql = format!(
            "select {CALL_COLUMNS} from public.calls \
             where ($1::uuid is null or org_id = $1) \
               and ($2::uuid is null or agent_id = $2) \
               and ($3::text is null or status = $3) \
               and ($4::timestamptz is null or started_at >= $4) \
               and ($5::timestamptz is null or started_at < $5) \
               and ($6::timestamptz is null or (started_at, id) < ($6, $7::uuid)) \
             order by started_at desc, id desc limit $8"
        );
        let after_at = page
            .after
            .and_then(|c| DateTime::<Utc>::from_timestamp_micros(c.started_at_micros));
        let select = sqlx::query(&sql)
            .bind(filter.org_id.map(|o| o.as_uuid()))
            .bind(filter.agent_id.map(|a| a.as_uuid()))
            .bind(filter.status.map(CallStatus::as_db))
            .bind(filter.from)
            .bind(filter.until)
            .bind(after_at)
            .bind(page.after.map(|c| c.id))
            .bind(i64::from(page.size) + 1);
        let rows = self
            .transaction(claims, Access::Read, "list_calls", async |tx| {
                tx.fetch_all(select).await
            })
            .await?;
        let calls = rows
            .iter()
            .map(call_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_rows(calls, page, |c| CallCursor {
            started_at_micros: c.started_at.timestamp_micros(),
            id: c.id,
        }))
    }

    /// The org's limits: service_role names the org; a tenant reads its
    /// own, admins only (`None` for anyone else).
    pub(crate) async fn call_limits(
        &self,
        claims: &Claims,
        org: Option<OrgId>,
    ) -> Result<Option<CallLimits>, Error> {
        let sql = if claims.is_service_role() {
            "select o.id, o.plan_tier::text as plan_tier, \
                    switchboard_private.plan_call_limit(o.plan_tier) as plan_default, \
                    o.max_concurrent_calls \
             from public.organizations o where o.id = $1"
        } else {
            "select o.id, o.plan_tier::text as plan_tier, \
                    switchboard_private.plan_call_limit(o.plan_tier) as plan_default, \
                    o.max_concurrent_calls \
             from public.organizations o \
             where o.id = (select switchboard_private.auth_org_id(array['admin'])) \
               and ($1::uuid is null or o.id = $1)"
        };
        let select = sqlx::query(sql).bind(org.map(|o| o.as_uuid()));
        let row = self
            .transaction(claims, Access::Read, "call_limits", async |tx| {
                tx.fetch_optional(select).await
            })
            .await?;
        row.as_ref().map(limits_from_row).transpose()
    }

    /// Sets or clears an org's override (service_role).
    pub(crate) async fn set_org_call_limit(
        &self,
        claims: &Claims,
        org: OrgId,
        limit: Option<u32>,
    ) -> Result<OrgLimitWritten, Error> {
        let update = sqlx::query(
            "with updated as ( \
               update public.organizations set max_concurrent_calls = $2 where id = $1 \
               returning id, plan_tier, max_concurrent_calls) \
             select u.id, u.plan_tier::text as plan_tier, \
                    switchboard_private.plan_call_limit(u.plan_tier) as plan_default, \
                    u.max_concurrent_calls, \
                    (select coalesce(array_agg(a.phone_number), '{}') from public.agents a \
                     where a.org_id = u.id) as numbers \
             from updated u",
        )
        .bind(org.as_uuid())
        .bind(limit.map(limit_to_db));
        let row = self
            .transaction(claims, Access::Write, "set_org_call_limit", async |tx| {
                tx.fetch_optional(update).await
            })
            .await?
            .ok_or_else(|| Error::not_found("organization"))?;
        Ok(OrgLimitWritten {
            limits: limits_from_row(&row)?,
            numbers: get(&row, "numbers")?,
        })
    }

    /// The org's agents that have a limit of their own.
    pub(crate) async fn agent_call_limits(
        &self,
        claims: &Claims,
        org: OrgId,
    ) -> Result<std::collections::HashMap<AgentId, u32>, Error> {
        let select = sqlx::query(
            "select id, max_concurrent_calls from public.agents \
             where org_id = $1 and max_concurrent_calls is not null",
        )
        .bind(org.as_uuid());
        let rows = self
            .transaction(claims, Access::Read, "agent_call_limits", async |tx| {
                tx.fetch_all(select).await
            })
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    AgentId::from_uuid(get(row, "id")?),
                    limit_from_db(get(row, "max_concurrent_calls")?),
                ))
            })
            .collect()
    }

    /// The caller's organization while they are a member (any role), read
    /// under their claims: a long-lived stream re-checks it.
    pub(crate) async fn member_org(&self, claims: &Claims) -> Result<Option<OrgId>, Error> {
        let select = sqlx::query("select switchboard_private.auth_org_id() as org_id");
        let row = self
            .transaction(claims, Access::Read, "member_org", async |tx| {
                tx.fetch_one(select).await
            })
            .await?;
        Ok(get::<Option<Uuid>>(&row, "org_id")?.map(OrgId::from_uuid))
    }
}

fn text(value: Option<&str>) -> Option<String> {
    match value {
        Some(v) => sql_literal(v),
        None => Some("null".to_owned()),
    }
}

fn uuid(value: Option<Uuid>) -> String {
    match value {
        Some(id) => format!("'{id}'::uuid"),
        None => "null::uuid".to_owned(),
    }
}

fn at(value: Option<DateTime<Utc>>) -> String {
    match value {
        Some(t) => format!(
            "'{}'::timestamptz",
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        ),
        None => "null::timestamptz".to_owned(),
    }
}

/// The upsert of one fact: the first decision recorded wins (a retry
/// while Redis was away may have decided again), the earliest
/// started/answered/ended win, the first end wins; the agent and customer
/// only if they are the record's own org's (else null).
fn record_sql(fact: &CallFact) -> Option<String> {
    let (mut caller, mut agent, mut customer) = (None, None, None);
    let (mut outcome, mut reason, mut transfer) = (None, None, None);
    let mut version: Option<u32> = None;
    let (mut answered, mut ended, mut end_status, mut disconnect) = (None, None, None, None);
    match &fact.what {
        Fact::Decided {
            caller_number,
            agent_id,
            customer_id,
            outcome: o,
            reason: r,
            transfer_to,
            agent_version,
        } => {
            version = *agent_version;
            caller = caller_number.as_deref();
            agent = agent_id.map(|a| a.as_uuid());
            customer = customer_id.map(|c| c.as_uuid());
            outcome = Some(o.as_db());
            reason = Some(r.as_db());
            transfer = transfer_to.as_deref();
        }
        Fact::Answered => answered = Some(fact.at),
        Fact::Ended {
            status,
            disconnect_reason,
        } => {
            ended = Some(fact.at);
            end_status = Some(status.as_db());
            disconnect = disconnect_reason.map(DisconnectReason::as_db);
        }
    }
    let org = uuid(Some(fact.org_id.as_uuid()));
    Some(format!(
        "SET LOCAL ROLE service_role; \
         insert into public.calls as c (org_id, call_id, called_number, caller_number, \
             agent_id, customer_id, outcome, reason, transfer_to, started_at, answered_at, \
             ended_at, end_status, disconnect_reason, agent_version) \
         values ({org}, {call_id}, {called}, {caller}, \
             (select a.id from public.agents a where a.id = {agent} and a.org_id = {org}), \
             (select u.id from public.customers u where u.id = {customer} and u.org_id = {org}), \
             {outcome}, {reason}, {transfer}, {started}, {answered}, {ended}, {end_status}, {disconnect}, {version}) \
         on conflict (org_id, call_id) do update set \
           caller_number = coalesce(excluded.caller_number, c.caller_number), \
           agent_id = coalesce(excluded.agent_id, c.agent_id), \
           customer_id = coalesce(excluded.customer_id, c.customer_id), \
           outcome = coalesce(c.outcome, excluded.outcome), \
           reason = coalesce(c.reason, excluded.reason), \
           transfer_to = case when c.outcome is null then excluded.transfer_to else c.transfer_to end, \
           started_at = least(c.started_at, excluded.started_at), \
           answered_at = least(c.answered_at, excluded.answered_at), \
           ended_at = least(c.ended_at, excluded.ended_at), \
           end_status = coalesce(c.end_status, excluded.end_status), \
           disconnect_reason = coalesce(c.disconnect_reason, excluded.disconnect_reason), \
           agent_version = case when c.outcome is null then excluded.agent_version else c.agent_version end",
        version = version.map_or_else(|| "null::integer".to_owned(), |v| format!("{v}::integer")),
        call_id = sql_literal(&fact.call_id)?,
        called = sql_literal(&fact.called_number)?,
        caller = text(caller)?,
        agent = uuid(agent),
        customer = uuid(customer),
        outcome = text(outcome)?,
        reason = text(reason)?,
        transfer = text(transfer)?,
        started = at(Some(fact.at)),
        answered = at(answered),
        ended = at(ended),
        end_status = text(end_status)?,
        disconnect = text(disconnect)?,
    ))
}

fn limits_from_row(row: &PgRow) -> Result<CallLimits, Error> {
    let plan_default = limit_from_db(get::<Option<i32>>(row, "plan_default")?.unwrap_or(0));
    let override_limit = get::<Option<i32>>(row, "max_concurrent_calls")?.map(limit_from_db);
    Ok(CallLimits {
        org_id: OrgId::from_uuid(get(row, "id")?),
        plan_tier: PlanTier::from_db(&get::<String>(row, "plan_tier")?),
        plan_default,
        override_limit,
        in_force: override_limit.unwrap_or(plan_default),
    })
}

fn closed<T>(value: Option<String>, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
    value.as_deref().and_then(parse)
}

fn call_from_row(row: &PgRow) -> Result<CallRecord, Error> {
    Ok(CallRecord {
        id: get(row, "id")?,
        org_id: OrgId::from_uuid(get(row, "org_id")?),
        call_id: get(row, "call_id")?,
        agent_id: get::<Option<Uuid>>(row, "agent_id")?.map(AgentId::from_uuid),
        customer_id: get::<Option<Uuid>>(row, "customer_id")?.map(CustomerId::from_uuid),
        called_number: get(row, "called_number")?,
        caller_number: get(row, "caller_number")?,
        outcome: closed(get(row, "outcome")?, Outcome::from_db),
        reason: closed(get(row, "reason")?, Reason::from_db),
        transfer_to: get::<Option<String>>(row, "transfer_to")?.map(TransferTarget::from_db),
        status: closed(Some(get(row, "status")?), CallStatus::from_db),
        started_at: get(row, "started_at")?,
        answered_at: get(row, "answered_at")?,
        ended_at: get(row, "ended_at")?,
        duration_ms: get(row, "duration_ms")?,
        disconnect_reason: closed(get(row, "disconnect_reason")?, DisconnectReason::from_db),
        agent_version: get::<Option<i32>>(row, "agent_version")?
            .and_then(|v| u32::try_from(v).ok()),
    })
}
