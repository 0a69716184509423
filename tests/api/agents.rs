use prost_types::FieldMask;
use serde_json::json;
use tonic::Code;

use crate::helpers::*;
use switchboard::pb::{
    Agent, CreateAgentRequest, DeleteAgentRequest, GetAgentRequest, ListAgentsRequest,
    UpdateAgentRequest,
};

fn create(agent: Agent) -> CreateAgentRequest {
    CreateAgentRequest { agent: Some(agent) }
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

#[tokio::test]
async fn create_get_update_delete_round_trip() {
    let app = TestApp::spawn().await;
    let mut agents = app.agents().await;

    let created = agents
        .create_agent(as_who(
            Who::AcmeManager,
            create(new_agent("", "+1 (800) 555-0101")),
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(created.org_id, ACME, "written to the caller's own org");
    assert_eq!(created.phone_number, "+18005550101", "stored in E.164");
    assert_eq!(created.is_active, Some(true));
    assert!(created.created_at.is_some() && created.updated_at.is_some());

    let fetched = agents
        .get_agent(as_who(
            Who::AcmeViewer,
            GetAgentRequest {
                id: created.id.clone(),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(fetched, created);

    let patch = Agent {
        id: created.id.clone(),
        voice_id: "echo".into(),
        name: "ignored: not in the mask".into(),
        llm_config: Some(to_struct(
            json!({"model": "gpt-4.1", "tools": ["calendar"]}),
        )),
        ..Default::default()
    };
    let updated = agents
        .update_agent(as_who(
            Who::AcmeAdmin,
            UpdateAgentRequest {
                agent: Some(patch),
                update_mask: mask(&["voice_id", "llmConfig"]),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(updated.voice_id, "echo");
    assert_eq!(
        updated.name, "Night Line",
        "fields outside the mask are kept"
    );
    assert!(updated
        .llm_config
        .as_ref()
        .is_some_and(|c| c.fields.contains_key("tools")));
    let stamp = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| (t.seconds, t.nanos));
    assert!(stamp(&updated.updated_at) > stamp(&created.updated_at));

    let deactivated = agents
        .update_agent(as_who(
            Who::AcmeAdmin,
            UpdateAgentRequest {
                agent: Some(Agent {
                    id: created.id.clone(),
                    is_active: Some(false),
                    ..Default::default()
                }),
                update_mask: mask(&["is_active"]),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(deactivated.is_active, Some(false));

    agents
        .delete_agent(as_who(
            Who::AcmeManager,
            DeleteAgentRequest {
                id: created.id.clone(),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    assert_code(
        agents
            .get_agent(as_who(
                Who::AcmeAdmin,
                GetAgentRequest {
                    id: created.id.clone(),
                },
            ))
            .await,
        Code::NotFound,
    );
    assert_code(
        agents
            .delete_agent(as_who(
                Who::AcmeManager,
                DeleteAgentRequest { id: created.id },
            ))
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn list_pages_through_every_agent_once() {
    let app = TestApp::spawn().await;
    let mut agents = app.agents().await;
    for i in 0..5 {
        agents
            .create_agent(as_who(
                Who::AcmeAdmin,
                create(new_agent("", &format!("+1800555011{i}"))),
            ))
            .await
            .unwrap_or_else(|s| panic!("{s:?}"));
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = agents
            .list_agents(as_who(
                Who::AcmeViewer,
                ListAgentsRequest {
                    page_size: 2,
                    page_token: token.clone(),
                },
            ))
            .await
            .unwrap_or_else(|s| panic!("{s:?}"))
            .into_inner();
        assert!(page.agents.len() <= 2);
        pages += 1;
        seen.extend(page.agents.into_iter().map(|a| (a.id, a.org_id)));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 6, "5 created + the seeded one: {seen:?}");
    assert_eq!(pages, 3);
    assert!(seen.iter().all(|(_, org)| org == ACME));
    let mut ids: Vec<_> = seen.iter().map(|(id, _)| id.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 6);

    // The platform sees every org.
    let all = agents
        .list_agents(as_who(Who::Service, ListAgentsRequest::default()))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(all.agents.len(), 7);
    assert!(all.next_page_token.is_empty());
}

#[tokio::test]
async fn bad_arguments_are_invalid_and_named() {
    let app = TestApp::spawn().await;
    let mut agents = app.agents().await;
    let cases: Vec<(Agent, &str)> = vec![
        (new_agent("", "555-0100"), "phone_number"),
        (
            Agent {
                name: " ".into(),
                ..new_agent("", "+18005550111")
            },
            "name",
        ),
        (new_agent("not-a-uuid", "+18005550111"), "org_id"),
    ];
    for (agent, field) in cases {
        let message = assert_code(
            agents
                .create_agent(as_who(Who::AcmeAdmin, create(agent)))
                .await,
            Code::InvalidArgument,
        );
        assert!(message.contains(field), "{field}: {message}");
    }
    assert_code(
        agents
            .create_agent(as_who(Who::AcmeAdmin, CreateAgentRequest { agent: None }))
            .await,
        Code::InvalidArgument,
    );
    let message = assert_code(
        agents
            .get_agent(as_who(Who::AcmeAdmin, GetAgentRequest { id: "42".into() }))
            .await,
        Code::InvalidArgument,
    );
    assert!(message.contains("id"), "{message}");
    for token in ["garbage", "djE6bm90LWEtdXVpZA"] {
        assert_code(
            agents
                .list_agents(as_who(
                    Who::AcmeAdmin,
                    ListAgentsRequest {
                        page_size: 10,
                        page_token: token.into(),
                    },
                ))
                .await,
            Code::InvalidArgument,
        );
    }
    assert_code(
        agents
            .list_agents(as_who(
                Who::AcmeAdmin,
                ListAgentsRequest {
                    page_size: -1,
                    page_token: String::new(),
                },
            ))
            .await,
        Code::InvalidArgument,
    );
    for paths in [
        &[][..],
        &["org_id"][..],
        &["voice"][..],
        &["created_at"][..],
    ] {
        let message = assert_code(
            agents
                .update_agent(as_who(
                    Who::AcmeAdmin,
                    UpdateAgentRequest {
                        agent: Some(Agent {
                            id: ACME_AGENT.into(),
                            ..Default::default()
                        }),
                        update_mask: mask(paths),
                    },
                ))
                .await,
            Code::InvalidArgument,
        );
        assert!(message.contains("mask"), "{paths:?}: {message}");
    }
    let deep = (0..20).fold(json!(1), |inner, _| json!({ "a": inner }));
    let message = assert_code(
        agents
            .create_agent(as_who(
                Who::AcmeAdmin,
                create(Agent {
                    llm_config: Some(to_struct(json!({ "deep": deep }))),
                    ..new_agent("", "+18005550111")
                }),
            ))
            .await,
        Code::InvalidArgument,
    );
    assert!(message.contains("llm_config"), "{message}");
    // Deeper than the protobuf decoder's recursion limit: still the client's
    // fault, not an internal error.
    let deeper = (0..60).fold(json!(1), |inner, _| json!({ "a": inner }));
    let message = assert_code(
        agents
            .create_agent(as_who(
                Who::AcmeAdmin,
                create(Agent {
                    llm_config: Some(to_struct(json!({ "deep": deeper }))),
                    ..new_agent("", "+18005550111")
                }),
            ))
            .await,
        Code::InvalidArgument,
    );
    assert!(message.contains("not a valid message"), "{message}");
    // Nothing was half-written.
    let count: i64 = sqlx::query_scalar("select count(*) from public.agents")
        .fetch_one(&app.db.pool)
        .await
        .unwrap_or_default();
    assert_eq!(count, 2);
}

#[tokio::test]
async fn a_taken_number_already_exists_even_in_another_org() {
    let app = TestApp::spawn().await;
    let mut agents = app.agents().await;
    let message = assert_code(
        agents
            .create_agent(as_who(
                Who::BluebirdAdmin,
                create(new_agent("", "+1 800 555 0100")),
            ))
            .await,
        Code::AlreadyExists,
    );
    assert!(message.contains("phone"), "{message}");
    assert!(
        !message.contains("Acme"),
        "nothing about the other tenant leaks: {message}"
    );
    // Moving an agent onto a taken number, too.
    assert_code(
        agents
            .update_agent(as_who(
                Who::BluebirdAdmin,
                UpdateAgentRequest {
                    agent: Some(Agent {
                        id: BLUEBIRD_AGENT.into(),
                        phone_number: ACME_NUMBER.into(),
                        ..Default::default()
                    }),
                    update_mask: mask(&["phone_number"]),
                },
            ))
            .await,
        Code::AlreadyExists,
    );
}

#[tokio::test]
async fn viewers_cannot_write_agents() {
    let app = TestApp::spawn().await;
    let mut agents = app.agents().await;
    for who in [Who::AcmeViewer, Who::BluebirdViewer] {
        assert_code(
            agents
                .create_agent(as_who(who, create(new_agent("", "+18005550111"))))
                .await,
            Code::PermissionDenied,
        );
        let (own_agent, own_number) = if who == Who::AcmeViewer {
            (ACME_AGENT, ACME_NUMBER)
        } else {
            (BLUEBIRD_AGENT, BLUEBIRD_NUMBER)
        };
        assert_code(
            agents
                .update_agent(as_who(
                    who,
                    UpdateAgentRequest {
                        agent: Some(Agent {
                            id: own_agent.into(),
                            voice_id: "hacked".into(),
                            ..Default::default()
                        }),
                        update_mask: mask(&["voice_id"]),
                    },
                ))
                .await,
            Code::PermissionDenied,
        );
        assert_code(
            agents
                .delete_agent(as_who(
                    who,
                    DeleteAgentRequest {
                        id: own_agent.into(),
                    },
                ))
                .await,
            Code::PermissionDenied,
        );
        let _ = own_number;
    }
    let voices: Vec<String> =
        sqlx::query_scalar("select voice_id from public.agents order by phone_number")
            .fetch_all(&app.db.pool)
            .await
            .unwrap_or_default();
    assert_eq!(voices, ["alloy", "verse"]);
}

#[tokio::test]
async fn service_role_must_name_the_org() {
    let app = TestApp::spawn().await;
    let mut agents = app.agents().await;
    let message = assert_code(
        agents
            .create_agent(as_who(Who::Service, create(new_agent("", "+18005550111"))))
            .await,
        Code::InvalidArgument,
    );
    assert!(message.contains("org_id"), "{message}");
    let created = agents
        .create_agent(as_who(
            Who::Service,
            create(new_agent(BLUEBIRD, "+18005550111")),
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(created.org_id, BLUEBIRD);
    assert_code(
        agents
            .create_agent(as_who(
                Who::Service,
                create(new_agent(
                    "0c000000-0000-4000-8000-00000000000c",
                    "+18005550112",
                )),
            ))
            .await,
        Code::InvalidArgument,
    );
}

/// Well-formed E.164 that is no number: a country code with one digit after
/// it, an area code NANP never assigned (written as a person would, and
/// canonical).
const IMPOSSIBLE_NUMBERS: [&str; 3] = ["+10", "+19990000000", "+1 999 000 0000"];

#[tokio::test]
async fn only_valid_numbers_are_stored_for_agents() {
    let app = TestApp::spawn().await;
    let mut agents = app.agents().await;
    for number in IMPOSSIBLE_NUMBERS {
        let message = assert_code(
            agents
                .create_agent(as_who(Who::AcmeAdmin, create(new_agent("", number))))
                .await,
            Code::InvalidArgument,
        );
        assert!(
            message.starts_with("phone_number") && message.contains("not a valid number"),
            "{number}: {message}"
        );
        let message = assert_code(
            agents
                .update_agent(as_who(
                    Who::AcmeAdmin,
                    UpdateAgentRequest {
                        agent: Some(Agent {
                            id: ACME_AGENT.into(),
                            phone_number: number.into(),
                            ..Default::default()
                        }),
                        update_mask: mask(&["phone_number"]),
                    },
                ))
                .await,
            Code::InvalidArgument,
        );
        assert!(message.starts_with("phone_number"), "{number}: {message}");
    }
    // Nothing was half-written: Acme's agent kept its number, no agent was added.
    let numbers: Vec<String> =
        sqlx::query_scalar("select phone_number from public.agents order by phone_number")
            .fetch_all(&app.db.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(numbers, [ACME_NUMBER, BLUEBIRD_NUMBER]);
    // A valid number, in any written form, is still stored in E.164.
    let created = agents
        .create_agent(as_who(
            Who::AcmeAdmin,
            create(new_agent("", "+1 (650) 555-0177")),
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(created.phone_number, "+16505550177");
    let updated = agents
        .update_agent(as_who(
            Who::AcmeAdmin,
            UpdateAgentRequest {
                agent: Some(Agent {
                    id: created.id,
                    phone_number: "+442079460958".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["phone_number"]),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(updated.phone_number, "+442079460958");
    // Lookups keep the fast path: an impossible number is simply not found.
    for number in IMPOSSIBLE_NUMBERS {
        for who in [Who::Service, Who::AcmeViewer] {
            assert_code(
                agents
                    .resolve_agent(as_who(who, resolve_req(number, "")))
                    .await,
                Code::NotFound,
            );
        }
    }
}
