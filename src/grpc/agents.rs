//! `switchboard.v1.AgentService`.

use tonic::{Request, Response, Status};

use tonic::metadata::MetadataValue;

use super::{
    parse::{in_field, ringing_numbers, target_org, with_org},
    LoggedOrg, CACHE_TIER_HEADER,
};
use crate::{
    api::{
        convert::{agent_change_to_pb, agent_to_pb},
        pb::{self, agent_service_server::AgentService},
    },
    app::{AgentsService, ResolveService},
    auth::{claims_of, Claims},
    domain::{
        call::parse_call_limit,
        model::{parse_text, MAX_NAME_CHARS, MAX_VOICE_ID_CHARS},
        AgentField, AgentId, AgentPatch, LlmConfig, NewAgent, PageRequest, PhoneNumber, Seq,
        TransferTarget,
    },
    error::Error,
};

pub struct AgentApi {
    resolve: ResolveService,
    agents: AgentsService,
}

impl AgentApi {
    pub(crate) fn new(resolve: ResolveService, agents: AgentsService) -> Self {
        AgentApi { resolve, agents }
    }
}

fn parse_new_agent(claims: &Claims, agent: pb::Agent) -> Result<NewAgent, Error> {
    Ok(NewAgent {
        org_id: target_org(claims, &agent.org_id)?,
        name: parse_text("name", &agent.name, MAX_NAME_CHARS)?,
        phone_number: PhoneNumber::parse_for_write(&agent.phone_number)
            .map_err(in_field("phone_number"))?,
        voice_id: parse_text("voice_id", &agent.voice_id, MAX_VOICE_ID_CHARS)?,
        llm_config: LlmConfig::from_struct(agent.llm_config)?,
        is_active: agent.is_active.unwrap_or(true),
        max_concurrent_calls: agent
            .max_concurrent_calls
            .map(|l| parse_call_limit("max_concurrent_calls", l))
            .transpose()?,
        fallback_destination: parse_fallback(&agent.fallback_destination)?,
    })
}

/// Empty: none.
fn parse_fallback(value: &str) -> Result<Option<TransferTarget>, Error> {
    if value.trim().is_empty() {
        Ok(None)
    } else {
        TransferTarget::parse("fallback_destination", value).map(Some)
    }
}

fn parse_patch(
    agent: pb::Agent,
    mask: Option<prost_types::FieldMask>,
) -> Result<AgentPatch, Error> {
    let paths = mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        return Err(Error::invalid(
            "update_mask must name at least one of: name, phone_number, voice_id, llm_config, is_active, max_concurrent_calls, fallback_destination (or *)",
        ));
    }
    let fields: Vec<AgentField> = if paths.iter().any(|p| p == "*") {
        AgentField::ALL.to_vec()
    } else {
        paths
            .iter()
            .map(|p| AgentField::parse_path(p))
            .collect::<Result<_, _>>()?
    };
    let mut patch = AgentPatch::default();
    let mut llm_config = agent.llm_config;
    for field in fields {
        match field {
            AgentField::Name => patch.name = Some(parse_text("name", &agent.name, MAX_NAME_CHARS)?),
            AgentField::PhoneNumber => {
                patch.phone_number = Some(
                    PhoneNumber::parse_for_write(&agent.phone_number)
                        .map_err(in_field("phone_number"))?,
                )
            }
            AgentField::VoiceId => {
                patch.voice_id = Some(parse_text("voice_id", &agent.voice_id, MAX_VOICE_ID_CHARS)?)
            }
            AgentField::LlmConfig => {
                patch.llm_config = Some(LlmConfig::from_struct(llm_config.take())?)
            }
            AgentField::IsActive => {
                patch.is_active = Some(
                    agent
                        .is_active
                        .ok_or_else(|| Error::invalid("is_active is in update_mask but not set"))?,
                )
            }
            // Unset clears it: no agent limit.
            AgentField::MaxConcurrentCalls => {
                patch.max_concurrent_calls = Some(
                    agent
                        .max_concurrent_calls
                        .map(|l| parse_call_limit("max_concurrent_calls", l))
                        .transpose()?,
                )
            }
            // Empty clears it: calls it cannot take are refused.
            AgentField::FallbackDestination => {
                patch.fallback_destination = Some(parse_fallback(&agent.fallback_destination)?)
            }
        }
    }
    Ok(patch)
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn resolve_agent(
        &self,
        request: Request<pb::ResolveAgentRequest>,
    ) -> Result<Response<pb::ResolveAgentResponse>, Status> {
        let claims = claims_of(&request)?;
        let request = request.into_inner();
        let (called, caller) = ringing_numbers(&request.called_number, &request.caller_number)?;
        let resolved = self
            .resolve
            .resolve(&claims, &called, caller.as_ref())
            .await?;
        let mut response = Response::new(resolved.response);
        if let Some(org_id) = resolved.org_id {
            response.extensions_mut().insert(LoggedOrg(org_id));
        }
        response.metadata_mut().insert(
            CACHE_TIER_HEADER,
            MetadataValue::from_static(resolved.tier.as_str()),
        );
        Ok(response)
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let claims = claims_of(&request)?;
        let id = AgentId::parse(&request.get_ref().id)?;
        let agent = self.agents.get(&claims, id).await?;
        Ok(with_org(agent_to_pb(&agent), agent.org_id))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let claims = claims_of(&request)?;
        let page = PageRequest::parse(request.get_ref().page_size, &request.get_ref().page_token)?;
        let page = self.agents.list(&claims, page).await?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: page.items.iter().map(agent_to_pb).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn create_agent(
        &self,
        request: Request<pb::CreateAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let claims = claims_of(&request)?;
        let agent = request
            .into_inner()
            .agent
            .ok_or_else(|| Error::invalid("agent is required"))?;
        let new_agent = parse_new_agent(&claims, agent)?;
        let agent = self.agents.create(&claims, &new_agent).await?;
        Ok(with_org(agent_to_pb(&agent), agent.org_id))
    }

    async fn update_agent(
        &self,
        request: Request<pb::UpdateAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let claims = claims_of(&request)?;
        let request = request.into_inner();
        let agent = request
            .agent
            .ok_or_else(|| Error::invalid("agent is required"))?;
        let id = AgentId::parse(&agent.id).map_err(in_field("agent"))?;
        let patch = parse_patch(agent, request.update_mask)?;
        let agent = self.agents.update(&claims, id, &patch).await?;
        Ok(with_org(agent_to_pb(&agent), agent.org_id))
    }

    async fn delete_agent(
        &self,
        request: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<()>, Status> {
        let claims = claims_of(&request)?;
        let id = AgentId::parse(&request.get_ref().id)?;
        let agent = self.agents.delete(&claims, id).await?;
        Ok(with_org((), agent.org_id))
    }

    async fn list_agent_history(
        &self,
        request: Request<pb::ListAgentHistoryRequest>,
    ) -> Result<Response<pb::ListAgentHistoryResponse>, Status> {
        let claims = claims_of(&request)?;
        let request = request.into_inner();
        let id = AgentId::parse(&request.agent_id).map_err(in_field("agent_id"))?;
        let page = PageRequest::<Seq>::parse(request.page_size, &request.page_token)?;
        let page = self.agents.history(&claims, id, page).await?;
        Ok(Response::new(pb::ListAgentHistoryResponse {
            changes: page.items.iter().map(agent_change_to_pb).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
