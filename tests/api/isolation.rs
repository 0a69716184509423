//! Tenant isolation over gRPC: every RPC, both orgs, all three roles.

use prost_types::FieldMask;
use serde_json::json;
use tonic::Code;

use crate::helpers::*;
use switchboard::pb::{
    Agent, CreateAgentRequest, DeleteAgentRequest, DeleteCustomerRequest, GetAgentRequest,
    GetCustomerRequest, ListAgentsRequest, ListCustomersRequest, LookupCustomerRequest,
    ResolveAgentRequest, UpdateAgentRequest, UpsertCustomerRequest,
};

fn other_rows(who: Who) -> (&'static str, &'static str, &'static str) {
    if who.orgs().0 == ACME {
        (BLUEBIRD_AGENT, BLUEBIRD_CUSTOMER, BLUEBIRD_NUMBER)
    } else {
        (ACME_AGENT, ACME_CUSTOMER, ACME_NUMBER)
    }
}

/// Runs every RPC against the other org's rows with `token` and asserts
/// nothing of it is read or changed.
async fn assert_cannot_touch_other_org(app: &TestApp, who: Who, token: &str) {
    let mut agents = app.agents().await;
    let mut customers = app.customers().await;
    let (own_org, other_org) = who.orgs();
    let (other_agent, other_customer, other_number) = other_rows(who);

    assert_code(
        agents
            .get_agent(authed(
                token,
                GetAgentRequest {
                    id: other_agent.into(),
                },
            ))
            .await,
        Code::NotFound,
    );
    assert_code(
        agents
            .resolve_agent(authed(
                token,
                ResolveAgentRequest {
                    called_number: other_number.into(),
                    caller_number: SHARED_CALLER.into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::NotFound,
    );
    let listed = agents
        .list_agents(authed(token, ListAgentsRequest::default()))
        .await
        .unwrap_or_else(|s| panic!("{who:?}: {s:?}"))
        .into_inner();
    assert!(!listed.agents.is_empty(), "{who:?} sees its own agents");
    assert!(
        listed.agents.iter().all(|a| a.org_id == own_org),
        "{who:?}: {listed:?}"
    );

    let update = UpdateAgentRequest {
        agent: Some(Agent {
            id: other_agent.into(),
            voice_id: "pwned".into(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["voice_id".into()],
        }),
    };
    let code = agents
        .update_agent(authed(token, update))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(code, Some(Code::NotFound), "{who:?}");
    let code = agents
        .delete_agent(authed(
            token,
            DeleteAgentRequest {
                id: other_agent.into(),
            },
        ))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(code, Some(Code::NotFound), "{who:?}");
    assert_code(
        agents
            .create_agent(authed(
                token,
                CreateAgentRequest {
                    agent: Some(new_agent(other_org, "+18005550177")),
                },
            ))
            .await,
        Code::PermissionDenied,
    );

    assert_code(
        customers
            .get_customer(authed(
                token,
                GetCustomerRequest {
                    id: other_customer.into(),
                },
            ))
            .await,
        Code::NotFound,
    );
    let own = customers
        .lookup_customer(authed(
            token,
            LookupCustomerRequest {
                phone: SHARED_CALLER.into(),
                org_id: String::new(),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{who:?}: {s:?}"))
        .into_inner();
    assert_eq!(own.org_id, own_org);
    assert_code(
        customers
            .lookup_customer(authed(
                token,
                LookupCustomerRequest {
                    phone: SHARED_CALLER.into(),
                    org_id: other_org.into(),
                },
            ))
            .await,
        Code::NotFound,
    );
    let listed = customers
        .list_customers(authed(token, ListCustomersRequest::default()))
        .await
        .unwrap_or_else(|s| panic!("{who:?}: {s:?}"))
        .into_inner();
    assert!(
        listed.customers.iter().all(|c| c.org_id == own_org),
        "{who:?}"
    );
    assert_code(
        customers
            .upsert_customer(authed(
                token,
                UpsertCustomerRequest {
                    customer: Some(new_customer(other_org, SHARED_CALLER, "Mallory")),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        customers
            .upsert_customer(authed(
                token,
                UpsertCustomerRequest {
                    customer: Some(new_customer(other_org, "+16505550150", "Mallory")),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    let code = customers
        .delete_customer(authed(
            token,
            DeleteCustomerRequest {
                id: other_customer.into(),
            },
        ))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(code, Some(Code::NotFound), "{who:?}");
}

async fn assert_other_org_untouched(app: &TestApp) {
    let agents: Vec<(String, String)> =
        sqlx::query_as("select phone_number, voice_id from public.agents order by phone_number")
            .fetch_all(&app.db.pool)
            .await
            .unwrap_or_default();
    assert_eq!(
        agents,
        [
            (ACME_NUMBER.into(), "alloy".into()),
            (BLUEBIRD_NUMBER.into(), "verse".into())
        ]
    );
    let customers: Vec<(String, String)> =
        sqlx::query_as("select org_id::text, name from public.customers order by org_id")
            .fetch_all(&app.db.pool)
            .await
            .unwrap_or_default();
    assert_eq!(
        customers,
        [
            (ACME.into(), "Grace Hopper".into()),
            (BLUEBIRD.into(), "Alan Turing".into())
        ]
    );
}

#[tokio::test]
async fn no_role_of_either_org_reads_or_writes_the_other() {
    let app = TestApp::spawn().await;
    for who in Who::TENANTS {
        assert_cannot_touch_other_org(&app, who, &token(who)).await;
    }
    assert_other_org_untouched(&app).await;
}

#[tokio::test]
async fn claims_about_org_or_role_in_the_token_are_ignored() {
    let app = TestApp::spawn().await;
    // An Acme viewer's token that claims to be a Bluebird admin every way a
    // crafted payload might.
    let crafted = token_with(
        Who::AcmeViewer,
        json!({
            "org_id": BLUEBIRD,
            "user_role": "admin",
            "app_metadata": {"org_id": BLUEBIRD, "role": "admin", "is_super_admin": true},
            "user_metadata": {"org_id": BLUEBIRD, "role": "admin"},
        }),
    );
    assert_cannot_touch_other_org(&app, Who::AcmeViewer, &crafted).await;
    // And it is still only a viewer in its own org.
    let mut customers = app.customers().await;
    assert_code(
        customers
            .upsert_customer(authed(
                &crafted,
                UpsertCustomerRequest {
                    customer: Some(new_customer("", "+16505550150", "X")),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    assert_other_org_untouched(&app).await;
}

#[tokio::test]
async fn membership_changes_take_effect_on_the_next_request() {
    let app = TestApp::spawn().await;
    let mut customers = app.customers().await;
    let viewer = token(Who::AcmeViewer);
    let write = || UpsertCustomerRequest {
        customer: Some(new_customer("", "+16505550160", "Promoted")),
    };

    assert_code(
        customers.upsert_customer(authed(&viewer, write())).await,
        Code::PermissionDenied,
    );
    app.db
        .exec("update public.profiles set role = 'manager' where id = 'a0000000-0000-4000-8000-000000000003'")
        .await;
    customers
        .upsert_customer(authed(&viewer, write()))
        .await
        .unwrap_or_else(|s| panic!("promotion is immediate: {s:?}"));

    // Moved to the other org: the same token now sees Bluebird, not Acme.
    app.db
        .exec(&format!("update public.profiles set org_id = '{BLUEBIRD}' where id = 'a0000000-0000-4000-8000-000000000003'"))
        .await;
    let found = customers
        .lookup_customer(authed(
            &viewer,
            LookupCustomerRequest {
                phone: SHARED_CALLER.into(),
                org_id: String::new(),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(found.org_id, BLUEBIRD);

    // Removed: the still-valid token sees nothing and writes nothing.
    app.db
        .exec("delete from auth.users where id = 'a0000000-0000-4000-8000-000000000003'")
        .await;
    assert_code(
        customers
            .lookup_customer(authed(
                &viewer,
                LookupCustomerRequest {
                    phone: SHARED_CALLER.into(),
                    org_id: String::new(),
                },
            ))
            .await,
        Code::NotFound,
    );
    let listed = customers
        .list_customers(authed(&viewer, ListCustomersRequest::default()))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert!(listed.customers.is_empty());
    assert_code(
        customers.upsert_customer(authed(&viewer, write())).await,
        Code::PermissionDenied,
    );
}

#[tokio::test]
async fn a_user_with_no_profile_sees_nothing() {
    let app = TestApp::spawn().await;
    app.db
        .exec("insert into auth.users (id, email) values ('c0000000-0000-4000-8000-000000000001', 'drifter@example.com')")
        .await;
    let stranger = switchboard::auth::mint_token(
        SECRET,
        switchboard::auth::DbRole::Authenticated,
        uuid::Uuid::parse_str("c0000000-0000-4000-8000-000000000001").ok(),
        600,
        serde_json::Map::new(),
    )
    .unwrap_or_default();
    let mut agents = app.agents().await;
    let listed = agents
        .list_agents(authed(&stranger, ListAgentsRequest::default()))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert!(listed.agents.is_empty());
    for number in [ACME_NUMBER, BLUEBIRD_NUMBER] {
        assert_code(
            agents
                .resolve_agent(authed(
                    &stranger,
                    ResolveAgentRequest {
                        called_number: number.into(),
                        caller_number: String::new(),
                        ..Default::default()
                    },
                ))
                .await,
            Code::NotFound,
        );
    }
    assert_code(
        agents
            .create_agent(authed(
                &stranger,
                CreateAgentRequest {
                    agent: Some(new_agent("", "+18005550178")),
                },
            ))
            .await,
        Code::PermissionDenied,
    );
}
