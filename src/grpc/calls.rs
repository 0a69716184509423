//! `switchboard.v1.CallService`.

use std::pin::Pin;

use chrono::{DateTime, Utc};
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::parse::{in_field, ringing_numbers, with_org};
use crate::{
    api::{
        convert::{
            active_calls_to_pb, call_limits_to_pb, call_status_from_pb, call_to_pb, decision_to_pb,
            disconnect_reason_from_pb, lease_to_pb,
        },
        pb::{self, call_service_server::CallService},
    },
    app::{CallRef, CallsService},
    auth::claims_of,
    domain::{
        call::parse_call_limit, AgentId, CallFilter, CallId, CallLookup, EndStatus, OrgId,
        PageRequest, PhoneNumber,
    },
    error::Error,
};

pub struct CallApi {
    calls: CallsService,
}

impl CallApi {
    pub(crate) fn new(calls: CallsService) -> Self {
        CallApi { calls }
    }
}

fn optional_org(value: &str) -> Result<Option<OrgId>, Error> {
    match value.trim() {
        "" => Ok(None),
        org => OrgId::parse(org).map(Some),
    }
}

fn parse_ref(call: Option<&pb::CallRef>) -> Result<CallRef, Error> {
    let call = call.ok_or_else(|| Error::invalid("call is required"))?;
    Ok(CallRef {
        org_id: OrgId::parse(&call.org_id)?,
        call_id: CallId::parse(&call.call_id).map_err(in_field("call_id"))?,
        called: PhoneNumber::parse(&call.called_number).map_err(in_field("called_number"))?,
        agent_id: AgentId::parse(&call.agent_id).map_err(in_field("agent_id"))?,
    })
}

