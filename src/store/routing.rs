//! Routing's statements: agent versions (publish, list, read two to
//! compare), caller rules and their audit trail, and what a route carries
//! for the decision pipeline (`extras_from_row`). Every statement runs under
//! the caller's claims: RLS decides.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::{
    postgres::{get, PgStore},
    tx::Access,
};
use crate::{
    auth::Claims,
    domain::{
        field_changes, Agent, AgentChange, AgentId, AgentVersion, CallerAction, CallerMatch,
        CallerRule, ChangeOperation, LlmConfig, NewCallerRule, OrgId, Page, PageRequest,
        PhoneNumber, RouteExtras, Seq,
    },
    error::Error,
};

const VERSION_COLUMNS: &str =
    "agent_id, org_id, version, name, voice_id, llm_config, published_at, published_by";

/// The routed agent's number comes from a subquery, so the same list
/// serves selects and `returning`.
const RULE_COLUMNS: &str = "id, org_id, match, pattern, action, agent_id, label, created_at, \
     updated_at, (select t.phone_number from public.agents t \
                  where t.id = caller_rules.agent_id and t.org_id = caller_rules.org_id) as agent_number";

impl PgStore {
    /// Publishes the agent's current name, voice and config as its next
    /// version (the database numbers it and copies the fields).
    pub(crate) async fn publish_agent(
        &self,
        claims: &Claims,
        agent: AgentId,
    ) -> Result<(AgentVersion, PhoneNumber), Error> {
        let sql = format!(
            "with a as (select id, org_id, phone_number from public.agents where id = $1) \
             insert into public.agent_versions (agent_id, org_id, name, voice_id, llm_config) \
             select a.id, a.org_id, '', '', '{{}}'::jsonb from a \
             returning {VERSION_COLUMNS}, (select phone_number from a) as phone_number"
        );
        let insert = sqlx::query(&sql).bind(agent.as_uuid());
        let row = self
            .transaction(claims, Access::Write, "publish_agent", async |tx| match tx
                .fetch_optional(insert)
                .await?
            {
                Some(row) => Ok(row),
                None => Err(tx
                    .missing_or_forbidden("agents", agent.as_uuid(), "agent")
                    .await),
            })
            .await?;
        let number: String = get(&row, "phone_number")?;
        let number = PhoneNumber::parse(&number).map_err(|_| Error::Internal)?;
        Ok((version_from_row(&row)?, number))
    }

    /// Newest first. NOT_FOUND when the caller sees no such agent.
    pub(crate) async fn list_agent_versions(
        &self,
        claims: &Claims,
        agent: AgentId,
        page: PageRequest<Seq>,
    ) -> Result<Page<AgentVersion>, Error> {
        let sql = format!(
            "select {VERSION_COLUMNS} from public.agent_versions \
             where agent_id = $1 and ($2::integer is null or version < $2) \
             order by version desc limit $3"
        );
        let after = page.after.map(|s| i32::try_from(s.0).unwrap_or(i32::MAX));
        let select = sqlx::query(&sql)
            .bind(agent.as_uuid())
            .bind(after)
            .bind(i64::from(page.size) + 1);
        let rows = self
            .transaction(claims, Access::Read, "list_agent_versions", async |tx| {
                let rows = tx.fetch_all(select).await?;
                if rows.is_empty() && !tx.visible("agents", agent.as_uuid()).await? {
                    return Err(Error::not_found("agent"));
                }
                Ok(rows)
            })
            .await?;
        let versions = rows
            .iter()
            .map(version_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_rows(versions, page, |v| {
            Seq(i64::from(v.version))
        }))
    }

