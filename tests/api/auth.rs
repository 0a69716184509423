use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use serde_json::json;
use tonic::{Code, Request};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::helpers::*;
use switchboard::pb::{GetAgentRequest, ListAgentsRequest};

fn b64(value: serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated() {
    let app = TestApp::spawn().await;
    let mut agents = app.agents().await;

    let message = assert_code(
        agents
            .list_agents(Request::new(ListAgentsRequest::default()))
            .await,
        Code::Unauthenticated,
    );
    assert!(message.contains("authorization"), "{message}");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let good = token(Who::AcmeAdmin);
    let mut parts = good.split('.');
    let (header, payload) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let forged_payload = b64(json!({"role": "service_role", "exp": now + 600}));
    let other_secret = switchboard::auth::mint_token(
        "another-secret-that-is-also-32-characters-long",
        switchboard::auth::DbRole::ServiceRole,
        None,
        600,
        serde_json::Map::new(),
    )
    .unwrap_or_default();
    let cases = [
        ("not a jwt".to_owned(), "malformed"),
        (
            format!(
                "{header}.{forged_payload}.{}",
                good.rsplit('.').next().unwrap_or("")
            ),
            "forged payload",
        ),
        (other_secret, "wrong secret"),
        (
            format!("{}.{}.", b64(json!({"alg": "none", "typ": "JWT"})), payload),
            "alg none",
        ),
        (
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "typ": "JWT"})),
                forged_payload
            ),
            "alg none, service role",
        ),
    ];
    for (token, case) in &cases {
        let result = agents
            .list_agents(authed(token, ListAgentsRequest::default()))
            .await;
        assert!(result.is_err(), "{case} was accepted");
        let message = assert_code(result, Code::Unauthenticated);
        assert!(
            !message.contains(token.as_str()),
            "{case}: the token is not echoed"
        );
    }
    let long_expired = token_with(
        Who::AcmeAdmin,
        json!({"exp": now - 3600, "iat": now - 7200}),
    );
    let message = assert_code(
        agents
            .list_agents(authed(&long_expired, ListAgentsRequest::default()))
            .await,
        Code::Unauthenticated,
    );
    assert!(message.contains("expired"), "{message}");
    let not_yet = token_with(Who::AcmeAdmin, json!({"nbf": now + 3600}));
    assert_code(
        agents
            .list_agents(authed(&not_yet, ListAgentsRequest::default()))
            .await,
        Code::Unauthenticated,
    );
    let future_iat = token_with(Who::AcmeAdmin, json!({"iat": now + 3600}));
    assert_code(
        agents
            .list_agents(authed(&future_iat, ListAgentsRequest::default()))
            .await,
        Code::Unauthenticated,
    );
    let no_exp = sign(&json!({"role": "service_role", "iat": now}));
    assert_code(
        agents
            .list_agents(authed(&no_exp, ListAgentsRequest::default()))
            .await,
        Code::Unauthenticated,
    );
    // Expired 10 s ago: inside the 30 s clock-skew allowance, still accepted.
    let just_expired = token_with(Who::AcmeAdmin, json!({"exp": now - 10}));
    agents
        .list_agents(authed(&just_expired, ListAgentsRequest::default()))
        .await
        .unwrap_or_else(|s| panic!("inside the leeway: {s:?}"));
    let huge = token_with(Who::AcmeAdmin, json!({"padding": "x".repeat(10_000)}));
    let message = assert_code(
        agents
            .list_agents(authed(&huge, ListAgentsRequest::default()))
            .await,
        Code::Unauthenticated,
    );
    assert!(message.contains("too large"), "{message}");
    for role in ["postgres", "supabase_admin", "admin", ""] {
        let wrong_role = token_with(Who::AcmeAdmin, json!({"role": role}));
        assert_code(
            agents
                .list_agents(authed(&wrong_role, ListAgentsRequest::default()))
                .await,
            Code::Unauthenticated,
        );
    }
    // Basic instead of Bearer.
    let mut request = Request::new(GetAgentRequest {
        id: ACME_AGENT.into(),
    });
    if let Ok(value) = format!("Basic {good}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    assert_code(agents.get_agent(request).await, Code::Unauthenticated);
}

#[tokio::test]
async fn anon_sees_nothing() {
    let app = TestApp::spawn().await;
    let mut agents = app.agents().await;
    let anon = switchboard::auth::mint_token(
        SECRET,
        switchboard::auth::DbRole::Anon,
        None,
        600,
        serde_json::Map::new(),
    )
    .unwrap_or_default();
    let result = agents
        .list_agents(authed(&anon, ListAgentsRequest::default()))
        .await;
    match result {
        Ok(page) => assert!(page.into_inner().agents.is_empty()),
        Err(status) => assert_eq!(status.code(), Code::PermissionDenied),
    }
}

#[tokio::test]
async fn health_and_reflection_need_no_token() {
    let app = TestApp::spawn().await;
    let mut health = HealthClient::new(app.channel().await);
    for service in [
        "",
        "switchboard.v1.AgentService",
        "switchboard.v1.CustomerService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("{s:?}"))
            .into_inner()
            .status;
        assert_eq!(status, 1, "{service:?} is SERVING");
    }
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            app.channel().await,
        );
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    let response = stream
        .message()
        .await
        .ok()
        .flatten()
        .and_then(|r| r.message_response);
    let Some(
        tonic_reflection::pb::v1::server_reflection_response::MessageResponse::ListServicesResponse(
            list,
        ),
    ) = response
    else {
        panic!("no list of services");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"switchboard.v1.AgentService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}