fn time(
    field: &'static str,
    value: Option<&prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, Error> {
    value
        .map(|t| {
            u32::try_from(t.nanos)
                .ok()
                .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
                .ok_or_else(|| Error::invalid(format!("{field} is not a valid timestamp")))
        })
        .transpose()
}

type ActiveCallsStream = Pin<Box<dyn Stream<Item = Result<pb::ActiveCalls, Status>> + Send>>;

#[tonic::async_trait]
impl CallService for CallApi {
    async fn start_call(
        &self,
        request: Request<pb::StartCallRequest>,
    ) -> Result<Response<pb::CallDecision>, Status> {
        let claims = claims_of(&request)?;
        let request = request.into_inner();
        let (called, caller) = ringing_numbers(&request.called_number, &request.caller_number)?;
        let call_id = if request.call_id.is_empty() {
            None
        } else {
            Some(CallId::parse(&request.call_id)?)
        };
        let started = self
            .calls
            .start(&claims, &called, caller.as_ref(), call_id)
            .await?;
        let decision = decision_to_pb(
            started.call_id.as_str(),
            &started.decision,
            started.route,
            started.lease_expires_ms,
            self.calls.renew_every(),
            started.replayed,
            started.limits_unchecked,
        );
        Ok(match started.org_id {
            Some(org) => with_org(decision, org),
            None => Response::new(decision),
        })
    }

    async fn answer_call(
        &self,
        request: Request<pb::CallRef>,
    ) -> Result<Response<pb::CallLease>, Status> {
        let claims = claims_of(&request)?;
        let call = parse_ref(Some(request.get_ref()))?;
        let lease = self.calls.keep_alive(&claims, &call, true).await?;
        Ok(with_org(
            lease_to_pb(lease.expires_ms, self.calls.renew_every(), lease.rebuilt),
            call.org_id,
        ))
    }

    async fn keep_call_alive(
        &self,
        request: Request<pb::CallRef>,
    ) -> Result<Response<pb::CallLease>, Status> {
        let claims = claims_of(&request)?;
        let call = parse_ref(Some(request.get_ref()))?;
        let lease = self.calls.keep_alive(&claims, &call, false).await?;
        Ok(with_org(
            lease_to_pb(lease.expires_ms, self.calls.renew_every(), lease.rebuilt),
            call.org_id,
        ))
    }

    async fn end_call(
        &self,
        request: Request<pb::EndCallRequest>,
    ) -> Result<Response<pb::Call>, Status> {
        let claims = claims_of(&request)?;
        let request = request.into_inner();
        let call = parse_ref(request.call.as_ref())?;
        let status = match pb::EndStatus::try_from(request.status) {
            Ok(pb::EndStatus::Unspecified | pb::EndStatus::Completed) => EndStatus::Completed,
            Ok(pb::EndStatus::Failed) => EndStatus::Failed,
            Err(_) => return Err(Error::invalid("status is not a known EndStatus").into()),
        };
        let disconnect_reason = match pb::DisconnectReason::try_from(request.disconnect_reason) {
            Ok(pb::DisconnectReason::Unspecified) => None,
            Ok(reason) => disconnect_reason_from_pb(reason),
            Err(_) => {
                return Err(
                    Error::invalid("disconnect_reason is not a known DisconnectReason").into(),
                )
            }
        };
        let record = self
            .calls
            .end(&claims, &call, status, disconnect_reason)
            .await?;
        Ok(with_org(call_to_pb(&record), call.org_id))
    }

    async fn get_call(
        &self,
        request: Request<pb::GetCallRequest>,
    ) -> Result<Response<pb::Call>, Status> {
        let claims = claims_of(&request)?;
        let request = request.get_ref();
        let lookup = match (request.id.trim(), request.call_id.as_str()) {
            ("", "") => return Err(Error::invalid("id or call_id is required").into()),
            (id, "") => CallLookup::ById(
                uuid::Uuid::try_parse(id).map_err(|_| Error::invalid("id is not a valid UUID"))?,
            ),
            ("", call_id) => CallLookup::ByCallId {
                org_id: optional_org(&request.org_id)?,
                call_id: CallId::parse(call_id)?.as_str().to_owned(),
            },
            _ => return Err(Error::invalid("give id or call_id, not both").into()),
        };
        let call = self.calls.get(&claims, &lookup).await?;
        Ok(with_org(call_to_pb(&call), call.org_id))
    }

    async fn list_calls(
        &self,
        request: Request<pb::ListCallsRequest>,
    ) -> Result<Response<pb::ListCallsResponse>, Status> {
        let claims = claims_of(&request)?;
        let request = request.get_ref();
        let page = PageRequest::parse(request.page_size, &request.page_token)?;
        let status = match pb::CallStatus::try_from(request.status) {
            Ok(pb::CallStatus::Unspecified) => None,
            Ok(status) => call_status_from_pb(status),
            Err(_) => return Err(Error::invalid("status is not a known CallStatus").into()),
        };
        let org_id = optional_org(&request.org_id)?;
        if org_id.is_some() && !claims.is_service_role() {
            return Err(Error::invalid(
                "org_id is for service_role; tenants list their own organization",
            )
            .into());
        }
        let filter = CallFilter {
            org_id,
            agent_id: match request.agent_id.trim() {
                "" => None,
                agent => Some(AgentId::parse(agent).map_err(in_field("agent_id"))?),
            },
            status,
            from: time("start_time", request.start_time.as_ref())?,
            until: time("end_time", request.end_time.as_ref())?,
        };
        let page = self.calls.list(&claims, &filter, page).await?;
        Ok(Response::new(pb::ListCallsResponse {
            calls: page.items.iter().map(call_to_pb).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    type WatchActiveCallsStream = ActiveCallsStream;

    async fn watch_active_calls(
        &self,
        request: Request<pb::WatchActiveCallsRequest>,
    ) -> Result<Response<Self::WatchActiveCallsStream>, Status> {
        let claims = claims_of(&request)?;
        let org = optional_org(&request.get_ref().org_id)?;
        let views = self.calls.watch(&claims, org).await?;
        let stream = ReceiverStream::new(views).map(|view| {
            view.map(|v| active_calls_to_pb(v.org_id, v.active, v.limit, &v.agents))
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_call_limits(
        &self,
        request: Request<pb::GetCallLimitsRequest>,
    ) -> Result<Response<pb::CallLimits>, Status> {
        let claims = claims_of(&request)?;
        let org = optional_org(&request.get_ref().org_id)?;
        let limits = self.calls.limits(&claims, org).await?;
        Ok(with_org(call_limits_to_pb(&limits), limits.org_id))
    }

    async fn set_organization_call_limit(
        &self,
        request: Request<pb::SetOrganizationCallLimitRequest>,
    ) -> Result<Response<pb::CallLimits>, Status> {
        let claims = claims_of(&request)?;
        let request = request.get_ref();
        let org = OrgId::parse(&request.org_id)?;
        let limit = request
            .max_concurrent_calls
            .map(|l| parse_call_limit("max_concurrent_calls", l))
            .transpose()?;
        let limits = self.calls.set_org_limit(&claims, org, limit).await?;
        Ok(with_org(call_limits_to_pb(&limits), limits.org_id))
    }
}