    /// Two versions of one agent (in the order asked).
    pub(crate) async fn agent_versions_pair(
        &self,
        claims: &Claims,
        agent: AgentId,
        from: u32,
        to: u32,
    ) -> Result<(AgentVersion, AgentVersion), Error> {
        let sql = format!(
            "select {VERSION_COLUMNS} from public.agent_versions \
             where agent_id = $1 and version in ($2, $3)"
        );
        let select = sqlx::query(&sql)
            .bind(agent.as_uuid())
            .bind(i32::try_from(from).unwrap_or(i32::MAX))
            .bind(i32::try_from(to).unwrap_or(i32::MAX));
        let rows = self
            .transaction(claims, Access::Read, "compare_agent_versions", async |tx| {
                tx.fetch_all(select).await
            })
            .await?;
        let versions = rows
            .iter()
            .map(version_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let find = |n: u32| {
            versions
                .iter()
                .find(|v| v.version == n)
                .cloned()
                .ok_or_else(|| Error::NotFound(format!("version {n} of this agent not found")))
        };
        Ok((find(from)?, find(to)?))
    }

    /// Creates a rule; returns it and the numbers whose routes carry the
    /// org's rules (all of the org's).
    pub(crate) async fn create_caller_rule(
        &self,
        claims: &Claims,
        rule: &NewCallerRule,
    ) -> Result<(CallerRule, Vec<String>), Error> {
        let sql = format!(
            "insert into public.caller_rules (org_id, match, pattern, action, agent_id, label) \
             values (coalesce($1, switchboard_private.auth_org_id()), $2, $3, $4, $5, $6) \
             returning {RULE_COLUMNS}"
        );
        let agent = match rule.action {
            CallerAction::Route(agent) => Some(agent.as_uuid()),
            CallerAction::Block => None,
        };
        let insert = sqlx::query(&sql)
            .bind(rule.org_id.map(|o| o.as_uuid()))
            .bind(rule.matching.as_db())
            .bind(&rule.pattern)
            .bind(rule.action.as_db())
            .bind(agent)
            .bind(rule.label.as_deref());
        let (row, numbers) = self
            .transaction(claims, Access::Write, "create_caller_rule", async |tx| {
                let row = tx.fetch_one(insert).await?;
                let org: Uuid = get(&row, "org_id")?;
                let numbers = tx.fetch_all(org_numbers(org)).await?;
                Ok((row, numbers))
            })
            .await?;
        Ok((rule_from_row(&row)?, numbers_of(&numbers)?))
    }

    pub(crate) async fn list_caller_rules(
        &self,
        claims: &Claims,
        page: PageRequest,
    ) -> Result<Page<CallerRule>, Error> {
        let sql = format!(
            "select {RULE_COLUMNS} from public.caller_rules \
             where ($1::uuid is null or id > $1) order by id limit $2"
        );
        let select = sqlx::query(&sql)
            .bind(page.after)
            .bind(i64::from(page.size) + 1);
        let rows = self
            .transaction(claims, Access::Read, "list_caller_rules", async |tx| {
                tx.fetch_all(select).await
            })
            .await?;
        let rules = rows
            .iter()
            .map(rule_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_rows(rules, page, |r| r.id))
    }

    /// Deletes a rule; returns it and the org's numbers.
    pub(crate) async fn delete_caller_rule(
        &self,
        claims: &Claims,
        id: Uuid,
    ) -> Result<(CallerRule, Vec<String>), Error> {
        let sql = format!("delete from public.caller_rules where id = $1 returning {RULE_COLUMNS}");
        let delete = sqlx::query(&sql).bind(id);
        let (row, numbers) = self
            .transaction(claims, Access::Write, "delete_caller_rule", async |tx| {
                let Some(row) = tx.fetch_optional(delete).await? else {
                    return Err(tx
                        .missing_or_forbidden("caller_rules", id, "caller rule")
                        .await);
                };
                let org: Uuid = get(&row, "org_id")?;
                let numbers = tx.fetch_all(org_numbers(org)).await?;
                Ok((row, numbers))
            })
            .await?;
        Ok((rule_from_row(&row)?, numbers_of(&numbers)?))
    }

    /// The org's rule changes, newest first, as RLS lets the caller see them.
    pub(crate) async fn list_caller_rule_history(
        &self,
        claims: &Claims,
        page: PageRequest<Seq>,
    ) -> Result<Page<AgentChange>, Error> {
        let select = sqlx::query(
            "select id, org_id, rule_id, changed_at, changed_by, actor_role, actor_sql_role, operation, changes \
             from public.caller_rule_history \
             where ($1::bigint is null or id < $1) order by id desc limit $2",
        )
        .bind(page.after.map(|seq| seq.0))
        .bind(i64::from(page.size) + 1);
        let rows = self
            .transaction(
                claims,
                Access::Read,
                "list_caller_rule_history",
                async |tx| tx.fetch_all(select).await,
            )
            .await?;
        let changes = rows
            .iter()
            .map(rule_change_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_rows(changes, page, |c| c.seq))
    }
}

/// Every number of an org: a caller-rule change evicts all its routes.
fn org_numbers(org: Uuid) -> super::tx::PgQuery<'static> {
    sqlx::query("select phone_number from public.agents where org_id = $1").bind(org)
}

fn numbers_of(rows: &[PgRow]) -> Result<Vec<String>, Error> {
    rows.iter().map(|r| get(r, "phone_number")).collect()
}

