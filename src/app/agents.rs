//! Agents: reads under the caller's claims, and writes that evict the
//! routes they changed (through `Data::write`).

use super::data::Data;
use crate::{
    auth::Claims,
    cache::Cache,
    domain::{
        routing::compare_versions, Agent, AgentChange, AgentId, AgentPatch, AgentVersion,
        FieldChange, NewAgent, Page, PageRequest, Seq,
    },
    error::Error,
    store::PgStore,
};

#[derive(Clone)]
pub struct AgentsService {
    data: Data,
}

impl AgentsService {
    pub(crate) fn new(store: PgStore, cache: Cache) -> Self {
        AgentsService {
            data: Data::new(store, cache),
        }
    }

    pub(crate) async fn get(&self, claims: &Claims, id: AgentId) -> Result<Agent, Error> {
        self.data.reads().get_agent(claims, id).await
    }

    pub(crate) async fn list(
        &self,
        claims: &Claims,
        page: PageRequest,
    ) -> Result<Page<Agent>, Error> {
        self.data.reads().list_agents(claims, page).await
    }

    /// The agent's changes, newest first (the trail the database keeps).
    pub(crate) async fn history(
        &self,
        claims: &Claims,
        id: AgentId,
        page: PageRequest<Seq>,
    ) -> Result<Page<AgentChange>, Error> {
        self.data.reads().list_agent_history(claims, id, page).await
    }

    pub(crate) async fn create(&self, claims: &Claims, agent: &NewAgent) -> Result<Agent, Error> {
        self.data
            .write(|store| store.create_agent(claims, agent))
            .await
    }

    pub(crate) async fn update(
        &self,
        claims: &Claims,
        id: AgentId,
        patch: &AgentPatch,
    ) -> Result<Agent, Error> {
        let updated = self
            .data
            .write(|store| store.update_agent(claims, id, patch))
            .await?;
        Ok(updated.agent)
    }

    /// Freezes the agent's draft as its next version; its route is
    /// evicted (the latest version changed).
    pub(crate) async fn publish(
        &self,
        claims: &Claims,
        id: AgentId,
    ) -> Result<AgentVersion, Error> {
        let (version, _number) = self
            .data
            .write(|store| store.publish_agent(claims, id))
            .await?;
        Ok(version)
    }

    pub(crate) async fn versions(
        &self,
        claims: &Claims,
        id: AgentId,
        page: PageRequest<Seq>,
    ) -> Result<Page<AgentVersion>, Error> {
        self.data
            .reads()
            .list_agent_versions(claims, id, page)
            .await
    }

    pub(crate) async fn compare(
        &self,
        claims: &Claims,
        id: AgentId,
        from: u32,
        to: u32,
    ) -> Result<Vec<FieldChange>, Error> {
        let (from, to) = self
            .data
            .reads()
            .agent_versions_pair(claims, id, from, to)
            .await?;
        Ok(compare_versions(&from, &to))
    }

    pub(crate) async fn delete(&self, claims: &Claims, id: AgentId) -> Result<Agent, Error> {
        self.data
            .write(|store| store.delete_agent(claims, id))
            .await
    }
}
