//! The RLS policy matrix, at the SQL level: every table of every exposed
//! schema × select/insert/update/delete × every kind of caller, run as real
//! SQL under the caller's claims exactly as `src/store/postgres.rs` applies
//! them (one transaction; `request.jwt.claims` and `role` set
//! transaction-locally), against the migrations as they are, then rolled
//! back. The expected outcomes are the table `MATRIX` below, one row per
//! table × operation × caller; each row is checked from both seeded orgs
//! (Acme's users against Acme's or Bluebird's rows, and the reverse).
//!
//! Tables are discovered from `pg_catalog`, so a new table fails the test
//! until it has rows here; a table without RLS, or without a policy for an
//! operation the matrix lets a tenant do, fails it too.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{Postgres, Transaction};

use crate::helpers::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Select,
    Insert,
    Update,
    Delete,
}

impl Op {
    const ALL: [Op; 4] = [Op::Select, Op::Insert, Op::Update, Op::Delete];

    /// As in `pg_policies.cmd`.
    fn cmd(self) -> &'static str {
        match self {
            Op::Select => "SELECT",
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }
}

/// Who runs the statement, and whose row it targets. "Own" and "Other" are
/// relative to the caller's org; anon, service_role and the user without a
/// profile target rows of the org the case is run from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Caller {
    Anon,
    AdminOwn,
    ManagerOwn,
    ViewerOwn,
    AdminOther,
    ManagerOther,
    ViewerOther,
    Service,
    /// `authenticated`, a real user, but no row in `profiles`.
    NoProfile,
}

impl Caller {
    const ALL: [Caller; 9] = [
        Caller::Anon,
        Caller::AdminOwn,
        Caller::ManagerOwn,
        Caller::ViewerOwn,
        Caller::AdminOther,
        Caller::ManagerOther,
        Caller::ViewerOther,
        Caller::Service,
        Caller::NoProfile,
    ];

