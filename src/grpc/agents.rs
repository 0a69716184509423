//! `switchboard.v1.AgentService`.

use tonic::{Request, Response, Status};

use super::{
    parse::{in_field, ringing_numbers, target_org, with_org},
    AnsweredFrom, LoggedOrg,
};
use crate::{
    api::{
        convert::{
            agent_change_to_pb, agent_to_pb, agent_version_to_pb, field_change_to_pb, hours_from_pb,
        },
        pb::{self, agent_service_server::AgentService},
    },
    app::{AgentsService, ResolveService},
    auth::{claims_of, Claims},
    domain::{
        call::parse_call_limit,
        model::{parse_text, MAX_NAME_CHARS, MAX_VOICE_ID_CHARS},
        AfterHours, AgentField, AgentId, AgentPatch, BusinessHours, CallId, LlmConfig, NewAgent,
        PageRequest, PhoneNumber, Seq, TransferTarget, VersionServing,
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
    if agent.serving.as_ref().is_some_and(|s| s.rule.is_some()) {
        return Err(Error::invalid(
            "serving: a new agent has no published version yet; publish it, then set serving with UpdateAgent",
        ));
    }
    let (hours, after_hours) = parse_hours(agent.business_hours.as_ref())?;
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
        hours,
        after_hours,
    })
}

/// Business hours and their after-hours target, as a client sends them
/// (unset: always open).
fn parse_hours(
    hours: Option<&pb::BusinessHours>,
) -> Result<(Option<BusinessHours>, AfterHours), Error> {
    let Some(hours) = hours else {
        return Ok((None, AfterHours::Refuse));
    };
    let parsed = hours_from_pb("business_hours", hours)?;
    let after_hours = match (
        hours.after_hours_agent_id.trim(),
        hours.after_hours_transfer_to.trim(),
    ) {
        ("", "") => AfterHours::Refuse,
        (id, "") => AfterHours::Agent(
            AgentId::parse(id).map_err(in_field("business_hours.after_hours_agent_id"))?,
        ),
        ("", target) => AfterHours::Transfer(TransferTarget::parse(
            "business_hours.after_hours_transfer_to",
            target,
        )?),
        _ => {
            return Err(Error::invalid(
                "business_hours: set after_hours_agent_id or after_hours_transfer_to, not both",
            ))
        }
    };
    Ok((Some(parsed), after_hours))
}

/// Unset: the latest published version.
fn parse_serving(serving: Option<&pb::VersionServing>) -> Result<VersionServing, Error> {
    match serving.and_then(|s| s.rule.as_ref()) {
        None => Ok(VersionServing::Latest),
        Some(pb::version_serving::Rule::PinnedVersion(v)) => VersionServing::pinned("serving", *v),
        Some(pb::version_serving::Rule::Split(split)) => {
            let arms: Vec<(i32, i32)> = split.arms.iter().map(|a| (a.version, a.weight)).collect();
            VersionServing::split("serving", &arms)
        }
    }
}

fn parse_version(field: &str, value: i32) -> Result<u32, Error> {
    u32::try_from(value)
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| Error::invalid(format!("{field} must be 1 or more")))
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
            "update_mask must name at least one of: name, phone_number, voice_id, llm_config, is_active, max_concurrent_calls, fallback_destination, serving, business_hours (or *)",
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
            // Unset: the latest (rolling back is pinning an older one).
            AgentField::Serving => patch.serving = Some(parse_serving(agent.serving.as_ref())?),
            // Unset clears them: always open.
            AgentField::BusinessHours => {
                patch.hours = Some(parse_hours(agent.business_hours.as_ref())?)
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
        let call_id = if request.call_id.is_empty() {
            None
        } else {
            Some(CallId::parse(&request.call_id)?)
        };
        let resolved = self
            .resolve
            .resolve(
                &claims,
                &called,
                caller.as_ref(),
                call_id.as_ref().map_or("", CallId::as_str),
            )
            .await?;
        let mut response = Response::new(resolved.response);
        if let Some(org_id) = resolved.org_id {
            response.extensions_mut().insert(LoggedOrg(org_id));
        }
        // Sent in the trailers by the request layers (`x-switchboard-cache`).
        response
            .extensions_mut()
            .insert(AnsweredFrom(resolved.tier.as_str()));
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

    async fn publish_agent(
        &self,
        request: Request<pb::PublishAgentRequest>,
    ) -> Result<Response<pb::AgentVersion>, Status> {
        let claims = claims_of(&request)?;
        let id = AgentId::parse(&request.get_ref().agent_id).map_err(in_field("agent_id"))?;
        let version = self.agents.publish(&claims, id).await?;
        Ok(with_org(agent_version_to_pb(&version), version.org_id))
    }

    async fn list_agent_versions(
        &self,
        request: Request<pb::ListAgentVersionsRequest>,
    ) -> Result<Response<pb::ListAgentVersionsResponse>, Status> {
        let claims = claims_of(&request)?;
        let request = request.into_inner();
        let id = AgentId::parse(&request.agent_id).map_err(in_field("agent_id"))?;
        let page = PageRequest::<Seq>::parse(request.page_size, &request.page_token)?;
        let page = self.agents.versions(&claims, id, page).await?;
        Ok(Response::new(pb::ListAgentVersionsResponse {
            versions: page.items.iter().map(agent_version_to_pb).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn compare_agent_versions(
        &self,
        request: Request<pb::CompareAgentVersionsRequest>,
    ) -> Result<Response<pb::CompareAgentVersionsResponse>, Status> {
        let claims = claims_of(&request)?;
        let request = request.into_inner();
        let id = AgentId::parse(&request.agent_id).map_err(in_field("agent_id"))?;
        let from = parse_version("from_version", request.from_version)?;
        let to = parse_version("to_version", request.to_version)?;
        let changes = self.agents.compare(&claims, id, from, to).await?;
        Ok(Response::new(pb::CompareAgentVersionsResponse {
            changes: changes.iter().map(field_change_to_pb).collect(),
        }))
    }
}
