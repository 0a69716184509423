//! `switchboard.v1.CallerRuleService`.

use tonic::{Request, Response, Status};

use super::parse::{in_field, target_org, with_org};
use crate::{
    api::{
        convert::{caller_rule_change_to_pb, caller_rule_to_pb},
        pb::{self, caller_rule_service_server::CallerRuleService},
    },
    app::CallerRulesService,
    auth::{claims_of, Claims},
    domain::{
        model::{parse_optional_text, MAX_NAME_CHARS},
        routing::parse_pattern,
        AgentId, CallerAction, CallerMatch, NewCallerRule, PageRequest, Seq,
    },
    error::Error,
};

pub struct CallerRuleApi {
    rules: CallerRulesService,
}

impl CallerRuleApi {
    pub(crate) fn new(rules: CallerRulesService) -> Self {
        CallerRuleApi { rules }
    }
}

fn parse_rule(claims: &Claims, rule: pb::CallerRule) -> Result<NewCallerRule, Error> {
    let matching = match pb::CallerMatch::try_from(rule.r#match) {
        Ok(pb::CallerMatch::Exact) => CallerMatch::Exact,
        Ok(pb::CallerMatch::Prefix) => CallerMatch::Prefix,
        _ => {
            return Err(Error::invalid(
                "rule.match must be CALLER_MATCH_EXACT or CALLER_MATCH_PREFIX",
            ))
        }
    };
    let action = match pb::CallerAction::try_from(rule.action) {
        Ok(pb::CallerAction::Block) if rule.agent_id.trim().is_empty() => CallerAction::Block,
        Ok(pb::CallerAction::Block) => {
            return Err(Error::invalid(
                "rule.agent_id must be empty for CALLER_ACTION_BLOCK",
            ))
        }
        Ok(pb::CallerAction::Route) => CallerAction::Route(
            AgentId::parse(rule.agent_id.trim()).map_err(in_field("rule.agent_id"))?,
        ),
        _ => {
            return Err(Error::invalid(
                "rule.action must be CALLER_ACTION_BLOCK or CALLER_ACTION_ROUTE",
            ))
        }
    };
    Ok(NewCallerRule {
        org_id: target_org(claims, &rule.org_id)?,
        matching,
        pattern: parse_pattern("rule.pattern", &rule.pattern)?,
        action,
        label: parse_optional_text("rule.label", &rule.label, MAX_NAME_CHARS)?,
    })
}

#[tonic::async_trait]
impl CallerRuleService for CallerRuleApi {
    async fn create_caller_rule(
        &self,
        request: Request<pb::CreateCallerRuleRequest>,
    ) -> Result<Response<pb::CallerRule>, Status> {
        let claims = claims_of(&request)?;
        let rule = request
            .into_inner()
            .rule
            .ok_or_else(|| Error::invalid("rule is required"))?;
        let rule = parse_rule(&claims, rule)?;
        let rule = self.rules.create(&claims, &rule).await?;
        Ok(with_org(caller_rule_to_pb(&rule), rule.org_id))
    }

    async fn list_caller_rules(
        &self,
        request: Request<pb::ListCallerRulesRequest>,
    ) -> Result<Response<pb::ListCallerRulesResponse>, Status> {
        let claims = claims_of(&request)?;
        let page = PageRequest::parse(request.get_ref().page_size, &request.get_ref().page_token)?;
        let page = self.rules.list(&claims, page).await?;
        Ok(Response::new(pb::ListCallerRulesResponse {
            rules: page.items.iter().map(caller_rule_to_pb).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn delete_caller_rule(
        &self,
        request: Request<pb::DeleteCallerRuleRequest>,
    ) -> Result<Response<pb::CallerRule>, Status> {
        let claims = claims_of(&request)?;
        let id = request
            .get_ref()
            .id
            .trim()
            .parse::<uuid::Uuid>()
            .map_err(|_| Error::invalid("id must be a caller rule's UUID"))?;
        let rule = self.rules.delete(&claims, id).await?;
        Ok(with_org(caller_rule_to_pb(&rule), rule.org_id))
    }

    async fn list_caller_rule_history(
        &self,
        request: Request<pb::ListCallerRuleHistoryRequest>,
    ) -> Result<Response<pb::ListCallerRuleHistoryResponse>, Status> {
        let claims = claims_of(&request)?;
        let page =
            PageRequest::<Seq>::parse(request.get_ref().page_size, &request.get_ref().page_token)?;
        let page = self.rules.history(&claims, page).await?;
        Ok(Response::new(pb::ListCallerRuleHistoryResponse {
            changes: page.items.iter().map(caller_rule_change_to_pb).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