    fn is_tenant(self) -> bool {
        !matches!(self, Caller::Anon | Caller::Service)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// The statement reached the target row: select sees it, insert adds
    /// it, update/delete change it.
    Allowed,
    /// Filtered out silently by RLS: select sees nothing, update/delete
    /// touch no row.
    Hidden,
    /// A policy's check refused the new row ("violates row-level security").
    Refused,
    /// The role has no privilege on the table at all.
    NoGrant,
    /// Anything else; never expected.
    Other(String),
}
use Caller::*;
use Op::*;
use Outcome::{Allowed, Hidden, NoGrant, Refused};

/// One row of the matrix: what `caller` gets doing `op` on `table`.
type Expect = (&'static str, Op, Caller, Outcome);

/// The policies as designed (migrations 0002, 0004 and
/// 20261130000001_calls): viewers read their org; managers and admins write
/// agents, customers and the knowledge base; only admins manage profiles (of
/// others); organizations change only through service_role; calls are
/// records written by switchboard (service_role) and read by the org: no
/// tenant holds INSERT, UPDATE or DELETE on them, so every tenant write is
/// `NoGrant` (refused before any policy is consulted), not `Refused` or
/// `Hidden`; agent_history is read by the org and written by nobody; anon
/// reaches nothing; service_role bypasses RLS but has no write privilege on
/// agent_history.
///
/// Routing (20261201000001): agent_versions are published (inserted) by
/// admins and managers of the org and read by every member; nobody, not
/// even service_role, holds UPDATE or DELETE on them (immutable). Caller
/// rules are written by admins and managers and read by the org, like
/// agents. caller_rule_history is agent_history's twin: read by the org,
/// written only by its trigger.
#[rustfmt::skip]
const MATRIX: &[Expect] = &[
    // table           op      caller        outcome
    // organizations
    ("organizations",  Select, Anon,         NoGrant),
    ("organizations",  Select, AdminOwn,     Allowed),
    ("organizations",  Select, ManagerOwn,   Allowed),
    ("organizations",  Select, ViewerOwn,    Allowed),
    ("organizations",  Select, AdminOther,   Hidden),
    ("organizations",  Select, ManagerOther, Hidden),
    ("organizations",  Select, ViewerOther,  Hidden),
    ("organizations",  Select, Service,      Allowed),
    ("organizations",  Select, NoProfile,    Hidden),
    ("organizations",  Insert, Anon,         NoGrant),
    ("organizations",  Insert, AdminOwn,     Refused),
    ("organizations",  Insert, ManagerOwn,   Refused),
    ("organizations",  Insert, ViewerOwn,    Refused),
    ("organizations",  Insert, AdminOther,   Refused),
    ("organizations",  Insert, ManagerOther, Refused),
    ("organizations",  Insert, ViewerOther,  Refused),
    ("organizations",  Insert, Service,      Allowed),
    ("organizations",  Insert, NoProfile,    Refused),
    ("organizations",  Update, Anon,         NoGrant),
    ("organizations",  Update, AdminOwn,     Hidden),
    ("organizations",  Update, ManagerOwn,   Hidden),
    ("organizations",  Update, ViewerOwn,    Hidden),
    ("organizations",  Update, AdminOther,   Hidden),
    ("organizations",  Update, ManagerOther, Hidden),
    ("organizations",  Update, ViewerOther,  Hidden),
    ("organizations",  Update, Service,      Allowed),
    ("organizations",  Update, NoProfile,    Hidden),
    ("organizations",  Delete, Anon,         NoGrant),
    ("organizations",  Delete, AdminOwn,     Hidden),
    ("organizations",  Delete, ManagerOwn,   Hidden),
    ("organizations",  Delete, ViewerOwn,    Hidden),
    ("organizations",  Delete, AdminOther,   Hidden),
    ("organizations",  Delete, ManagerOther, Hidden),
    ("organizations",  Delete, ViewerOther,  Hidden),
    ("organizations",  Delete, Service,      Allowed),
    ("organizations",  Delete, NoProfile,    Hidden),
    // profiles
    ("profiles",       Select, Anon,         NoGrant),
    ("profiles",       Select, AdminOwn,     Allowed),
    ("profiles",       Select, ManagerOwn,   Allowed),
    ("profiles",       Select, ViewerOwn,    Allowed),
    ("profiles",       Select, AdminOther,   Hidden),
    ("profiles",       Select, ManagerOther, Hidden),
    ("profiles",       Select, ViewerOther,  Hidden),
    ("profiles",       Select, Service,      Allowed),
    ("profiles",       Select, NoProfile,    Hidden),
    ("profiles",       Insert, Anon,         NoGrant),
    ("profiles",       Insert, AdminOwn,     Allowed),
    ("profiles",       Insert, ManagerOwn,   Refused),
    ("profiles",       Insert, ViewerOwn,    Refused),
    ("profiles",       Insert, AdminOther,   Refused),
    ("profiles",       Insert, ManagerOther, Refused),
    ("profiles",       Insert, ViewerOther,  Refused),
    ("profiles",       Insert, Service,      Allowed),
    ("profiles",       Insert, NoProfile,    Refused),
    ("profiles",       Update, Anon,         NoGrant),
    ("profiles",       Update, AdminOwn,     Allowed),
    ("profiles",       Update, ManagerOwn,   Hidden),
    ("profiles",       Update, ViewerOwn,    Hidden),
    ("profiles",       Update, AdminOther,   Hidden),
    ("profiles",       Update, ManagerOther, Hidden),
    ("profiles",       Update, ViewerOther,  Hidden),
    ("profiles",       Update, Service,      Allowed),
    ("profiles",       Update, NoProfile,    Hidden),
    ("profiles",       Delete, Anon,         NoGrant),
    ("profiles",       Delete, AdminOwn,     Allowed),
    ("profiles",       Delete, ManagerOwn,   Hidden),
    ("profiles",       Delete, ViewerOwn,    Hidden),
    ("profiles",       Delete, AdminOther,   Hidden),
    ("profiles",       Delete, ManagerOther, Hidden),
    ("profiles",       Delete, ViewerOther,  Hidden),
    ("profiles",       Delete, Service,      Allowed),
    ("profiles",       Delete, NoProfile,    Hidden),
    // agents
    ("agents",         Select, Anon,         NoGrant),
    ("agents",         Select, AdminOwn,     Allowed),
    ("agents",         Select, ManagerOwn,   Allowed),
    ("agents",         Select, ViewerOwn,    Allowed),
    ("agents",         Select, AdminOther,   Hidden),
    ("agents",         Select, ManagerOther, Hidden),
    ("agents",         Select, ViewerOther,  Hidden),
    ("agents",         Select, Service,      Allowed),
    ("agents",         Select, NoProfile,    Hidden),
    ("agents",         Insert, Anon,         NoGrant),
    ("agents",         Insert, AdminOwn,     Allowed),
    ("agents",         Insert, ManagerOwn,   Allowed),
    ("agents",         Insert, ViewerOwn,    Refused),
    ("agents",         Insert, AdminOther,   Refused),
    ("agents",         Insert, ManagerOther, Refused),
    ("agents",         Insert, ViewerOther,  Refused),
    ("agents",         Insert, Service,      Allowed),
    ("agents",         Insert, NoProfile,    Refused),
    ("agents",         Update, Anon,         NoGrant),
    ("agents",         Update, AdminOwn,     Allowed),
    ("agents",         Update, ManagerOwn,   Allowed),
    ("agents",         Update, ViewerOwn,    Hidden),
    ("agents",         Update, AdminOther,   Hidden),
    ("agents",         Update, ManagerOther, Hidden),
    ("agents",         Update, ViewerOther,  Hidden),
    ("agents",         Update, Service,      Allowed),
    ("agents",         Update, NoProfile,    Hidden),
    ("agents",         Delete, Anon,         NoGrant),
    ("agents",         Delete, AdminOwn,     Allowed),
    ("agents",         Delete, ManagerOwn,   Allowed),
    ("agents",         Delete, ViewerOwn,    Hidden),
    ("agents",         Delete, AdminOther,   Hidden),
    ("agents",         Delete, ManagerOther, Hidden),
    ("agents",         Delete, ViewerOther,  Hidden),
    ("agents",         Delete, Service,      Allowed),
    ("agents",         Delete, NoProfile,    Hidden),
    // customers
    ("customers",      Select, Anon,         NoGrant),
    ("customers",      Select, AdminOwn,     Allowed),
    ("customers",      Select, ManagerOwn,   Allowed),
    ("customers",      Select, ViewerOwn,    Allowed),
    ("customers",      Select, AdminOther,   Hidden),
    ("customers",      Select, ManagerOther, Hidden),
    ("customers",      Select, ViewerOther,  Hidden),
    ("customers",      Select, Service,      Allowed),
    ("customers",      Select, NoProfile,    Hidden),
    ("customers",      Insert, Anon,         NoGrant),
    ("customers",      Insert, AdminOwn,     Allowed),
    ("customers",      Insert, ManagerOwn,   Allowed),
    ("customers",      Insert, ViewerOwn,    Refused),
    ("customers",      Insert, AdminOther,   Refused),
    ("customers",      Insert, ManagerOther, Refused),
    ("customers",      Insert, ViewerOther,  Refused),
    ("customers",      Insert, Service,      Allowed),
    ("customers",      Insert, NoProfile,    Refused),
    ("customers",      Update, Anon,         NoGrant),
    ("customers",      Update, AdminOwn,     Allowed),
    ("customers",      Update, ManagerOwn,   Allowed),
    ("customers",      Update, ViewerOwn,    Hidden),
    ("customers",      Update, AdminOther,   Hidden),
    ("customers",      Update, ManagerOther, Hidden),
    ("customers",      Update, ViewerOther,  Hidden),
    ("customers",      Update, Service,      Allowed),
    ("customers",      Update, NoProfile,    Hidden),
    ("customers",      Delete, Anon,         NoGrant),
    ("customers",      Delete, AdminOwn,     Allowed),
    ("customers",      Delete, ManagerOwn,   Allowed),
    ("customers",      Delete, ViewerOwn,    Hidden),
    ("customers",      Delete, AdminOther,   Hidden),
    ("customers",      Delete, ManagerOther, Hidden),
    ("customers",      Delete, ViewerOther,  Hidden),
    ("customers",      Delete, Service,      Allowed),
    ("customers",      Delete, NoProfile,    Hidden),
    // calls
    ("calls",          Select, Anon,         NoGrant),
    ("calls",          Select, AdminOwn,     Allowed),
    ("calls",          Select, ManagerOwn,   Allowed),
    ("calls",          Select, ViewerOwn,    Allowed),
    ("calls",          Select, AdminOther,   Hidden),
    ("calls",          Select, ManagerOther, Hidden),
    ("calls",          Select, ViewerOther,  Hidden),
    ("calls",          Select, Service,      Allowed),
    ("calls",          Select, NoProfile,    Hidden),
    ("calls",          Insert, Anon,         NoGrant),
    ("calls",          Insert, AdminOwn,     NoGrant),
    ("calls",          Insert, ManagerOwn,   NoGrant),
    ("calls",          Insert, ViewerOwn,    NoGrant),
    ("calls",          Insert, AdminOther,   NoGrant),
    ("calls",          Insert, ManagerOther, NoGrant),
    ("calls",          Insert, ViewerOther,  NoGrant),
    ("calls",          Insert, Service,      Allowed),
    ("calls",          Insert, NoProfile,    NoGrant),
    ("calls",          Update, Anon,         NoGrant),
    ("calls",          Update, AdminOwn,     NoGrant),
    ("calls",          Update, ManagerOwn,   NoGrant),
    ("calls",          Update, ViewerOwn,    NoGrant),
    ("calls",          Update, AdminOther,   NoGrant),
    ("calls",          Update, ManagerOther, NoGrant),
    ("calls",          Update, ViewerOther,  NoGrant),
    ("calls",          Update, Service,      Allowed),
    ("calls",          Update, NoProfile,    NoGrant),
    ("calls",          Delete, Anon,         NoGrant),
    ("calls",          Delete, AdminOwn,     NoGrant),
    ("calls",          Delete, ManagerOwn,   NoGrant),
    ("calls",          Delete, ViewerOwn,    NoGrant),
    ("calls",          Delete, AdminOther,   NoGrant),
    ("calls",          Delete, ManagerOther, NoGrant),
    ("calls",          Delete, ViewerOther,  NoGrant),
    ("calls",          Delete, Service,      Allowed),
    ("calls",          Delete, NoProfile,    NoGrant),
    // knowledge_base
    ("knowledge_base", Select, Anon,         NoGrant),
    ("knowledge_base", Select, AdminOwn,     Allowed),
    ("knowledge_base", Select, ManagerOwn,   Allowed),
    ("knowledge_base", Select, ViewerOwn,    Allowed),
    ("knowledge_base", Select, AdminOther,   Hidden),
    ("knowledge_base", Select, ManagerOther, Hidden),
    ("knowledge_base", Select, ViewerOther,  Hidden),
    ("knowledge_base", Select, Service,      Allowed),
    ("knowledge_base", Select, NoProfile,    Hidden),
    ("knowledge_base", Insert, Anon,         NoGrant),
    ("knowledge_base", Insert, AdminOwn,     Allowed),
    ("knowledge_base", Insert, ManagerOwn,   Allowed),
    ("knowledge_base", Insert, ViewerOwn,    Refused),
    ("knowledge_base", Insert, AdminOther,   Refused),
    ("knowledge_base", Insert, ManagerOther, Refused),
    ("knowledge_base", Insert, ViewerOther,  Refused),
    ("knowledge_base", Insert, Service,      Allowed),
    ("knowledge_base", Insert, NoProfile,    Refused),
    ("knowledge_base", Update, Anon,         NoGrant),
    ("knowledge_base", Update, AdminOwn,     Allowed),
    ("knowledge_base", Update, ManagerOwn,   Allowed),
    ("knowledge_base", Update, ViewerOwn,    Hidden),
    ("knowledge_base", Update, AdminOther,   Hidden),
    ("knowledge_base", Update, ManagerOther, Hidden),
    ("knowledge_base", Update, ViewerOther,  Hidden),
    ("knowledge_base", Update, Service,      Allowed),
    ("knowledge_base", Update, NoProfile,    Hidden),
    ("knowledge_base", Delete, Anon,         NoGrant),
    ("knowledge_base", Delete, AdminOwn,     Allowed),
    ("knowledge_base", Delete, ManagerOwn,   Allowed),
    ("knowledge_base", Delete, ViewerOwn,    Hidden),
    ("knowledge_base", Delete, AdminOther,   Hidden),
    ("knowledge_base", Delete, ManagerOther, Hidden),
    ("knowledge_base", Delete, ViewerOther,  Hidden),
    ("knowledge_base", Delete, Service,      Allowed),
    ("knowledge_base", Delete, NoProfile,    Hidden),
    // agent_history
    ("agent_history",  Select, Anon,         NoGrant),
    ("agent_history",  Select, AdminOwn,     Allowed),
    ("agent_history",  Select, ManagerOwn,   Allowed),
    ("agent_history",  Select, ViewerOwn,    Allowed),
    ("agent_history",  Select, AdminOther,   Hidden),
    ("agent_history",  Select, ManagerOther, Hidden),
    ("agent_history",  Select, ViewerOther,  Hidden),
    ("agent_history",  Select, Service,      Allowed),
    ("agent_history",  Select, NoProfile,    Hidden),
    ("agent_history",  Insert, Anon,         NoGrant),
    ("agent_history",  Insert, AdminOwn,     NoGrant),
    ("agent_history",  Insert, ManagerOwn,   NoGrant),
    ("agent_history",  Insert, ViewerOwn,    NoGrant),
    ("agent_history",  Insert, AdminOther,   NoGrant),
    ("agent_history",  Insert, ManagerOther, NoGrant),
    ("agent_history",  Insert, ViewerOther,  NoGrant),
    ("agent_history",  Insert, Service,      NoGrant),
    ("agent_history",  Insert, NoProfile,    NoGrant),
    ("agent_history",  Update, Anon,         NoGrant),
    ("agent_history",  Update, AdminOwn,     NoGrant),
    ("agent_history",  Update, ManagerOwn,   NoGrant),
    ("agent_history",  Update, ViewerOwn,    NoGrant),
    ("agent_history",  Update, AdminOther,   NoGrant),
    ("agent_history",  Update, ManagerOther, NoGrant),
    ("agent_history",  Update, ViewerOther,  NoGrant),
    ("agent_history",  Update, Service,      NoGrant),
    ("agent_history",  Update, NoProfile,    NoGrant),
    ("agent_history",  Delete, Anon,         NoGrant),
    ("agent_history",  Delete, AdminOwn,     NoGrant),
    ("agent_history",  Delete, ManagerOwn,   NoGrant),
    ("agent_history",  Delete, ViewerOwn,    NoGrant),
    ("agent_history",  Delete, AdminOther,   NoGrant),
    ("agent_history",  Delete, ManagerOther, NoGrant),
    ("agent_history",  Delete, ViewerOther,  NoGrant),
    ("agent_history",  Delete, Service,      NoGrant),
    ("agent_history",  Delete, NoProfile,    NoGrant),
    // agent_versions
    ("agent_versions",      Select, Anon,         NoGrant),
    ("agent_versions",      Select, AdminOwn,     Allowed),
    ("agent_versions",      Select, ManagerOwn,   Allowed),
    ("agent_versions",      Select, ViewerOwn,    Allowed),
    ("agent_versions",      Select, AdminOther,   Hidden),
    ("agent_versions",      Select, ManagerOther, Hidden),
    ("agent_versions",      Select, ViewerOther,  Hidden),
    ("agent_versions",      Select, Service,      Allowed),
    ("agent_versions",      Select, NoProfile,    Hidden),
    ("agent_versions",      Insert, Anon,         NoGrant),
    ("agent_versions",      Insert, AdminOwn,     Allowed),
    ("agent_versions",      Insert, ManagerOwn,   Allowed),
    ("agent_versions",      Insert, ViewerOwn,    Refused),
    ("agent_versions",      Insert, AdminOther,   Refused),
    ("agent_versions",      Insert, ManagerOther, Refused),
    ("agent_versions",      Insert, ViewerOther,  Refused),
    ("agent_versions",      Insert, Service,      Allowed),
    ("agent_versions",      Insert, NoProfile,    Refused),
    ("agent_versions",      Update, Anon,         NoGrant),
    ("agent_versions",      Update, AdminOwn,     NoGrant),
    ("agent_versions",      Update, ManagerOwn,   NoGrant),
    ("agent_versions",      Update, ViewerOwn,    NoGrant),
    ("agent_versions",      Update, AdminOther,   NoGrant),
    ("agent_versions",      Update, ManagerOther, NoGrant),
    ("agent_versions",      Update, ViewerOther,  NoGrant),
    ("agent_versions",      Update, Service,      NoGrant),
    ("agent_versions",      Update, NoProfile,    NoGrant),
    ("agent_versions",      Delete, Anon,         NoGrant),
    ("agent_versions",      Delete, AdminOwn,     NoGrant),
    ("agent_versions",      Delete, ManagerOwn,   NoGrant),
    ("agent_versions",      Delete, ViewerOwn,    NoGrant),
    ("agent_versions",      Delete, AdminOther,   NoGrant),
    ("agent_versions",      Delete, ManagerOther, NoGrant),
    ("agent_versions",      Delete, ViewerOther,  NoGrant),
    ("agent_versions",      Delete, Service,      NoGrant),
    ("agent_versions",      Delete, NoProfile,    NoGrant),
    // caller_rules
    ("caller_rules",        Select, Anon,         NoGrant),
    ("caller_rules",        Select, AdminOwn,     Allowed),
    ("caller_rules",        Select, ManagerOwn,   Allowed),
    ("caller_rules",        Select, ViewerOwn,    Allowed),
    ("caller_rules",        Select, AdminOther,   Hidden),
    ("caller_rules",        Select, ManagerOther, Hidden),
    ("caller_rules",        Select, ViewerOther,  Hidden),
    ("caller_rules",        Select, Service,      Allowed),
    ("caller_rules",        Select, NoProfile,    Hidden),
    ("caller_rules",        Insert, Anon,         NoGrant),
    ("caller_rules",        Insert, AdminOwn,     Allowed),
    ("caller_rules",        Insert, ManagerOwn,   Allowed),
    ("caller_rules",        Insert, ViewerOwn,    Refused),
    ("caller_rules",        Insert, AdminOther,   Refused),
    ("caller_rules",        Insert, ManagerOther, Refused),
    ("caller_rules",        Insert, ViewerOther,  Refused),
    ("caller_rules",        Insert, Service,      Allowed),
    ("caller_rules",        Insert, NoProfile,    Refused),
    ("caller_rules",        Update, Anon,         NoGrant),
    ("caller_rules",        Update, AdminOwn,     Allowed),
    ("caller_rules",        Update, ManagerOwn,   Allowed),
    ("caller_rules",        Update, ViewerOwn,    Hidden),
    ("caller_rules",        Update, AdminOther,   Hidden),
    ("caller_rules",        Update, ManagerOther, Hidden),
    ("caller_rules",        Update, ViewerOther,  Hidden),
    ("caller_rules",        Update, Service,      Allowed),
    ("caller_rules",        Update, NoProfile,    Hidden),
    ("caller_rules",        Delete, Anon,         NoGrant),
    ("caller_rules",        Delete, AdminOwn,     Allowed),
    ("caller_rules",        Delete, ManagerOwn,   Allowed),
    ("caller_rules",        Delete, ViewerOwn,    Hidden),
    ("caller_rules",        Delete, AdminOther,   Hidden),
    ("caller_rules",        Delete, ManagerOther, Hidden),
    ("caller_rules",        Delete, ViewerOther,  Hidden),
    ("caller_rules",        Delete, Service,      Allowed),
    ("caller_rules",        Delete, NoProfile,    Hidden),
    // caller_rule_history
    ("caller_rule_history", Select, Anon,         NoGrant),
    ("caller_rule_history", Select, AdminOwn,     Allowed),
    ("caller_rule_history", Select, ManagerOwn,   Allowed),
    ("caller_rule_history", Select, ViewerOwn,    Allowed),
    ("caller_rule_history", Select, AdminOther,   Hidden),
    ("caller_rule_history", Select, ManagerOther, Hidden),
    ("caller_rule_history", Select, ViewerOther,  Hidden),
    ("caller_rule_history", Select, Service,      Allowed),
    ("caller_rule_history", Select, NoProfile,    Hidden),
    ("caller_rule_history", Insert, Anon,         NoGrant),
    ("caller_rule_history", Insert, AdminOwn,     NoGrant),
    ("caller_rule_history", Insert, ManagerOwn,   NoGrant),
    ("caller_rule_history", Insert, ViewerOwn,    NoGrant),
    ("caller_rule_history", Insert, AdminOther,   NoGrant),
    ("caller_rule_history", Insert, ManagerOther, NoGrant),
    ("caller_rule_history", Insert, ViewerOther,  NoGrant),
    ("caller_rule_history", Insert, Service,      NoGrant),
    ("caller_rule_history", Insert, NoProfile,    NoGrant),
    ("caller_rule_history", Update, Anon,         NoGrant),
    ("caller_rule_history", Update, AdminOwn,     NoGrant),
    ("caller_rule_history", Update, ManagerOwn,   NoGrant),
    ("caller_rule_history", Update, ViewerOwn,    NoGrant),
    ("caller_rule_history", Update, AdminOther,   NoGrant),
    ("caller_rule_history", Update, ManagerOther, NoGrant),
    ("caller_rule_history", Update, ViewerOther,  NoGrant),
    ("caller_rule_history", Update, Service,      NoGrant),
    ("caller_rule_history", Update, NoProfile,    NoGrant),
    ("caller_rule_history", Delete, Anon,         NoGrant),
    ("caller_rule_history", Delete, AdminOwn,     NoGrant),
    ("caller_rule_history", Delete, ManagerOwn,   NoGrant),
    ("caller_rule_history", Delete, ViewerOwn,    NoGrant),
    ("caller_rule_history", Delete, AdminOther,   NoGrant),
    ("caller_rule_history", Delete, ManagerOther, NoGrant),
    ("caller_rule_history", Delete, ViewerOther,  NoGrant),
    ("caller_rule_history", Delete, Service,      NoGrant),
    ("caller_rule_history", Delete, NoProfile,    NoGrant),
];

/// How to reach one row of a table. Placeholders: `{org}` the target org,
/// `{id}` the target row (found by `target` as the superuser before the
/// cases run), `{agent}` the target org's seeded agent, `{spare}` a user
/// with no profile yet.
#[derive(Clone, Copy)]
struct TableSql {
    name: &'static str,
    /// Returns the id of the row the select/update/delete cases aim at.
    target: &'static str,
    insert: &'static str,
    /// An update that keeps the row valid (`col = col`).
    update_set: &'static str,
}

const TABLES: &[TableSql] = &[
    TableSql {
        name: "organizations",
        target: "select id::text from public.organizations where id = '{org}'",
        insert: "insert into public.organizations (name, slug) values ('Matrix Org', 'matrix-org')",
        update_set: "name = name",
    },
    TableSql {
        name: "profiles",
        // Not the caller's own profile: nobody may change their own.
        target: "select id::text from public.profiles where org_id = '{org}' and full_name = 'Matrix Staff'",
        insert: "insert into public.profiles (id, org_id, role) values ('{spare}', '{org}', 'viewer')",
        update_set: "full_name = full_name",
    },
    TableSql {
        name: "agents",
        target: "select id::text from public.agents where org_id = '{org}'",
        insert: "insert into public.agents (org_id, name, phone_number, voice_id) \
                 values ('{org}', 'Matrix', '+15550009999', 'alloy')",
        update_set: "name = name",
    },
    TableSql {
        name: "customers",
        target: "select id::text from public.customers where org_id = '{org}'",
        insert: "insert into public.customers (org_id, phone) values ('{org}', '+15550009999')",
        update_set: "name = name",
    },
    TableSql {
        name: "calls",
        target: "select id::text from public.calls where org_id = '{org}'",
        insert: "insert into public.calls (org_id, called_number) values ('{org}', '+18005550100')",
        update_set: "status = status",
    },
    TableSql {
        name: "knowledge_base",
        target: "select id::text from public.knowledge_base where org_id = '{org}'",
        insert: "insert into public.knowledge_base (org_id, title, content) values ('{org}', 't', 'c')",
        update_set: "title = title",
    },
    TableSql {
        name: "agent_history",
        target: "select id::text from public.agent_history where org_id = '{org}' order by id limit 1",
        insert: "insert into public.agent_history (org_id, agent_id, actor_role, operation, changes) \
                 values ('{org}', '{agent}', 'authenticated', 'update', '{}')",
        update_set: "actor_role = actor_role",
    },
    TableSql {
        name: "agent_versions",
        target: "select id::text from public.agent_versions where org_id = '{org}' order by version limit 1",
        // The trigger numbers the version and copies the agent's fields.
        insert: "insert into public.agent_versions (agent_id, org_id, name, voice_id, llm_config) \
                 values ('{agent}', '{org}', '', '', '{}')",
        update_set: "name = name",
    },
    TableSql {
        name: "caller_rules",
        target: "select id::text from public.caller_rules where org_id = '{org}' order by id limit 1",
        insert: "insert into public.caller_rules (org_id, match, pattern, action) \
                 values ('{org}', 'prefix', '+1900', 'block')",
        update_set: "label = label",
    },
    TableSql {
        name: "caller_rule_history",
        target: "select id::text from public.caller_rule_history where org_id = '{org}' order by id limit 1",
        insert: "insert into public.caller_rule_history (org_id, rule_id, actor_role, operation, changes) \
                 values ('{org}', '{agent}', 'authenticated', 'update', '{}')",
        update_set: "actor_role = actor_role",
    },
];

const ACME_STAFF: &str = "a0000000-0000-4000-8000-0000000000f1";
const BLUEBIRD_STAFF: &str = "b0000000-0000-4000-8000-0000000000f1";
const SPARE_USER: &str = "c0000000-0000-4000-8000-0000000000f1";
const NO_PROFILE_USER: &str = "c0000000-0000-4000-8000-0000000000f2";
/// Each org's second agent (fixtures): versions and caller rules name it.
const ACME_LINE: &str = "aa000000-0000-4000-8000-0000000000f1";
const BLUEBIRD_LINE: &str = "bb000000-0000-4000-8000-0000000000f1";

/// Rows the seed lacks: a member who is nobody's caller (the profile
/// target), a call and a knowledge-base entry per org, and two users without
/// a profile; per org, a second agent with a published version and a caller
/// rule routing to it (which leaves a row in caller_rule_history).
async fn add_fixtures(db: &TestDb) {
    db.exec(&format!(
        "insert into auth.users (id) values ('{ACME_STAFF}'), ('{BLUEBIRD_STAFF}'), ('{SPARE_USER}'), ('{NO_PROFILE_USER}');
         insert into public.profiles (id, org_id, role, full_name) values
           ('{ACME_STAFF}', '{ACME}', 'viewer', 'Matrix Staff'),
           ('{BLUEBIRD_STAFF}', '{BLUEBIRD}', 'viewer', 'Matrix Staff');
         insert into public.calls (org_id, agent_id, called_number) values
           ('{ACME}', '{ACME_AGENT}', '{ACME_NUMBER}'), ('{BLUEBIRD}', '{BLUEBIRD_AGENT}', '{BLUEBIRD_NUMBER}');
         insert into public.knowledge_base (org_id, agent_id, title, content) values
           ('{ACME}', '{ACME_AGENT}', 'Hours', '9 to 5'), ('{BLUEBIRD}', '{BLUEBIRD_AGENT}', 'Hours', '8 to 4');
         insert into public.agents (id, org_id, name, phone_number, voice_id) values
           ('{ACME_LINE}', '{ACME}', 'Matrix Line', '+15550001001', 'alloy'),
           ('{BLUEBIRD_LINE}', '{BLUEBIRD}', 'Matrix Line', '+15550002002', 'verse');
         insert into public.agent_versions (agent_id, org_id, name, voice_id, llm_config) values
           ('{ACME_LINE}', '{ACME}', '', '', '{{}}'), ('{BLUEBIRD_LINE}', '{BLUEBIRD}', '', '', '{{}}');
         insert into public.caller_rules (org_id, match, pattern, action, agent_id) values
           ('{ACME}', 'exact', '+15550003003', 'route', '{ACME_LINE}'),
           ('{BLUEBIRD}', 'exact', '+15550003003', 'route', '{BLUEBIRD_LINE}');"
    ))
    .await;
}

/// The schemas PostgREST serves, from the Supabase project's `[api] schemas`.
fn exposed_schemas() -> Vec<String> {
    let config = std::fs::read_to_string("supabase/config.toml")
        .unwrap_or_else(|e| panic!("supabase/config.toml: {e}"));
    let line = config
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("schemas"))
        .unwrap_or_else(|| panic!("no `schemas` in supabase/config.toml"));
    let list = line.split_once('=').map(|(_, v)| v).unwrap_or_default();
    let schemas: Vec<String> = list
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    assert!(!schemas.is_empty(), "no exposed schema in {line:?}");
    schemas
}

/// What one case runs as, and which org's row it aims at.
struct Case {
    claims: serde_json::Value,
    role: &'static str,
    target_org: &'static str,
}

/// `home` is the org the case is run from (Acme or Bluebird).
fn case_for(caller: Caller, home: &'static str) -> Case {
    let other = if home == ACME { BLUEBIRD } else { ACME };
    let user = |who_in_acme: Who, who_in_bluebird: Who| {
        let who = if home == ACME {
            who_in_acme
        } else {
            who_in_bluebird
        };
        who.user_id().map(|id| id.to_string()).unwrap_or_default()
    };
    let tenant = |sub: String, target_org| Case {
        claims: serde_json::json!({"role": "authenticated", "aud": "authenticated", "sub": sub}),
        role: "authenticated",
        target_org,
    };
    match caller {
        Anon => Case {
            claims: serde_json::json!({"role": "anon"}),
            role: "anon",
            target_org: home,
        },
        Service => Case {
            claims: serde_json::json!({"role": "service_role"}),
            role: "service_role",
            target_org: home,
        },
        NoProfile => tenant(NO_PROFILE_USER.into(), home),
        AdminOwn => tenant(user(Who::AcmeAdmin, Who::BluebirdAdmin), home),
        ManagerOwn => tenant(user(Who::AcmeManager, Who::BluebirdManager), home),
        ViewerOwn => tenant(user(Who::AcmeViewer, Who::BluebirdViewer), home),
        AdminOther => tenant(user(Who::AcmeAdmin, Who::BluebirdAdmin), other),
        ManagerOther => tenant(user(Who::AcmeManager, Who::BluebirdManager), other),
        ViewerOther => tenant(user(Who::AcmeViewer, Who::BluebirdViewer), other),
    }
}

/// Begins a transaction the way the service does (`PgStore::begin_as`).
async fn begin_as(db: &TestDb, case: &Case) -> Transaction<'static, Postgres> {
    let claims = switchboard::store::sql_literal(&case.claims.to_string())
        .unwrap_or_else(|| panic!("claims literal"));
    db.pool
        .begin_with(format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE; \
             SELECT set_config('request.jwt.claims', {claims}, true), \
                    set_config('role', '{role}', true)",
            role = case.role
        ))
        .await
        .unwrap_or_else(|e| panic!("begin: {e}"))
}

