//! Caller rules: reads under the caller's claims, and writes that evict
//! every route of the org (each carries the org's rules) through
//! `Data::write`.

use uuid::Uuid;

use super::data::Data;
use crate::{
    auth::Claims,
    cache::Cache,
    domain::{AgentChange, CallerRule, NewCallerRule, Page, PageRequest, Seq},
    error::Error,
    store::PgStore,
};

#[derive(Clone)]
pub struct CallerRulesService {
    data: Data,
}

impl CallerRulesService {
    pub(crate) fn new(store: PgStore, cache: Cache) -> Self {
        CallerRulesService {
            data: Data::new(store, cache),
        }
    }

    pub(crate) async fn create(
        &self,
        claims: &Claims,
        rule: &NewCallerRule,
    ) -> Result<CallerRule, Error> {
        let (rule, _numbers) = self
            .data
            .write(|store| store.create_caller_rule(claims, rule))
            .await?;
        Ok(rule)
    }

    pub(crate) async fn list(
        &self,
        claims: &Claims,
        page: PageRequest,
    ) -> Result<Page<CallerRule>, Error> {
        self.data.reads().list_caller_rules(claims, page).await
    }

    pub(crate) async fn delete(&self, claims: &Claims, id: Uuid) -> Result<CallerRule, Error> {
        let (rule, _numbers) = self
            .data
            .write(|store| store.delete_caller_rule(claims, id))
            .await?;
        Ok(rule)
    }

    pub(crate) async fn history(
        &self,
        claims: &Claims,
        page: PageRequest<Seq>,
    ) -> Result<Page<AgentChange>, Error> {
        self.data
            .reads()
            .list_caller_rule_history(claims, page)
            .await
    }
}
