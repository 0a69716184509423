use tonic::Code;

use crate::helpers::*;
use switchboard::pb::{ResolveAgentRequest, ResolveAgentResponse};

fn resolve(called: &str, caller: &str) -> ResolveAgentRequest {
    ResolveAgentRequest {
        called_number: called.into(),
        caller_number: caller.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn resolves_a_human_formatted_number_to_agent_org_and_caller() {
    let app = TestApp::spawn().await;
    let mut agents = app.agents().await;
    let answer: ResolveAgentResponse = agents
        .resolve_agent(as_who(
            Who::Service,
            resolve("+1 (800) 555-0100", "+1 415-555-0123"),
        ))
        .await
        .map(|r| r.into_inner())
        .unwrap_or_else(|s| panic!("{s:?}"));
    let agent = answer.agent.unwrap_or_default();
    assert_eq!(agent.id, ACME_AGENT);
    assert_eq!(agent.phone_number, ACME_NUMBER);
    assert_eq!(agent.is_active, Some(true));
    let llm = agent.llm_config.unwrap_or_default();
    assert!(llm.fields.contains_key("model"));
    let org = answer.organization.unwrap_or_default();
    assert_eq!(org.id, ACME);
    assert_eq!(org.slug, "acme-dental");
    let caller = answer.caller.unwrap_or_default();
    assert_eq!(
        caller.id, ACME_CUSTOMER,
        "the caller record of the agent's own org"
    );
    assert_eq!(caller.name, "Grace Hopper");
}

#[tokio::test]
async fn the_same_caller_is_a_different_customer_in_each_org() {
    let app = TestApp::spawn().await;
    let mut agents = app.agents().await;
    for (called, customer, name) in [
        (ACME_NUMBER, ACME_CUSTOMER, "Grace Hopper"),
        (BLUEBIRD_NUMBER, BLUEBIRD_CUSTOMER, "Alan Turing"),
    ] {
        let answer = agents
            .resolve_agent(as_who(Who::Service, resolve(called, SHARED_CALLER)))
            .await
            .unwrap_or_else(|s| panic!("{s:?}"))
            .into_inner();
        let caller = answer.caller.unwrap_or_default();
        assert_eq!(caller.id, customer);
        assert_eq!(caller.name, name);
    }
}

#[tokio::test]
async fn unknown_or_missing_caller_gives_no_caller_record() {
    let app = TestApp::spawn().await;
    let mut agents = app.agents().await;
    for caller in ["", "+442071838750"] {
        let answer = agents
            .resolve_agent(as_who(Who::Service, resolve(ACME_NUMBER, caller)))
            .await
            .unwrap_or_else(|s| panic!("{s:?}"))
            .into_inner();
        assert!(answer.agent.is_some());
        assert!(answer.caller.is_none(), "caller {caller:?}");
    }
}

#[tokio::test]
async fn a_tenant_resolves_its_own_numbers_only() {
    let app = TestApp::spawn().await;
    let mut agents = app.agents().await;
    for who in Who::TENANTS {
        let (own, _) = who.orgs();
        let (own_number, other_number) = who.numbers();
        let answer = agents
            .resolve_agent(as_who(who, resolve(own_number, SHARED_CALLER)))
            .await
            .unwrap_or_else(|s| panic!("{who:?}: {s:?}"))
            .into_inner();
        assert_eq!(answer.organization.unwrap_or_default().id, own);
        assert_eq!(answer.caller.unwrap_or_default().org_id, own);
        let message = assert_code(
            agents
                .resolve_agent(as_who(who, resolve(other_number, SHARED_CALLER)))
                .await,
            Code::NotFound,
        );
        assert_eq!(message, "no agent answers this number");
    }
}

#[tokio::test]
async fn unknown_number_is_not_found_and_bad_numbers_are_invalid() {
    let app = TestApp::spawn().await;
    let mut agents = app.agents().await;
    assert_code(
        agents
            .resolve_agent(as_who(Who::Service, resolve("+18005550199", "")))
            .await,
        Code::NotFound,
    );
    for bad in [
        "",
        "8005550100",
        "+1800555010012345678",
        "+1 (800) 555-0100 ext. 2",
    ] {
        let message = assert_code(
            agents
                .resolve_agent(as_who(Who::Service, resolve(bad, "")))
                .await,
            Code::InvalidArgument,
        );
        assert!(message.starts_with("called_number"), "{bad:?}: {message}");
    }
    let message = assert_code(
        agents
            .resolve_agent(as_who(Who::Service, resolve(ACME_NUMBER, "not a number")))
            .await,
        Code::InvalidArgument,
    );
    assert!(message.starts_with("caller_number"), "{message}");
}

#[tokio::test]
async fn an_inactive_agent_is_a_failed_precondition() {
    let app = TestApp::spawn().await;
    app.db
        .exec(&format!(
            "update public.agents set is_active = false where id = '{ACME_AGENT}'"
        ))
        .await;
    let mut agents = app.agents().await;
    let message = assert_code(
        agents
            .resolve_agent(as_who(Who::Service, resolve(ACME_NUMBER, "")))
            .await,
        Code::FailedPrecondition,
    );
    assert!(message.contains("inactive"), "{message}");
}