fn classify(result: Result<u64, sqlx::Error>) -> Outcome {
    match result {
        Result::Ok(0) => Hidden,
        Result::Ok(_) => Allowed,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {
            if e.message().contains("row-level security") {
                Refused
            } else if e.message().starts_with("permission denied for") {
                NoGrant
            } else {
                Outcome::Other(e.message().to_owned())
            }
        }
        Err(e) => Outcome::Other(e.to_string()),
    }
}

async fn run_case(
    db: &TestDb,
    table: &TableSql,
    op: Op,
    case: &Case,
    vars: &[(&str, &str)],
) -> Outcome {
    let fill = |sql: &str| {
        vars.iter().fold(sql.to_owned(), |sql, (k, v)| {
            sql.replace(&format!("{{{k}}}"), v)
        })
    };
    let name = table.name;
    let sql = match op {
        Select => fill(&format!("select 1 from public.{name} where id = '{{id}}'")),
        Insert => fill(table.insert),
        Update => fill(&format!(
            "update public.{name} set {set} where id = '{{id}}'",
            set = table.update_set
        )),
        Delete => fill(&format!("delete from public.{name} where id = '{{id}}'")),
    };
    run_sql(db, case, &sql, op == Select).await
}

/// Runs one statement under the case's claims, rolls it back, and says what
/// happened.
async fn run_sql(db: &TestDb, case: &Case, sql: &str, returns_rows: bool) -> Outcome {
    let mut tx = begin_as(db, case).await;
    let result = if returns_rows {
        sqlx::query(sql)
            .fetch_all(&mut *tx)
            .await
            .map(|rows| rows.len() as u64)
    } else {
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .map(|done| done.rows_affected())
    };
    let _ = tx.rollback().await;
    classify(result)
}

