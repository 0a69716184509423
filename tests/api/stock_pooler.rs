//! A pooler as users meet it: PgBouncer with stock settings refuses any
//! startup parameter it does not know, so the service must connect without
//! sqlx's default `extra_float_digits`; and floats must still come back
//! exactly as they were written.

use std::str::FromStr;

use serde_json::json;
use sqlx::{postgres::PgConnectOptions, ConnectOptions};
use switchboard::pb::{CreateAgentRequest, GetAgentRequest, ListAgentsRequest};

use crate::helpers::*;

/// Values whose shortest decimal form needs all 17 digits, or that sit at
/// the ends of the f64 range: any rounding on the way would change them.
const FLOATS: [f64; 10] = [
    0.1,
    0.30000000000000004,
    1.0 / 3.0,
    2.0 / 3.0,
    123_456.789,
    1e-7,
    9_007_199_254_740_992.0,
    // Postgres prints these as 309-digit integers; without serde_json's
    // `float_roundtrip` the first came back one ULP off and the second
    // not at all ("number out of range": INTERNAL for the whole list).
    1.79e308,
    f64::MAX,
    f64::MIN_POSITIVE,
];

fn float_config() -> prost_types::Struct {
    let mut config = json!({"model": "gpt-4o", "temperature": 0.7, "top_p": 0.9});
    for (i, value) in FLOATS.iter().enumerate() {
        config[format!("f{i}")] = json!(value);
    }
    to_struct(config)
}

/// Every number in `config`, by key, as its exact bits.
fn float_bits(config: &Option<prost_types::Struct>) -> Vec<(String, u64)> {
    let mut bits: Vec<(String, u64)> = config
        .iter()
        .flat_map(|s| s.fields.iter())
        .filter_map(|(key, value)| match value.kind {
            Some(prost_types::value::Kind::NumberValue(n)) => Some((key.clone(), n.to_bits())),
            _ => None,
        })
        .collect();
    bits.sort();
    bits
}

/// Creates an agent whose `llm_config` holds `FLOATS`, then reads it back
/// by GetAgent, ListAgents and ResolveAgent (Postgres, then a cache tier).
async fn floats_round_trip(app: &TestApp) {
    let mut agents = app.agents().await;
    let written = float_config();
    let mut agent = new_agent("", "+18005550177");
    agent.llm_config = Some(written.clone());
    let created = agents
        .create_agent(as_who(
            Who::AcmeManager,
            CreateAgentRequest { agent: Some(agent) },
        ))
        .await
        .unwrap_or_else(|s| panic!("create: {s:?}"))
        .into_inner();
    let expected = float_bits(&Some(written));
    assert_eq!(expected.len(), FLOATS.len() + 2);
    assert_eq!(float_bits(&created.llm_config), expected, "as created");

    let fetched = agents
        .get_agent(as_who(
            Who::AcmeViewer,
            GetAgentRequest {
                id: created.id.clone(),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("get: {s:?}"))
        .into_inner();
    assert_eq!(float_bits(&fetched.llm_config), expected, "GetAgent");

    let listed = agents
        .list_agents(as_who(Who::AcmeViewer, ListAgentsRequest::default()))
        .await
        .unwrap_or_else(|s| panic!("list: {s:?}"))
        .into_inner();
    let listed = listed
        .agents
        .into_iter()
        .find(|a| a.id == created.id)
        .unwrap_or_else(|| panic!("the new agent is not listed"));
    assert_eq!(float_bits(&listed.llm_config), expected, "ListAgents");

    for _ in 0..2 {
        let (resolved, tier) = service_resolve(&mut agents, "+18005550177")
            .await
            .unwrap_or_else(|s| panic!("resolve: {s:?}"));
        let llm_config = resolved.agent.and_then(|a| a.llm_config);
        assert_eq!(float_bits(&llm_config), expected, "ResolveAgent ({tier})");
    }
}

#[tokio::test]
async fn llm_config_floats_round_trip_exactly() {
    // Through whatever the suite runs on: direct here, the stock PgBouncer
    // in `tests/pooled.rs`.
    let app = TestApp::spawn().await;
    floats_round_trip(&app).await;
}

#[tokio::test]
async fn the_service_works_through_a_pgbouncer_with_stock_settings() {
    let admin = PgConnectOptions::from_str(&admin_url()).unwrap_or_else(|e| panic!("{e}"));
    let bouncer = crate::pgbouncer::PgBouncer::start(admin.get_host(), admin.get_port()).await;
    let db = TestDb::seeded().await;
    let through_bouncer = format!(
        "postgres://{}@127.0.0.1:{}/{}",
        admin.get_username(),
        bouncer.port,
        db.name
    );

    // The pooler is stock: a client with sqlx's defaults is turned away...
    let refused = PgConnectOptions::from_str(&through_bouncer)
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        refused.contains("unsupported startup parameter"),
        "the test pooler must have stock settings; a default client got: {refused:?}"
    );

    // ... and the service, queries and all, is not.
    let app = TestApp::spawn_with(
        db,
        AppOptions {
            database_url: Some(through_bouncer),
            ..AppOptions::default()
        },
    )
    .await;
    let mut agents = app.agents().await;
    let listed = agents
        .list_agents(as_who(Who::AcmeViewer, ListAgentsRequest::default()))
        .await
        .unwrap_or_else(|s| panic!("ListAgents through a stock PgBouncer: {s:?}"))
        .into_inner();
    assert_eq!(listed.agents.len(), 1);
    let (tenant, _) = resolve_as(&mut agents, Who::AcmeViewer, ACME_NUMBER, SHARED_CALLER)
        .await
        .unwrap_or_else(|s| panic!("tenant ResolveAgent: {s:?}"));
    assert_eq!(tenant.agent.map(|a| a.id), Some(ACME_AGENT.to_owned()));
    let (service, tier) = service_resolve(&mut agents, BLUEBIRD_NUMBER)
        .await
        .unwrap_or_else(|s| panic!("service ResolveAgent: {s:?}"));
    assert_eq!(tier, "db");
    assert_eq!(service.agent.map(|a| a.id), Some(BLUEBIRD_AGENT.to_owned()));
    floats_round_trip(&app).await;
}
