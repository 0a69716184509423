//! The audit trail of agent changes (`agent_history`, migration 0004) and
//! `ListAgentHistory`, over real gRPC with real tokens, plus the SQL-level
//! guarantees: every change is recorded whoever makes it, and nobody can
//! rewrite the record.

use prost_types::{value::Kind, FieldMask, Value};
use serde_json::json;
use tonic::Code;

use crate::helpers::*;
use switchboard::pb::{
    Agent, AgentChange, ChangeOperation, DeleteAgentRequest, FieldChange, ListAgentHistoryRequest,
    ListAgentsRequest, UpdateAgentRequest,
};

fn history(agent_id: &str) -> ListAgentHistoryRequest {
    ListAgentHistoryRequest {
        agent_id: agent_id.into(),
        ..Default::default()
    }
}

async fn list_history(app: &TestApp, who: Who, agent_id: &str) -> Vec<AgentChange> {
    app.agents()
        .await
        .list_agent_history(as_who(who, history(agent_id)))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner()
        .changes
}

async fn update_voice(app: &TestApp, who: Who, voice: &str) {
    app.agents()
        .await
        .update_agent(as_who(
            who,
            UpdateAgentRequest {
                agent: Some(Agent {
                    id: ACME_AGENT.into(),
                    voice_id: voice.into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["voice_id".into()],
                }),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
}

fn string(value: &str) -> Option<Value> {
    Some(Value {
        kind: Some(Kind::StringValue(value.into())),
    })
}

fn field<'a>(change: &'a AgentChange, name: &str) -> &'a FieldChange {
    change
        .fields
        .iter()
        .find(|f| f.field == name)
        .unwrap_or_else(|| panic!("no {name} in {change:?}"))
}

fn user(who: Who) -> String {
    who.user_id().map(|u| u.to_string()).unwrap_or_default()
}

#[tokio::test]
async fn updates_through_the_service_are_listed_newest_first_with_who_and_what() {
    let app = TestApp::spawn().await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    update_voice(&app, Who::AcmeAdmin, "nova").await;
    update_voice(&app, Who::AcmeManager, "echo").await;
    // Same value again: nothing changed, nothing recorded.
    update_voice(&app, Who::AcmeManager, "echo").await;

    let changes = list_history(&app, Who::AcmeAdmin, ACME_AGENT).await;
    let ops: Vec<i32> = changes.iter().map(|c| c.operation).collect();
    assert_eq!(
        ops,
        [
            ChangeOperation::Update as i32,
            ChangeOperation::Update as i32,
            ChangeOperation::Insert as i32
        ],
        "{changes:#?}"
    );
    assert!(changes.windows(2).all(|w| w[0].id > w[1].id));

    let (latest, first_update, seeded) = (&changes[0], &changes[1], &changes[2]);
    assert_eq!(latest.changed_by, user(Who::AcmeManager));
    assert_eq!(latest.actor_role, "authenticated");
    assert_eq!(latest.org_id, ACME);
    assert_eq!(latest.agent_id, ACME_AGENT);
    assert_eq!(latest.fields.len(), 1, "only voice_id changed");
    assert_eq!(field(latest, "voice_id").old_value, string("nova"));
    assert_eq!(field(latest, "voice_id").new_value, string("echo"));

    assert_eq!(first_update.changed_by, user(Who::AcmeAdmin));
    assert_eq!(field(first_update, "voice_id").old_value, string("alloy"));
    assert_eq!(field(first_update, "voice_id").new_value, string("nova"));
    let stamp = |c: &AgentChange| {
        c.changed_at
            .map(|t| (t.seconds, t.nanos))
            .unwrap_or_default()
    };
    let at = stamp(first_update).0;
    assert!(
        (before - 5..=before + 60).contains(&at),
        "changed_at {at} is not now ({before})"
    );
    assert!(stamp(latest) >= stamp(first_update));

    // The seed ran as plain SQL: no user, the SQL role, every field, no old.
    assert_eq!(seeded.changed_by, "");
    assert_eq!(seeded.actor_role, "postgres");
    let names: Vec<&str> = seeded.fields.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(
        names,
        [
            "after_hours_agent_id",
            "after_hours_destination",
            "business_hours",
            "fallback_destination",
            "is_active",
            "latest_version",
            "llm_config",
            "max_concurrent_calls",
            "name",
            "org_id",
            "phone_number",
            "serving",
            "voice_id"
        ]
    );
    assert!(seeded
        .fields
        .iter()
        .all(|f| f.old_value.is_none() && f.new_value.is_some()));
    assert_eq!(field(seeded, "voice_id").new_value, string("alloy"));
}

#[tokio::test]
async fn changes_made_outside_the_service_are_recorded_too() {
    let app = TestApp::spawn().await;
    // Plain SQL as the superuser, as in Studio or psql.
    app.db
        .exec(&format!(
            "update public.agents set voice_id = 'sage', is_active = false where id = '{ACME_AGENT}'"
        ))
        .await;
    // PostgREST's way: claims and role set in the transaction.
    let bluebird_admin = user(Who::BluebirdAdmin);
    app.db
        .exec(&format!(
            "begin;
             select set_config('request.jwt.claims', '{{\"role\":\"authenticated\",\"sub\":\"{bluebird_admin}\"}}', true),
                    set_config('role', 'authenticated', true);
             update public.agents set name = 'Bluebird Desk' where id = '{BLUEBIRD_AGENT}';
             commit;"
        ))
        .await;

    let acme = list_history(&app, Who::AcmeViewer, ACME_AGENT).await;
    let latest = &acme[0];
    assert_eq!(latest.operation, ChangeOperation::Update as i32);
    assert_eq!(latest.actor_role, "postgres");
    assert_eq!(latest.changed_by, "");
    assert_eq!(field(latest, "voice_id").new_value, string("sage"));
    assert_eq!(
        field(latest, "is_active").new_value,
        Some(Value {
            kind: Some(Kind::BoolValue(false))
        })
    );

    let bluebird = list_history(&app, Who::BluebirdViewer, BLUEBIRD_AGENT).await;
    assert_eq!(bluebird[0].changed_by, bluebird_admin);
    assert_eq!(bluebird[0].actor_role, "authenticated");
    assert_eq!(
        field(&bluebird[0], "name").old_value,
        string("Bluebird Front Desk")
    );

    // A delete, through the service: the history outlives the agent.
    app.agents()
        .await
        .delete_agent(as_who(
            Who::AcmeAdmin,
            DeleteAgentRequest {
                id: ACME_AGENT.into(),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    let after = list_history(&app, Who::AcmeViewer, ACME_AGENT).await;
    assert_eq!(after.len(), acme.len() + 1);
    assert_eq!(after[0].operation, ChangeOperation::Delete as i32);
    assert_eq!(after[0].changed_by, user(Who::AcmeAdmin));
    assert!(after[0]
        .fields
        .iter()
        .all(|f| f.old_value.is_some() && f.new_value.is_none()));
    assert_eq!(field(&after[0], "voice_id").old_value, string("sage"));
}

#[tokio::test]
async fn another_org_gets_not_found_exactly_like_a_missing_agent() {
    let app = TestApp::spawn().await;
    update_voice(&app, Who::AcmeAdmin, "nova").await;
    let mut agents = app.agents().await;
    let missing = "00000000-0000-4000-8000-000000000999";
    let unknown = assert_code(
        agents
            .list_agent_history(as_who(Who::BluebirdAdmin, history(missing)))
            .await,
        Code::NotFound,
    );
    for who in Who::BLUEBIRD {
        let message = assert_code(
            agents
                .list_agent_history(as_who(who, history(ACME_AGENT)))
                .await,
            Code::NotFound,
        );
        assert_eq!(message, unknown, "the message must not tell them apart");
    }
    // Even after the agent is gone, the other org still sees nothing.
    app.db
        .exec(&format!(
            "delete from public.agents where id = '{ACME_AGENT}'"
        ))
        .await;
    assert_code(
        agents
            .list_agent_history(as_who(Who::BluebirdAdmin, history(ACME_AGENT)))
            .await,
        Code::NotFound,
    );
    // A user of no org sees nothing either; anon may not ask at all.
    let stranger = token_with(
        Who::AcmeAdmin,
        json!({"sub": "c0000000-0000-4000-8000-0000000000aa"}),
    );
    assert_code(
        agents
            .list_agent_history(authed(&stranger, history(BLUEBIRD_AGENT)))
            .await,
        Code::NotFound,
    );
    let anon = switchboard::auth::mint_token(
        SECRET,
        switchboard::auth::DbRole::Anon,
        None,
        600,
        serde_json::Map::new(),
    )
    .unwrap_or_default();
    assert_code(
        agents
            .list_agent_history(authed(&anon, history(BLUEBIRD_AGENT)))
            .await,
        Code::PermissionDenied,
    );
}

#[tokio::test]
async fn every_member_and_the_platform_read_their_history() {
    let app = TestApp::spawn().await;
    update_voice(&app, Who::AcmeManager, "nova").await;
    for who in Who::ACME {
        let changes = list_history(&app, who, ACME_AGENT).await;
        assert_eq!(changes.len(), 2, "{who:?}");
        assert!(changes
            .iter()
            .all(|c| c.org_id == ACME && c.agent_id == ACME_AGENT));
    }
    assert_eq!(list_history(&app, Who::Service, ACME_AGENT).await.len(), 2);
    // The platform's own change: its role, and no user.
    update_voice(&app, Who::Service, "shimmer").await;
    let latest = &list_history(&app, Who::AcmeViewer, ACME_AGENT).await[0];
    assert_eq!(latest.actor_role, "service_role");
    assert_eq!(latest.changed_by, "");
    assert_eq!(field(latest, "voice_id").new_value, string("shimmer"));
    // A visible agent without recorded changes (it predates the trail) is an
    // empty list, not NOT_FOUND.
    app.db
        .exec("alter table public.agent_history disable trigger agent_history_append_only")
        .await;
    app.db.exec("delete from public.agent_history").await;
    app.db
        .exec("alter table public.agent_history enable trigger agent_history_append_only")
        .await;
    assert!(list_history(&app, Who::BluebirdViewer, BLUEBIRD_AGENT)
        .await
        .is_empty());
}

#[tokio::test]
async fn pages_walk_the_whole_history_newest_first() {
    let app = TestApp::spawn().await;
    for voice in ["v1", "v2", "v3", "v4", "v5", "v6"] {
        update_voice(&app, Who::AcmeAdmin, voice).await;
    }
    let all = list_history(&app, Who::AcmeViewer, ACME_AGENT).await;
    assert_eq!(all.len(), 7);

    let mut agents = app.agents().await;
    let mut walked = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = agents
            .list_agent_history(as_who(
                Who::AcmeViewer,
                ListAgentHistoryRequest {
                    agent_id: ACME_AGENT.into(),
                    page_size: 3,
                    page_token: token.clone(),
                },
            ))
            .await
            .unwrap_or_else(|s| panic!("{s:?}"))
            .into_inner();
        pages += 1;
        assert!(page.changes.len() <= 3);
        walked.extend(page.changes);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(walked, all);
    assert_eq!(field(&walked[0], "voice_id").new_value, string("v6"));

    // Bad input is INVALID_ARGUMENT, never a panic or an empty answer.
    let list_agents_token = agents
        .list_agents(as_who(
            Who::Service,
            ListAgentsRequest {
                page_size: 1,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner()
        .next_page_token;
    assert!(!list_agents_token.is_empty());
    for (agent_id, page_size, page_token) in [
        ("not-a-uuid", 0, String::new()),
        ("", 0, String::new()),
        (ACME_AGENT, -1, String::new()),
        (ACME_AGENT, 0, "garbage".to_owned()),
        (ACME_AGENT, 0, list_agents_token),
    ] {
        let message = assert_code(
            agents
                .list_agent_history(as_who(
                    Who::AcmeViewer,
                    ListAgentHistoryRequest {
                        agent_id: agent_id.into(),
                        page_size,
                        page_token,
                    },
                ))
                .await,
            Code::InvalidArgument,
        );
        assert!(!message.is_empty());
    }
}

#[tokio::test]
async fn secrets_in_llm_config_are_never_stored() {
    let app = TestApp::spawn().await;
    app.agents()
        .await
        .update_agent(as_who(
            Who::AcmeAdmin,
            UpdateAgentRequest {
                agent: Some(Agent {
                    id: ACME_AGENT.into(),
                    llm_config: Some(to_struct(json!({
                        "model": "gpt-4o",
                        "max_tokens": 256,
                        "api_key": "sk-live-abc123",
                        "tools": [{"name": "crm", "auth": {"access_token": "tok-xyz789"}}]
                    }))),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["llm_config".into()],
                }),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    let changes = list_history(&app, Who::AcmeAdmin, ACME_AGENT).await;
    let new = field(&changes[0], "llm_config").new_value.clone();
    let Some(Kind::StructValue(config)) = new.and_then(|v| v.kind) else {
        panic!("llm_config is not an object: {changes:?}");
    };
    assert_eq!(config.fields.get("api_key").cloned(), string("[redacted]"));
    assert_eq!(
        config.fields.get("max_tokens").and_then(|v| v.kind.clone()),
        Some(Kind::NumberValue(256.0)),
        "max_tokens is not a secret"
    );
    assert_eq!(config.fields.get("model").cloned(), string("gpt-4o"));
    let leaked: i64 = sqlx::query_scalar(
        "select count(*) from public.agent_history \
         where changes::text like '%sk-live-abc123%' or changes::text like '%tok-xyz789%'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(leaked, 0);
    let redacted: i64 = sqlx::query_scalar(
        "select count(*) from public.agent_history \
         where changes -> 'llm_config' -> 'new' -> 'tools' -> 0 -> 'auth' ->> 'access_token' = '[redacted]'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(redacted, 1, "nested secrets are redacted too");
}

/// Under each caller's claims, the way the service and PostgREST apply
/// them, and as the table's owner: history cannot be rewritten or forged.
#[tokio::test]
async fn history_rows_cannot_be_changed_by_anyone() {
    let db = TestDb::seeded().await;
    db.exec(&format!(
        "update public.agents set voice_id = 'nova' where id = '{ACME_AGENT}'"
    ))
    .await;
    let snapshot = || async {
        sqlx::query_scalar::<_, String>(
            "select coalesce(string_agg(h::text, '|' order by id), '') from public.agent_history h",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let before = snapshot().await;
    assert!(!before.is_empty());

    let admin = user(Who::AcmeAdmin);
    let as_admin = format!(
        "select set_config('request.jwt.claims', '{{\"role\":\"authenticated\",\"sub\":\"{admin}\"}}', true), \
                set_config('role', 'authenticated', true);"
    );
    let as_service =
        "select set_config('request.jwt.claims', '{\"role\":\"service_role\"}', true), \
                             set_config('role', 'service_role', true);"
            .to_owned();
    let as_owner = String::new();
    let writes = [
        "update public.agent_history set actor_role = 'nobody'".to_owned(),
        format!("update public.agent_history set changes = '{{}}' where org_id = '{ACME}'"),
        "delete from public.agent_history".to_owned(),
        format!("delete from public.agent_history where agent_id = '{ACME_AGENT}'"),
        "truncate public.agent_history".to_owned(),
        format!(
            "insert into public.agent_history (org_id, agent_id, actor_role, operation, changes) \
             values ('{ACME}', '{ACME_AGENT}', 'authenticated', 'update', '{{}}')"
        ),
    ];
    let mut refused = 0;
    for (who, setup) in [
        ("admin", &as_admin),
        ("service_role", &as_service),
        ("owner", &as_owner),
    ] {
        for write in &writes {
            let mut tx = db
                .pool
                .begin_with(format!("BEGIN; {setup}"))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let result = sqlx::raw_sql(write).execute(&mut *tx).await;
            let code = match &result {
                Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
                _ => None,
            };
            if result.is_ok() {
                let _ = tx.commit().await;
            } else {
                let _ = tx.rollback().await;
            }
            assert_eq!(
                code.as_deref(),
                Some("42501"),
                "{who}: {write} was not refused: {result:?}"
            );
            refused += 1;
        }
    }
    assert_eq!(refused, 18);
    assert_eq!(snapshot().await, before, "history changed");

    // While the same admin does read their org's history.
    let visible: i64 = {
        let mut tx = db
            .pool
            .begin_with(format!("BEGIN; {as_admin}"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let n = sqlx::query_scalar("select count(*) from public.agent_history")
            .fetch_one(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = tx.rollback().await;
        n
    };
    assert!(visible >= 2, "the admin does read their org's history");
}

/// Moving an agent to another org (service_role, or SQL) is recorded in both.
#[tokio::test]
async fn a_move_between_orgs_is_recorded_in_both() {
    let app = TestApp::spawn().await;
    app.db
        .exec(&format!(
            "update public.agents set org_id = '{BLUEBIRD}' where id = '{ACME_AGENT}'"
        ))
        .await;
    let seen_by_bluebird = list_history(&app, Who::BluebirdViewer, ACME_AGENT).await;
    assert_eq!(seen_by_bluebird.len(), 1, "only from the move on");
    assert_eq!(
        field(&seen_by_bluebird[0], "org_id").new_value,
        string(BLUEBIRD)
    );
    let seen_by_acme = list_history(&app, Who::AcmeViewer, ACME_AGENT).await;
    assert_eq!(seen_by_acme.len(), 2, "its insert and the move");
    assert_eq!(field(&seen_by_acme[0], "org_id").old_value, string(ACME));
}

/// TRUNCATE fires no row trigger: every agent still gets its delete record.
#[tokio::test]
async fn truncating_agents_records_a_delete_for_each() {
    let app = TestApp::spawn().await;
    app.db.exec("truncate public.agents cascade").await;
    for (who, agent, voice) in [
        (Who::AcmeViewer, ACME_AGENT, "alloy"),
        (Who::BluebirdViewer, BLUEBIRD_AGENT, "verse"),
    ] {
        let changes = list_history(&app, who, agent).await;
        assert_eq!(changes[0].operation, ChangeOperation::Delete as i32);
        assert_eq!(changes[0].actor_role, "postgres");
        assert_eq!(field(&changes[0], "voice_id").old_value, string(voice));
        assert_eq!(field(&changes[0], "voice_id").new_value, None);
    }
}

/// `actor_role` is what the claims say; `actor_sql_role` is the role the
/// session really had. A session of `authenticated` whose claims say
/// `service_role` cannot pass itself off as the platform.
#[tokio::test]
async fn the_sql_role_is_recorded_whatever_the_claims_say() {
    let app = TestApp::spawn().await;
    let admin = user(Who::AcmeAdmin);
    app.db
        .exec(&format!(
            "begin;
             select set_config('request.jwt.claims', '{{\"role\":\"service_role\",\"sub\":\"{admin}\"}}', true),
                    set_config('role', 'authenticated', true);
             update public.agents set voice_id = 'claimed' where id = '{ACME_AGENT}';
             commit;"
        ))
        .await;
    let latest = &list_history(&app, Who::AcmeViewer, ACME_AGENT).await[0];
    assert_eq!(field(latest, "voice_id").new_value, string("claimed"));
    assert_eq!(
        latest.actor_role, "service_role",
        "actor_role keeps its meaning"
    );
    assert_eq!(latest.actor_sql_role, "authenticated");

    // Through the service, for each kind of caller, and plain SQL.
    update_voice(&app, Who::AcmeManager, "nova").await;
    update_voice(&app, Who::Service, "echo").await;
    app.db
        .exec(&format!(
            "update public.agents set voice_id = 'sage' where id = '{ACME_AGENT}'"
        ))
        .await;
    let changes = list_history(&app, Who::AcmeViewer, ACME_AGENT).await;
    let roles: Vec<(&str, &str)> = changes[..3]
        .iter()
        .map(|c| (c.actor_role.as_str(), c.actor_sql_role.as_str()))
        .collect();
    assert_eq!(
        roles,
        [
            ("postgres", "postgres"),
            ("service_role", "service_role"),
            ("authenticated", "authenticated")
        ]
    );
}

/// Every key name the issue found unredacted, under any spelling of case
/// and separators, at any depth, and credentials inside URLs in any string.
#[tokio::test]
async fn secret_key_spellings_and_url_credentials_are_redacted() {
    let app = TestApp::spawn().await;
    let secret_keys = [
        "X-Api-Key",
        "x-auth-token",
        "access-token",
        "sessionToken",
        "idToken",
        "pwd",
        "signing_key",
        "hmacKey",
        "API.KEY",
        "Client Secret",
    ];
    let mut headers = serde_json::Map::new();
    for (i, key) in secret_keys.iter().enumerate() {
        headers.insert((*key).into(), json!(format!("leak-{i:02}-value")));
    }
    let config = json!({
        "model": "gpt-4o",
        "max_tokens": 256,
        "tools": [{
            "name": "crm",
            "headers": headers,
            "url": "https://svc-user:leak-url-password@crm.example.com/v1?region=eu",
            "webhook": "https://hooks.example.com/in?token=leak-query-token&ref=7",
            "feed": "https://feed.example.com/x?page=2&api_key=leak-query-key#top",
            "note": "mirror at ftp://leak-url-user@files.example.com/pub"
        }]
    });
    app.agents()
        .await
        .update_agent(as_who(Who::AcmeAdmin, set_llm_config(ACME_AGENT, config)))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));

    let recorded: serde_json::Value = sqlx::query_scalar(
        "select changes -> 'llm_config' -> 'new' -> 'tools' -> 0 from public.agent_history \
         where agent_id = $1::uuid order by id desc limit 1",
    )
    .bind(ACME_AGENT)
    .fetch_one(&app.db.pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    for key in secret_keys {
        assert_eq!(
            recorded["headers"][key],
            json!("[redacted]"),
            "{key}: {recorded:#}"
        );
    }
    assert_eq!(
        recorded["url"],
        json!("https://[redacted]@crm.example.com/v1?region=eu")
    );
    assert_eq!(
        recorded["webhook"],
        json!("https://hooks.example.com/in?token=[redacted]&ref=7")
    );
    assert_eq!(
        recorded["feed"],
        json!("https://feed.example.com/x?page=2&api_key=[redacted]#top")
    );
    assert_eq!(
        recorded["note"],
        json!("mirror at ftp://[redacted]@files.example.com/pub")
    );
    assert_eq!(recorded["name"], json!("crm"));
    let leaked: i64 = sqlx::query_scalar(
        "select count(*) from public.agent_history where changes::text like '%leak-%'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(leaked, 0);

    // Over gRPC too, and what is not a secret stays.
    let changes = list_history(&app, Who::AcmeAdmin, ACME_AGENT).await;
    let Some(Kind::StructValue(config)) = field(&changes[0], "llm_config")
        .new_value
        .clone()
        .and_then(|v| v.kind)
    else {
        panic!("llm_config is not an object: {changes:?}");
    };
    assert_eq!(
        config.fields.get("max_tokens").and_then(|v| v.kind.clone()),
        Some(Kind::NumberValue(256.0))
    );
    assert_eq!(config.fields.get("model").cloned(), string("gpt-4o"));
}