#[derive(Debug, Default)]
struct Report {
    /// Tables found in the exposed schemas.
    tables: usize,
    /// Matrix rows checked.
    rows: usize,
    /// Statements run (each row from both orgs).
    cases: usize,
    failures: Vec<String>,
}

/// Checks the database against `matrix`: the catalog first (every exposed
/// table is in the matrix and has RLS, with a policy for every operation a
/// tenant is allowed), then every row as real SQL.
async fn check_policies(db: &TestDb, tables: &[TableSql], matrix: &[Expect]) -> Report {
    let mut report = Report::default();
    let schemas = exposed_schemas();

    // ---- the catalog
    let relations: Vec<(String, String, String, bool)> = sqlx::query_as(
        "select n.nspname::text, c.relname::text, c.relkind::text, c.relrowsecurity \
         from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace \
         where n.nspname = any($1) and c.relkind in ('r', 'p', 'v', 'm', 'f') \
           and not exists (select 1 from pg_catalog.pg_depend d \
                           where d.objid = c.oid and d.deptype = 'e') \
         order by 1, 2",
    )
    .bind(&schemas)
    .fetch_all(&db.pool)
    .await
    .unwrap_or_else(|e| panic!("catalog: {e}"));
    let policies: Vec<(String, String, String, Vec<String>, String)> = sqlx::query_as(
        "select schemaname::text, tablename::text, cmd, roles::text[], permissive \
         from pg_catalog.pg_policies where schemaname = any($1)",
    )
    .bind(&schemas)
    .fetch_all(&db.pool)
    .await
    .unwrap_or_else(|e| panic!("pg_policies: {e}"));

    // Privileges RLS does not govern: TRUNCATE empties every tenant at once,
    // TRIGGER and REFERENCES reach other tenants' rows, setval() on a
    // sequence breaks every later insert.
    let ungoverned: Vec<(String, String, String, String)> = sqlx::query_as(
        "select n.nspname::text, c.relname::text, r.rolname::text, p.priv \
         from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace \
         cross join (values ('anon'), ('authenticated')) as r(rolname) \
         cross join unnest(array['TRUNCATE', 'REFERENCES', 'TRIGGER', 'UPDATE']) as p(priv) \
         where n.nspname = any($1) \
           and case when c.relkind in ('r', 'p') then p.priv <> 'UPDATE' \
                         and pg_catalog.has_table_privilege(r.rolname, c.oid, p.priv) \
                    when c.relkind = 'S' then p.priv = 'UPDATE' \
                         and pg_catalog.has_sequence_privilege(r.rolname, c.oid, p.priv) \
                    else false end \
         order by 1, 2, 3, 4",
    )
    .bind(&schemas)
    .fetch_all(&db.pool)
    .await
    .unwrap_or_else(|e| panic!("privileges: {e}"));
    for (schema, name, role, privilege) in ungoverned {
        report.failures.push(format!(
            "{role} holds {privilege} on {schema}.{name}, which RLS does not govern"
        ));
    }

    let in_matrix: BTreeSet<&str> = matrix.iter().map(|(t, ..)| *t).collect();
    let mut found = BTreeSet::new();
    for (schema, name, kind, rls) in &relations {
        report.tables += 1;
        let qualified = format!("{schema}.{name}");
        if kind != "r" && kind != "p" {
            report.failures.push(format!(
                "{qualified} (relkind {kind}) is exposed, and RLS does not protect it: move it out of {schemas:?}"
            ));
            continue;
        }
        if schema != "public" || !in_matrix.contains(name.as_str()) {
            report.failures.push(format!(
                "{qualified} is exposed but has no rows in the matrix"
            ));
        }
        if !rls {
            report
                .failures
                .push(format!("RLS is not enabled on {qualified}"));
        }
        found.insert(name.clone());
        for op in Op::ALL {
            let for_op: Vec<_> = policies
                .iter()
                .filter(|(s, t, cmd, _, _)| {
                    s == schema && t == name && (cmd == op.cmd() || cmd == "ALL")
                })
                .collect();
            let tenant_may = matrix.iter().any(|(t, o, c, outcome)| {
                *t == name.as_str() && *o == op && c.is_tenant() && *outcome == Allowed
            });
            let covers_tenants = for_op.iter().any(|(_, _, _, roles, permissive)| {
                permissive == "PERMISSIVE"
                    && roles.iter().any(|r| r == "authenticated" || r == "public")
            });
            if *rls && tenant_may && !covers_tenants {
                report.failures.push(format!(
                    "no {} policy for authenticated on {qualified}, which the matrix allows",
                    op.cmd()
                ));
            }
            // No tenant holds the privilege: a policy for it is dead today
            // and would decide alone the day a grant comes back.
            let granted_to_no_tenant = Caller::ALL.iter().filter(|c| c.is_tenant()).all(|c| {
                matrix.iter().any(|(t, o, c2, outcome)| {
                    *t == name.as_str() && *o == op && c2 == c && *outcome == NoGrant
                })
            });
            if *rls && granted_to_no_tenant && covers_tenants {
                report.failures.push(format!(
                    "{qualified}: {} policy for authenticated, where the matrix grants no tenant {}",
                    op.cmd(),
                    op.cmd()
                ));
            }
            let permissive = for_op
                .iter()
                .filter(|(_, _, _, _, p)| p == "PERMISSIVE")
                .count();
            if permissive > 1 {
                report.failures.push(format!(
                    "{permissive} permissive {} policies on {qualified}: one per operation",
                    op.cmd()
                ));
            }
        }
    }

    // ---- the matrix itself: complete, no duplicates, no stale tables
    let mut rows: BTreeMap<(&str, Op, Caller), &Outcome> = BTreeMap::new();
    for (table, op, caller, outcome) in matrix {
        if rows.insert((*table, *op, *caller), outcome).is_some() {
            report
                .failures
                .push(format!("matrix has two rows for {table} {op:?} {caller:?}"));
        }
    }
    for table in &in_matrix {
        if !found.contains(*table) {
            report.failures.push(format!(
                "matrix names {table}, which is not an exposed table"
            ));
        }
        for op in Op::ALL {
            for caller in Caller::ALL {
                if !rows.contains_key(&(*table, op, caller)) {
                    report
                        .failures
                        .push(format!("matrix has no row for {table} {op:?} {caller:?}"));
                }
            }
        }
    }

    // ---- every row, as real SQL, from both orgs
    for ((table, op, caller), expected) in &rows {
        if !found.contains(*table) {
            continue;
        }
        let Some(sql) = tables.iter().find(|t| t.name == *table) else {
            report
                .failures
                .push(format!("no statements to exercise {table} with"));
            continue;
        };
        report.rows += 1;
        for home in [ACME, BLUEBIRD] {
            let case = case_for(*caller, home);
            let agent = if case.target_org == ACME {
                ACME_AGENT
            } else {
                BLUEBIRD_AGENT
            };
            let target: Option<String> =
                sqlx::query_scalar(&sql.target.replace("{org}", case.target_org))
                    .fetch_optional(&db.pool)
                    .await
                    .unwrap_or_else(|e| panic!("target of {table}: {e}"));
            let Some(target) = target else {
                report.failures.push(format!(
                    "{table} has no row in {} to aim at",
                    case.target_org
                ));
                continue;
            };
            let vars = [
                ("org", case.target_org),
                ("id", target.as_str()),
                ("agent", agent),
                ("spare", SPARE_USER),
            ];
            let actual = run_case(db, sql, *op, &case, &vars).await;
            report.cases += 1;
            if actual != **expected {
                let from = if home == ACME { "Acme" } else { "Bluebird" };
                report.failures.push(format!(
                    "{table} {op:?} as {caller:?} (from {from}): expected {expected:?}, got {actual:?}"
                ));
            }
        }
    }
    report
}