fn version_from_row(row: &PgRow) -> Result<AgentVersion, Error> {
    Ok(AgentVersion {
        agent_id: AgentId::from_uuid(get(row, "agent_id")?),
        org_id: OrgId::from_uuid(get(row, "org_id")?),
        version: u32::try_from(get::<i32>(row, "version")?).map_err(|_| Error::Internal)?,
        name: get(row, "name")?,
        voice_id: get(row, "voice_id")?,
        llm_config: LlmConfig::from_json(get(row, "llm_config")?),
        published_at: get(row, "published_at")?,
        published_by: get(row, "published_by")?,
    })
}

fn rule_from_row(row: &PgRow) -> Result<CallerRule, Error> {
    let matching = CallerMatch::from_db(&get::<String>(row, "match")?).ok_or(Error::Internal)?;
    let action = match (
        get::<String>(row, "action")?.as_str(),
        get::<Option<Uuid>>(row, "agent_id")?,
    ) {
        ("route", Some(agent)) => CallerAction::Route(AgentId::from_uuid(agent)),
        ("block", _) => CallerAction::Block,
        _ => return Err(Error::Internal),
    };
    Ok(CallerRule {
        id: get(row, "id")?,
        org_id: OrgId::from_uuid(get(row, "org_id")?),
        matching,
        pattern: get(row, "pattern")?,
        action,
        label: get(row, "label")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
        agent_number: get::<Option<String>>(row, "agent_number")?
            .and_then(|n| PhoneNumber::parse(&n).ok()),
    })
}

/// A rule change in the shape of an agent change (`agent_id` is the rule's
/// id): the history readers share one type.
fn rule_change_from_row(row: &PgRow) -> Result<AgentChange, Error> {
    let operation =
        ChangeOperation::from_db(&get::<String>(row, "operation")?).ok_or(Error::Internal)?;
    Ok(AgentChange {
        seq: Seq(get(row, "id")?),
        agent_id: AgentId::from_uuid(get(row, "rule_id")?),
        org_id: OrgId::from_uuid(get(row, "org_id")?),
        changed_at: get(row, "changed_at")?,
        changed_by: get(row, "changed_by")?,
        actor_role: get(row, "actor_role")?,
        actor_sql_role: get(row, "actor_sql_role")?,
        operation,
        fields: field_changes(operation, get(row, "changes")?),
    })
}

/// The pipeline's part of a `resolve_number` row (or a preload row).
pub(super) fn extras_from_row(row: &PgRow, agent: &Agent) -> Result<RouteExtras, Error> {
    let versions = super::postgres::readable_json(row, "served_versions");
    let served_versions = versions
        .as_ref()
        .and_then(serde_json::Value::as_array)
        .map(|all| {
            all.iter()
                .filter_map(|v| version_from_json(v, agent))
                .collect()
        })
        .unwrap_or_default();
    let rules = super::postgres::readable_json(row, "caller_rules");
    let caller_rules = rules
        .as_ref()
        .and_then(serde_json::Value::as_array)
        .map(|all| {
            all.iter()
                .filter_map(|r| rule_from_json(r, agent.org_id))
                .collect()
        })
        .unwrap_or_default();
    let after_hours_agent_number = get::<Option<String>>(row, "after_hours_agent_number")?
        .and_then(|n| PhoneNumber::parse(&n).ok());
    Ok(RouteExtras {
        served_versions,
        after_hours_agent_number,
        caller_rules,
    })
}

fn version_from_json(value: &serde_json::Value, agent: &Agent) -> Option<AgentVersion> {
    let published_at = value
        .get("published_at")
        .and_then(serde_json::Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))?;
    Some(AgentVersion {
        agent_id: agent.id,
        org_id: agent.org_id,
        version: u32::try_from(value.get("version")?.as_u64()?).ok()?,
        name: value.get("name")?.as_str()?.to_owned(),
        voice_id: value.get("voice_id")?.as_str()?.to_owned(),
        llm_config: LlmConfig::from_json(value.get("llm_config")?.clone()),
        published_at,
        published_by: None,
    })
}

fn rule_from_json(value: &serde_json::Value, org_id: OrgId) -> Option<CallerRule> {
    let text = |key: &str| value.get(key).and_then(serde_json::Value::as_str);
    let action = match text("action")? {
        "block" => CallerAction::Block,
        "route" => CallerAction::Route(AgentId::parse(text("agent_id")?).ok()?),
        _ => return None,
    };
    Some(CallerRule {
        id: text("id")?.parse().ok()?,
        org_id,
        matching: CallerMatch::from_db(text("match")?)?,
        pattern: text("pattern")?.to_owned(),
        action,
        label: None,
        created_at: DateTime::<Utc>::UNIX_EPOCH,
        updated_at: DateTime::<Utc>::UNIX_EPOCH,
        agent_number: text("agent_number").and_then(|n| PhoneNumber::parse(n).ok()),
    })
}