/// A database as Supabase makes one: the API roles exist before the
/// migrations run, and tables, sequences and functions created in `public`
/// are granted to anon, authenticated and service_role by default.
async fn supabase_like_db() -> TestDb {
    let db = TestDb::empty().await;
    db.exec(
        "do $$ begin
           if not exists (select 1 from pg_roles where rolname = 'anon') then create role anon nologin noinherit; end if;
           if not exists (select 1 from pg_roles where rolname = 'authenticated') then create role authenticated nologin noinherit; end if;
           if not exists (select 1 from pg_roles where rolname = 'service_role') then create role service_role nologin noinherit bypassrls; end if;
         end $$;
         alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
         alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
         alter default privileges in schema public grant all on functions to anon, authenticated, service_role;",
    )
    .await;
    switchboard::migrate::run(&db.direct_url)
        .await
        .unwrap_or_else(|e| panic!("migrate: {e}"));
    switchboard::migrate::seed(&db.direct_url)
        .await
        .unwrap_or_else(|e| panic!("seed: {e}"));
    db
}

/// Runs the whole matrix on `db` and fails with every mismatch at once.
async fn assert_matrix_holds(db: &TestDb, flavour: &str) {
    add_fixtures(db).await;
    let report = check_policies(db, TABLES, MATRIX).await;
    println!(
        "policy matrix ({flavour}): {} exposed tables, {} rows (table × operation × caller), \
         {} statements run under claims",
        report.tables, report.rows, report.cases
    );
    assert!(
        report.failures.is_empty(),
        "{} failure(s):\n{}",
        report.failures.len(),
        report.failures.join("\n")
    );
    assert_eq!(
        report.rows,
        TABLES.len() * Op::ALL.len() * Caller::ALL.len()
    );
    assert_eq!(report.cases, 2 * report.rows, "each row from both orgs");
}

#[tokio::test]
async fn every_exposed_table_enforces_the_policy_matrix() {
    assert_matrix_holds(&TestDb::seeded().await, "plain Postgres").await;
}

/// The same matrix where Supabase's default privileges grant everything to
/// the API roles: the explicit grants and revokes of the migrations must
/// leave exactly the same outcomes, and no privilege RLS does not govern.
#[tokio::test]
async fn the_matrix_holds_under_supabase_default_privileges() {
    assert_matrix_holds(&supabase_like_db().await, "Supabase default privileges").await;
}

/// The checker itself: a table without RLS and one missing a policy are
/// reported, and so is a table the matrix does not know, and a policy left
/// for a write no tenant is granted.
#[tokio::test]
async fn the_checker_reports_unprotected_tables() {
    let db = TestDb::seeded().await;
    add_fixtures(&db).await;
    db.exec(&format!(
        "create table public.rogue_no_rls (id uuid primary key default gen_random_uuid(), org_id uuid not null, note text);
         create table public.rogue_no_update (id uuid primary key default gen_random_uuid(), org_id uuid not null, note text);
         grant select, insert, update, delete on public.rogue_no_rls, public.rogue_no_update to authenticated, service_role;
         alter table public.rogue_no_update enable row level security;
         create policy rogue_select on public.rogue_no_update for select to authenticated
           using (org_id = (select switchboard_private.auth_org_id()));
         create policy rogue_insert on public.rogue_no_update for insert to authenticated
           with check (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])));
         create policy rogue_delete on public.rogue_no_update for delete to authenticated
           using (org_id = (select switchboard_private.auth_org_id(array['admin', 'manager'])));
         grant truncate on public.rogue_no_update to authenticated;
         create policy rogue_calls_insert on public.calls for insert to authenticated
           with check (org_id = (select switchboard_private.auth_org_id(array['admin'])));
         create sequence public.rogue_seq;
         grant update on sequence public.rogue_seq to anon;
         insert into public.rogue_no_rls (org_id) values ('{ACME}'), ('{BLUEBIRD}');
         insert into public.rogue_no_update (org_id) values ('{ACME}'), ('{BLUEBIRD}');"
    ))
    .await;

    // Not in the matrix at all.
    let report = check_policies(&db, TABLES, MATRIX).await;
    for table in ["rogue_no_rls", "rogue_no_update"] {
        let expected = format!("public.{table} is exposed but has no rows in the matrix");
        assert!(
            report.failures.contains(&expected),
            "{expected:?} not in {:#?}",
            report.failures
        );
    }
    assert!(report
        .failures
        .contains(&"RLS is not enabled on public.rogue_no_rls".to_owned()));

    // In the matrix, expected to behave like agents: the checker names the
    // missing RLS, the missing policy, and the cases that come out wrong.
    let mut tables = TABLES.to_vec();
    let mut matrix = MATRIX.to_vec();
    for name in ["rogue_no_rls", "rogue_no_update"] {
        tables.push(TableSql {
            name,
            target: if name == "rogue_no_rls" {
                "select id::text from public.rogue_no_rls where org_id = '{org}'"
            } else {
                "select id::text from public.rogue_no_update where org_id = '{org}'"
            },
            insert: if name == "rogue_no_rls" {
                "insert into public.rogue_no_rls (org_id) values ('{org}')"
            } else {
                "insert into public.rogue_no_update (org_id) values ('{org}')"
            },
            update_set: "note = note",
        });
        matrix.extend(
            MATRIX
                .iter()
                .filter(|(t, ..)| *t == "agents")
                .map(|(_, op, caller, outcome)| (name, *op, *caller, outcome.clone())),
        );
    }
    let report = check_policies(&db, &tables, &matrix).await;
    println!("checker on rogue tables: {:#?}", report.failures);
    for expected in [
        "RLS is not enabled on public.rogue_no_rls",
        "no UPDATE policy for authenticated on public.rogue_no_update, which the matrix allows",
        "authenticated holds TRUNCATE on public.rogue_no_update, which RLS does not govern",
        "anon holds UPDATE on public.rogue_seq, which RLS does not govern",
        // A policy left for writes no tenant is granted (calls are written
        // by service_role only).
        "public.calls: INSERT policy for authenticated, where the matrix grants no tenant INSERT",
        // No RLS: another org's row is visible and writable.
        "rogue_no_rls Select as ViewerOther (from Acme): expected Hidden, got Allowed",
        "rogue_no_rls Delete as ViewerOwn (from Bluebird): expected Hidden, got Allowed",
        // RLS without an update policy: even an admin's update does nothing.
        "rogue_no_update Update as AdminOwn (from Acme): expected Allowed, got Hidden",
    ] {
        assert!(
            report.failures.iter().any(|f| f == expected),
            "{expected:?} not in {:#?}",
            report.failures
        );
    }
    // And nothing about the tables that are fine (the stray calls policy
    // aside).
    assert!(
        report
            .failures
            .iter()
            .all(|f| f.contains("rogue_") || f.starts_with("public.calls: INSERT policy")),
        "{:#?}",
        report.failures
    );
}

/// What the four operations of the matrix do not show: an update that would
/// move a row into another org is refused by the policies' WITH CHECK, even
/// for an admin of the row's org (on `calls`, which no tenant may update, by
/// the missing grant), and nobody changes their own profile.
#[tokio::test]
async fn rows_stay_in_their_org_and_nobody_edits_their_own_profile() {
    let db = TestDb::seeded().await;
    add_fixtures(&db).await;
    let moves = ["agents", "customers", "calls", "knowledge_base", "profiles"];
    let mut checked = 0;
    for home in [ACME, BLUEBIRD] {
        let other = if home == ACME { BLUEBIRD } else { ACME };
        for table in moves {
            // The shared caller's phone is taken in the other org; a call or
            // knowledge entry moves without the agent it names, which stays.
            let also = match table {
                "customers" => ", phone = '+15550007777'",
                "calls" => ", agent_id = null, customer_id = null",
                "knowledge_base" => ", agent_id = null",
                _ => "",
            };
            // The highest id: for profiles, the staff member, not a caller.
            let sql = format!(
                "update public.{table} set org_id = '{other}'{also} where id = \
                 (select id from public.{table} where org_id = '{home}' order by id desc limit 1)"
            );
            for (caller, expected) in [
                (AdminOwn, Refused),
                (
                    ManagerOwn,
                    if table == "profiles" { Hidden } else { Refused },
                ),
                (ViewerOwn, Hidden),
                (Service, Allowed),
            ] {
                // No UPDATE grant at all (tenants on calls): refused before
                // any policy is consulted.
                let no_grant = MATRIX.iter().any(|(t, o, c, outcome)| {
                    *t == table && *o == Update && *c == caller && *outcome == NoGrant
                });
                let expected = if no_grant { NoGrant } else { expected };
                let case = case_for(caller, home);
                let actual = run_sql(&db, &case, &sql, false).await;
                assert_eq!(actual, expected, "{table} moved by {caller:?} from {home}");
                checked += 1;
            }
        }
        // Their own profile: role and org are not theirs to change.
        for caller in [AdminOwn, ManagerOwn, ViewerOwn] {
            let case = case_for(caller, home);
            let sub = case.claims["sub"].as_str().unwrap_or_default().to_owned();
            for sql in [
                format!("update public.profiles set role = 'admin' where id = '{sub}'"),
                format!("delete from public.profiles where id = '{sub}'"),
            ] {
                assert_eq!(
                    run_sql(&db, &case, &sql, false).await,
                    Hidden,
                    "{sql} as {caller:?}"
                );
                checked += 1;
            }
        }
    }
    println!("WITH CHECK and own-profile cases: {checked}");
    assert_eq!(checked, 2 * (5 * 4 + 3 * 2));
}

/// Supabase's database linter, the rules that concern RLS: functions with
/// a fixed `search_path` (ours: `pg_temp` last, every one); no SECURITY DEFINER function the API roles can
/// call in an exposed schema; `auth.*()` and the membership helper in
/// policies wrapped in `(select …)` (evaluated once per statement, not per
/// row); no policy reading user-editable `user_metadata`.
async fn lint(db: &TestDb) -> Vec<String> {
    let schemas = exposed_schemas();
    let mut findings = Vec::new();
    let functions: Vec<(String, String, bool, bool, bool, bool)> = sqlx::query_as(
        "select n.nspname::text, p.oid::regprocedure::text, \
                coalesce(exists (select 1 from unnest(p.proconfig) c where c like 'search_path=%'), false), \
                coalesce(exists (select 1 from unnest(p.proconfig) c where c like 'search_path=%pg\\_temp'), false), \
                p.prosecdef, \
                pg_catalog.has_function_privilege('anon', p.oid, 'execute') \
                  or pg_catalog.has_function_privilege('authenticated', p.oid, 'execute') \
         from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace \
         where (n.nspname = any($1) or n.nspname = 'switchboard_private') \
           and not exists (select 1 from pg_catalog.pg_depend d where d.objid = p.oid and d.deptype = 'e') \
         order by 1, 2",
    )
    .bind(&schemas)
    .fetch_all(&db.pool)
    .await
    .unwrap_or_else(|e| panic!("pg_proc: {e}"));
    for (schema, function, fixed_path, temp_last, definer, callable) in &functions {
        if !fixed_path {
            findings.push(format!("{function} has no fixed search_path"));
        }
        // With pg_temp unnamed (`search_path = ''` included) the session's
        // temporary schema is searched first for types and tables: a
        // caller's `pg_temp.uuid` would run its code as the owner in a
        // SECURITY DEFINER function, and in any function a SECURITY
        // DEFINER trigger calls (`agent_row_changes` from the audit
        // trigger, found by the attack review of issue 16), or, through a
        // pooler, inside another client's transaction. Every function.
        if !temp_last {
            findings.push(format!("{function} does not search pg_temp last"));
        }
        if *definer && *callable && schemas.contains(schema) {
            findings.push(format!(
                "{function} is SECURITY DEFINER, exposed and callable by anon/authenticated"
            ));
        }
    }
    let policies: Vec<(String, String, String)> = sqlx::query_as(
        "select tablename::text, policyname::text, coalesce(qual, '') || ' ' || coalesce(with_check, '') \
         from pg_catalog.pg_policies where schemaname = any($1) order by 1, 2",
    )
    .bind(&schemas)
    .fetch_all(&db.pool)
    .await
    .unwrap_or_else(|e| panic!("pg_policies: {e}"));
    for (table, policy, expression) in &policies {
        for call in [
            "auth.uid()",
            "auth.jwt()",
            "auth.role()",
            "switchboard_private.auth_org_id(",
        ] {
            for (at, _) in expression.match_indices(call) {
                if !expression[..at].ends_with("SELECT ") {
                    findings.push(format!(
                        "policy {policy} on {table} calls {call} per row: wrap it in (select …)"
                    ));
                }
            }
        }
        if expression.contains("user_metadata") {
            findings.push(format!(
                "policy {policy} on {table} reads user_metadata, which users edit"
            ));
        }
    }
    findings
}

#[tokio::test]
async fn the_catalog_passes_the_linter_rules_and_the_lint_can_fail() {
    let db = supabase_like_db().await;
    let findings = lint(&db).await;
    assert!(findings.is_empty(), "{findings:#?}");

    db.exec(
        "create function public.rogue_lookup() returns uuid language sql security definer
           as $$ select auth.uid() $$;
         create table public.rogue_notes (id uuid primary key, owner uuid);
         alter table public.rogue_notes enable row level security;
         create policy rogue_notes_select on public.rogue_notes for select to authenticated
           using (owner = auth.uid() or (auth.jwt() -> 'user_metadata' ->> 'admin') = 'true');",
    )
    .await;
    let findings = lint(&db).await;
    for expected in [
        "rogue_lookup() has no fixed search_path",
        "rogue_lookup() is SECURITY DEFINER, exposed and callable by anon/authenticated",
        "rogue_lookup() does not search pg_temp last",
        "policy rogue_notes_select on rogue_notes calls auth.uid() per row: wrap it in (select …)",
        "policy rogue_notes_select on rogue_notes calls auth.jwt() per row: wrap it in (select …)",
        "policy rogue_notes_select on rogue_notes reads user_metadata, which users edit",
    ] {
        assert!(
            findings.iter().any(|f| f == expected),
            "{expected:?} not in {findings:#?}"
        );
    }
    assert_eq!(findings.len(), 6, "{findings:#?}");
}

/// The attack review's finding: a tenant session's temporary type must not
/// run its code inside a function that runs as its owner. `auth.uid()`
/// casts to `uuid` inside `auth_org_id` (SECURITY DEFINER); a
/// `pg_temp.uuid` domain whose check records `current_user` would have run
/// as the owner (a superuser here) while pg_temp was searched first.
#[tokio::test]
async fn a_tenants_temporary_type_runs_nothing_as_the_owner() {
    let db = supabase_like_db().await;
    let mut conn = db
        .pool
        .acquire()
        .await
        .unwrap_or_else(|e| panic!("acquire: {e}"));
    for sql in [
        "set role authenticated",
        "create function pg_temp.record_runner(pg_catalog.uuid) returns boolean language sql as \
           $f$ select pg_catalog.set_config('attack.ran_as', current_user::text, false) is not null $f$",
        "create domain pg_temp.uuid as pg_catalog.uuid check (pg_temp.record_runner(value))",
        "create domain pg_temp.jsonb as pg_catalog.jsonb check (pg_temp.record_runner(null))",
        "select pg_catalog.set_config('request.jwt.claims', \
           '{\"role\":\"authenticated\",\"sub\":\"a0000000-0000-4000-8000-000000000001\"}', false)",
    ] {
        sqlx::query(sql)
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let org: Option<uuid::Uuid> = sqlx::query_scalar("select switchboard_private.auth_org_id()")
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("auth_org_id: {e}"));
    assert!(org.is_some(), "the seeded admin belongs to an org");
    let ran_as: Option<String> =
        sqlx::query_scalar("select pg_catalog.current_setting('attack.ran_as', true)")
            .fetch_one(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("current_setting: {e}"));
    assert_eq!(
        ran_as.filter(|r| !r.is_empty()),
        None,
        "the temporary type's check ran inside auth_org_id"
    );
    // The connection goes back to the pool as the owner, without the claims.
    let _ = sqlx::query("reset role").execute(&mut *conn).await;
    let _ = sqlx::query("discard all").execute(&mut *conn).await;
}

// ---------------------------------------------------------------- references across orgs

/// A foreign key between two tables that both have an `org_id` column, as
/// `pg_catalog` describes it.
#[derive(Debug)]
struct TenantKey {
    name: String,
    /// Schema-qualified, quoted as needed.
    table: String,
    columns: Vec<String>,
    target: String,
    target_columns: Vec<String>,
}

impl TenantKey {
    /// `org_id` maps to `org_id`: the row and what it names share an org.
    fn carries_org_id(&self) -> bool {
        self.columns
            .iter()
            .zip(&self.target_columns)
            .any(|(from, to)| from == "org_id" && to == "org_id")
    }

    fn describe(&self) -> String {
        format!(
            "{} on {} ({}) → {} ({})",
            self.name,
            self.table,
            self.columns.join(", "),
            self.target,
            self.target_columns.join(", ")
        )
    }
}

/// Every foreign key, in every schema, from a table with `org_id` to a
/// table with `org_id`: the references between tenant rows.
async fn tenant_keys(db: &TestDb) -> Vec<TenantKey> {
    // (constraint, table, columns, target, target columns)
    type KeyRow = (String, String, Vec<String>, String, Vec<String>);
    let rows: Vec<KeyRow> = sqlx::query_as(
        "with has_org as ( \
           select a.attrelid from pg_catalog.pg_attribute a \
           where a.attname = 'org_id' and a.attnum > 0 and not a.attisdropped) \
         select c.conname::text, \
                format('%I.%I', fn.nspname, fc.relname), \
                array(select a.attname::text from unnest(c.conkey) with ordinality k(attnum, n) \
                      join pg_catalog.pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.attnum \
                      order by k.n), \
                format('%I.%I', tn.nspname, tc.relname), \
                array(select a.attname::text from unnest(c.confkey) with ordinality k(attnum, n) \
                      join pg_catalog.pg_attribute a on a.attrelid = c.confrelid and a.attnum = k.attnum \
                      order by k.n) \
         from pg_catalog.pg_constraint c \
         join pg_catalog.pg_class fc on fc.oid = c.conrelid \
         join pg_catalog.pg_namespace fn on fn.oid = fc.relnamespace \
         join pg_catalog.pg_class tc on tc.oid = c.confrelid \
         join pg_catalog.pg_namespace tn on tn.oid = tc.relnamespace \
         where c.contype = 'f' \
           and c.conrelid in (select attrelid from has_org) \
           and c.confrelid in (select attrelid from has_org) \
         order by 2, 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap_or_else(|e| panic!("pg_constraint: {e}"));
    rows.into_iter()
        .map(|(name, table, columns, target, target_columns)| TenantKey {
            name,
            table,
            columns,
            target,
            target_columns,
        })
        .collect()
}

async fn keys_without_org_id(db: &TestDb) -> Vec<String> {
    tenant_keys(db)
        .await
        .iter()
        .filter(|key| !key.carries_org_id())
        .map(|key| format!("{} does not carry org_id", key.describe()))
        .collect()
}

/// A reference from one tenant row to another points into the same org:
/// every such foreign key pairs `org_id` with `org_id`. Discovered from
/// `pg_catalog`, so a new key that does not fails here.
#[tokio::test]
async fn every_foreign_key_between_tenant_tables_carries_org_id() {
    let db = TestDb::seeded().await;
    let keys = tenant_keys(&db).await;
    for key in &keys {
        println!("{}", key.describe());
    }
    let names: BTreeSet<&str> = keys.iter().map(|k| k.table.as_str()).collect();
    assert!(
        names.contains("public.calls") && names.contains("public.knowledge_base"),
        "calls and knowledge_base reference agents and customers: {keys:#?}"
    );
    let failures = keys_without_org_id(&db).await;
    assert!(failures.is_empty(), "{failures:#?}");

    // The check can fail: a key on id alone, and one that pairs org_id with
    // the wrong column.
    db.exec(
        "create table public.rogue_notes (
           id uuid primary key default gen_random_uuid(),
           org_id uuid not null,
           agent_id uuid references public.agents (id),
           customer_id uuid,
           foreign key (org_id, customer_id) references public.customers (id, org_id));",
    )
    .await;
    let failures = keys_without_org_id(&db).await;
    assert_eq!(failures.len(), 2, "{failures:#?}");
    assert!(
        failures.iter().all(|f| f.contains("public.rogue_notes")),
        "{failures:#?}"
    );
}

/// What one statement did, with the value the caller gave replaced by
/// `<target>`, so a refusal for another org's row and one for a row that
/// does not exist compare equal when nothing tells them apart.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Rows(u64),
    Refused {
        code: String,
        message: String,
        detail: String,
    },
}

async fn run_seen(db: &TestDb, case: &Case, sql: &str, target: &str) -> Seen {
    let mut tx = begin_as(db, case).await;
    let result = sqlx::raw_sql(sql).execute(&mut *tx).await;
    let _ = tx.rollback().await;
    let blank = |text: &str| text.replace(target, "<target>");
    match result {
        Result::Ok(done) => Seen::Rows(done.rows_affected()),
        Err(sqlx::Error::Database(e)) => {
            let detail = e
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .and_then(|pg| pg.detail())
                .unwrap_or_default();
            Seen::Refused {
                code: e.code().unwrap_or_default().into_owned(),
                message: blank(e.message()),
                detail: blank(detail),
            }
        }
        Err(e) => panic!("{sql}: {e}"),
    }
}

/// Every foreign key between tenant tables, tried across orgs by every kind
/// of caller, inserting a row that names the other org's row and updating
/// an own row to name it: refused, and refused exactly as a reference to a
/// row that does not exist (same SQLSTATE, message and detail shape), so
/// the answer says nothing about the other org. For the roles the matrix
/// lets write the table, a reference to their own org's row works, so the
/// refusal comes from the key, not from RLS; for the roles it gives no
/// grant (tenants on `calls`), every attempt is refused by the privilege.
#[tokio::test]
async fn references_into_another_org_fail_as_references_to_nothing() {
    let db = TestDb::seeded().await;
    add_fixtures(&db).await;
    let keys = tenant_keys(&db).await;
    assert!(keys.len() >= 3, "{keys:#?}");
    let mut failures = Vec::new();
    let mut checked = 0;
    for key in &keys {
        let table_name = key.table.strip_prefix("public.").unwrap_or(&key.table);
        // Generated columns (`calls.duration_ms`) take no value on insert.
        let writable: Vec<String> = sqlx::query_scalar(
            "select quote_ident(a.attname) from pg_catalog.pg_attribute a \
             where a.attrelid = $1::regclass and a.attnum > 0 and not a.attisdropped \
               and a.attgenerated = '' order by a.attnum",
        )
        .bind(&key.table)
        .fetch_all(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("columns of {}: {e}", key.table));
        let writable = writable.join(", ");
        let pairs: Vec<(&String, &String)> = key
            .columns
            .iter()
            .zip(&key.target_columns)
            .filter(|(from, _)| *from != "org_id")
            .collect();
        let [(column, target_column)] = pairs[..] else {
            failures.push(format!(
                "{}: expected one column besides org_id",
                key.describe()
            ));
            continue;
        };
        for home in [ACME, BLUEBIRD] {
            let other = if home == ACME { BLUEBIRD } else { ACME };
            let source: Option<serde_json::Value> = sqlx::query_scalar(&format!(
                "select to_jsonb(t) from {} t where org_id = $1 order by id limit 1",
                key.table
            ))
            .bind(uuid::Uuid::parse_str(home).unwrap_or_default())
            .fetch_optional(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("source row of {}: {e}", key.table));
            let Some(source) = source else {
                failures.push(format!("{} has no row in {home} to try", key.table));
                continue;
            };
            let source_id = source["id"].as_str().unwrap_or_default().to_owned();
            // A key into its own table (an agent's after-hours agent): aim
            // at another row than the source, which may not name itself.
            let not_source = (key.target == key.table).then(|| source_id.clone());
            let target_in = |org: &'static str| {
                let sql = format!(
                    "select {target_column}::text from {} where org_id = $1 \
                       and ($2::text is null or id::text <> $2) order by id limit 1",
                    key.target
                );
                let not_source = not_source.clone();
                let pool = db.pool.clone();
                async move {
                    sqlx::query_scalar::<_, String>(&sql)
                        .bind(uuid::Uuid::parse_str(org).unwrap_or_default())
                        .bind(not_source)
                        .fetch_optional(&pool)
                        .await
                        .unwrap_or_else(|e| panic!("{sql}: {e}"))
                }
            };
            let (Some(theirs), Some(ours)) = (target_in(other).await, target_in(home).await) else {
                failures.push(format!("{} has no row in each org to aim at", key.target));
                continue;
            };
            let nothing = uuid::Uuid::new_v4().to_string();
            let insert = |target: &str| {
                let mut row = source.clone();
                row["id"] = uuid::Uuid::new_v4().to_string().into();
                // A call's id is unique in its org: a copy needs its own.
                if row.get("call_id").is_some() {
                    row["call_id"] = uuid::Uuid::new_v4().to_string().into();
                }
                // So is an agent's number, and a caller rule's pattern; an
                // agent's versions are its own (set only by publishing).
                if key.table == "public.agents" {
                    row["phone_number"] = "+15550008888".into();
                    row["latest_version"] = serde_json::Value::Null;
                    row["serving"] = serde_json::Value::Null;
                }
                if key.table == "public.caller_rules" {
                    row["pattern"] = "+15550008888".into();
                }
                row[column.as_str()] = target.into();
                let literal = switchboard::store::sql_literal(&row.to_string())
                    .unwrap_or_else(|| panic!("row literal"));
                format!(
                    "insert into {table} ({writable}) select {writable} \
                     from jsonb_populate_record(null::{table}, {literal}::jsonb)",
                    table = key.table
                )
            };
            let update = |target: &str| {
                format!(
                    "update {} set {column} = '{target}' where id = '{source_id}'",
                    key.table
                )
            };
            for caller in [Anon, AdminOwn, ManagerOwn, ViewerOwn, Service, NoProfile] {
                let case = case_for(caller, home);
                for (op, statement) in [
                    ("insert", &insert as &dyn Fn(&str) -> String),
                    ("update", &update),
                ] {
                    let designed = MATRIX
                        .iter()
                        .find(|(t, o, c, _)| {
                            *t == table_name
                                && *o == if op == "insert" { Insert } else { Update }
                                && *c == caller
                        })
                        .map(|(.., outcome)| outcome);
                    let what = format!("{} {op} as {caller:?} from {home}", key.describe());
                    let across = run_seen(&db, &case, &statement(&theirs), &theirs).await;
                    let missing = run_seen(&db, &case, &statement(&nothing), &nothing).await;
                    let own = run_seen(&db, &case, &statement(&ours), &ours).await;
                    checked += 1;
                    if across != missing {
                        failures.push(format!(
                            "{what}: another org's row gave {across:?}, a missing row {missing:?}"
                        ));
                    }
                    if let Seen::Rows(n) = across {
                        if n > 0 {
                            failures.push(format!("{what}: another org's row was accepted"));
                        }
                    }
                    match designed {
                        Some(Allowed) => {
                            if own != Seen::Rows(1) {
                                failures.push(format!("{what}: its own org's row gave {own:?}"));
                            }
                            if !matches!(&across, Seen::Refused { code, .. } if code == "23503") {
                                failures.push(format!(
                                    "{what}: expected a foreign-key violation, got {across:?}"
                                ));
                            }
                        }
                        Some(NoGrant) => {
                            for (whose, seen) in [("own", &own), ("another org's", &across)] {
                                let no_grant = matches!(seen, Seen::Refused { code, message, .. }
                                    if code == "42501" && message.starts_with("permission denied for"));
                                if !no_grant {
                                    failures.push(format!(
                                        "{what}: the matrix gives no grant, but its {whose} row gave {seen:?}"
                                    ));
                                }
                            }
                        }
                        _ => {}
                    }
                    if checked <= 12 {
                        println!("{what}: {across:?}");
                    }
                }
            }
        }
    }
    println!("cross-org references tried: {checked} (× other org, missing, own)");
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, keys.len() * 2 * 6 * 2);
}

/// The invalidation outbox is private: no API role may read it (it names
/// every tenant's numbers), write it (a forged row would evict, or flush,
/// what it names), touch its sequence or prune it, on plain Postgres or
/// under Supabase's default privileges; and trying is refused.
#[tokio::test]
async fn the_invalidation_outbox_is_private_to_every_api_role() {
    for db in [TestDb::seeded().await, supabase_like_db().await] {
        let granted: Vec<(String, String)> = sqlx::query_as(
            "select r.rolname::text, o.name \
             from (values ('anon'), ('authenticated'), ('service_role')) as r(rolname) \
             cross join (values \
               ('switchboard_private.invalidation_outbox', 'table'), \
               ('switchboard_private.invalidation_outbox_pruned', 'table'), \
               ('switchboard_private.invalidation_outbox_seq_seq', 'sequence'), \
               ('switchboard_private.prune_invalidation_outbox(interval)', 'function'), \
               ('switchboard_private.notify_invalidation()', 'function')) as o(name, kind) \
             where case o.kind \
               when 'table' then pg_catalog.has_table_privilege(r.rolname, o.name, \
                 'select, insert, update, delete, truncate, references, trigger') \
               when 'sequence' then pg_catalog.has_sequence_privilege(r.rolname, o.name, \
                 'usage, select, update') \
               else pg_catalog.has_function_privilege(r.rolname, o.name, 'execute') end",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("privileges: {e}"));
        assert!(granted.is_empty(), "API roles hold: {granted:?}");

        for role in ["anon", "authenticated", "service_role"] {
            for statement in [
                "select count(*) from switchboard_private.invalidation_outbox",
                "insert into switchboard_private.invalidation_outbox (xid, change) \
                 values (pg_current_xact_id(), '{\"kind\":\"all\"}')",
                "delete from switchboard_private.invalidation_outbox",
                "select switchboard_private.prune_invalidation_outbox(interval '0 s')",
            ] {
                let mut tx = db.pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
                sqlx::query(&format!("set local role {role}"))
                    .execute(&mut *tx)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let outcome = sqlx::query(statement).execute(&mut *tx).await;
                let refused = match &outcome {
                    Err(sqlx::Error::Database(error)) => error.code().as_deref() == Some("42501"),
                    _ => false,
                };
                assert!(refused, "{role}: {statement}: {outcome:?}");
            }
        }
    }
}
