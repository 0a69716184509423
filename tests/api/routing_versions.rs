//! Agent versions end to end: PublishAgent freezes the draft, calls get the
//! version `serving` picks (latest, pinned, or a split by call id), the
//! record names it, CompareAgentVersions diffs two, bad input is refused,
//! the database keeps versions immutable, and publishing and pinning are
//! in the agent's audit trail.

use prost_types::{value::Kind, FieldMask, Struct, Value};
use tonic::Code;

use crate::calls::start;
use crate::helpers::*;
use switchboard::pb::{
    version_serving::Rule, Agent, AgentChange, AgentVersion, Call, CallOutcome,
    CompareAgentVersionsRequest, FieldChange, GetAgentRequest, GetCallRequest,
    ListAgentHistoryRequest, ListAgentVersionsRequest, PublishAgentRequest, ResolveAgentRequest,
    ResolveAgentResponse, SetOrganizationCallLimitRequest, UpdateAgentRequest, VersionServing,
    VersionSplit, VersionWeight,
};

// ---------------------------------------------------------------- helpers

fn user(who: Who) -> String {
    who.user_id().map(|u| u.to_string()).unwrap_or_default()
}

async fn try_publish(
    app: &TestApp,
    who: Who,
    agent_id: &str,
) -> Result<AgentVersion, tonic::Status> {
    app.agents()
        .await
        .publish_agent(as_who(
            who,
            PublishAgentRequest {
                agent_id: agent_id.into(),
            },
        ))
        .await
        .map(|r| r.into_inner())
}

async fn publish(app: &TestApp, who: Who, agent_id: &str) -> AgentVersion {
    try_publish(app, who, agent_id)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
}

async fn try_versions(
    app: &TestApp,
    who: Who,
    agent_id: &str,
) -> Result<Vec<AgentVersion>, tonic::Status> {
    app.agents()
        .await
        .list_agent_versions(as_who(
            who,
            ListAgentVersionsRequest {
                agent_id: agent_id.into(),
                ..Default::default()
            },
        ))
        .await
        .map(|r| r.into_inner().versions)
}

async fn versions(app: &TestApp, who: Who, agent_id: &str) -> Vec<AgentVersion> {
    try_versions(app, who, agent_id)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
}

async fn update(app: &TestApp, who: Who, request: UpdateAgentRequest) -> Agent {
    app.agents()
        .await
        .update_agent(as_who(who, request))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner()
}

fn serving_req(agent_id: &str, rule: Option<Rule>) -> UpdateAgentRequest {
    UpdateAgentRequest {
        agent: Some(Agent {
            id: agent_id.into(),
            serving: rule.map(|rule| VersionServing { rule: Some(rule) }),
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["serving".into()],
        }),
    }
}

async fn try_serve(
    app: &TestApp,
    who: Who,
    agent_id: &str,
    rule: Option<Rule>,
) -> Result<Agent, tonic::Status> {
    app.agents()
        .await
        .update_agent(as_who(who, serving_req(agent_id, rule)))
        .await
        .map(|r| r.into_inner())
}

async fn serve(app: &TestApp, agent_id: &str, rule: Option<Rule>) -> Agent {
    try_serve(app, Who::AcmeAdmin, agent_id, rule)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
}

fn split(arms: &[(i32, i32)]) -> Rule {
    Rule::Split(VersionSplit {
        arms: arms
            .iter()
            .map(|&(version, weight)| VersionWeight { version, weight })
            .collect(),
    })
}

async fn get_agent(app: &TestApp, who: Who, id: &str) -> Agent {
    app.agents()
        .await
        .get_agent(as_who(who, GetAgentRequest { id: id.into() }))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner()
}

/// ResolveAgent for Acme's number as a media server, placing `call_id`.
async fn resolve_call(app: &TestApp, call_id: &str) -> ResolveAgentResponse {
    app.agents()
        .await
        .resolve_agent(as_who(
            Who::Service,
            ResolveAgentRequest {
                called_number: ACME_NUMBER.into(),
                caller_number: String::new(),
                call_id: call_id.into(),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner()
}

/// The call's record, as Acme's admin reads it.
async fn record(app: &TestApp, call_id: &str) -> Call {
    app.calls()
        .await
        .get_call(as_who(
            Who::AcmeAdmin,
            GetCallRequest {
                call_id: call_id.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner()
}

fn agent_voice(agent: Option<&Agent>) -> &str {
    agent.map(|a| a.voice_id.as_str()).unwrap_or_default()
}

fn string_of(value: Option<&Value>) -> Option<&str> {
    match value.and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn number_of(value: Option<&Value>) -> Option<f64> {
    match value.and_then(|v| v.kind.as_ref()) {
        Some(Kind::NumberValue(n)) => Some(*n),
        _ => None,
    }
}

fn config_str<'a>(config: Option<&'a Struct>, key: &str) -> Option<&'a str> {
    string_of(config.and_then(|c| c.fields.get(key)))
}

fn change<'a>(changes: &'a [FieldChange], name: &str) -> &'a FieldChange {
    changes
        .iter()
        .find(|f| f.field == name)
        .unwrap_or_else(|| panic!("no {name} in {changes:#?}"))
}

/// Publishes Acme's agent as it is (voice alloy: v1), then with voice nova
/// (v2), as Acme's admin.
async fn two_versions(app: &TestApp) {
    assert_eq!(publish(app, Who::AcmeAdmin, ACME_AGENT).await.version, 1);
    update(app, Who::AcmeAdmin, set_voice(ACME_AGENT, "nova")).await;
    assert_eq!(publish(app, Who::AcmeAdmin, ACME_AGENT).await.version, 2);
}

/// The split as `src/domain/routing.rs` documents it: FNV-1a 64 of
/// `agent_id ":" call_id`, modulo the total weight, first arm whose running
/// total exceeds it.
fn documented_arm(agent_id: &str, call_id: &str, arms: &[(i32, u64)]) -> i32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in agent_id.bytes().chain([b':']).chain(call_id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let total: u64 = arms.iter().map(|(_, w)| w).sum();
    let mut point = hash % total;
    for &(version, weight) in arms {
        if point < weight {
            return version;
        }
        point -= weight;
    }
    arms.last().map_or(0, |(v, _)| *v)
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn publishing_freezes_the_draft_and_calls_see_edits_only_once_published() {
    let app = TestApp::spawn().await;
    let before = now() as i64;

    let v1 = publish(&app, Who::AcmeAdmin, ACME_AGENT).await;
    assert_eq!(v1.version, 1);
    assert_eq!(v1.agent_id, ACME_AGENT);
    assert_eq!(v1.org_id, ACME);
    assert_eq!(v1.name, "Acme Reception");
    assert_eq!(v1.voice_id, "alloy");
    assert_eq!(
        config_str(v1.llm_config.as_ref(), "model"),
        Some("gpt-4o-mini")
    );
    assert_eq!(v1.published_by, user(Who::AcmeAdmin));
    let at = v1.published_at.map(|t| t.seconds).unwrap_or_default();
    assert!(
        (before - 5..=before + 60).contains(&at),
        "published_at {at}"
    );

    // The draft changes; calls keep getting version 1.
    let draft = update(&app, Who::AcmeAdmin, set_voice(ACME_AGENT, "nova")).await;
    assert_eq!(draft.voice_id, "nova", "UpdateAgent answers the draft");
    assert_eq!(draft.latest_version, 1);
    let resolved = resolve_call(&app, "").await;
    assert_eq!(resolved.agent_version, 1);
    assert_eq!(agent_voice(resolved.agent.as_deref()), "alloy");
    let decision = start(&app, ACME_NUMBER, "", "draft-1").await;
    assert_eq!(decision.outcome, CallOutcome::Answer as i32);
    assert_eq!(decision.agent_version, 1);
    assert_eq!(agent_voice(decision.agent.as_ref()), "alloy");
    // GetAgent shows the draft and the latest version.
    let shown = get_agent(&app, Who::AcmeViewer, ACME_AGENT).await;
    assert_eq!((shown.voice_id.as_str(), shown.latest_version), ("nova", 1));

    // Published: calls get the draft now.
    let v2 = publish(&app, Who::AcmeAdmin, ACME_AGENT).await;
    assert_eq!((v2.version, v2.voice_id.as_str()), (2, "nova"));
    let resolved = resolve_call(&app, "").await;
    assert_eq!(resolved.agent_version, 2);
    assert_eq!(agent_voice(resolved.agent.as_deref()), "nova");
    let decision = start(&app, ACME_NUMBER, "", "draft-2").await;
    assert_eq!(decision.agent_version, 2);
    assert_eq!(agent_voice(decision.agent.as_ref()), "nova");
    assert_eq!(record(&app, "draft-1").await.agent_version, 1);
    assert_eq!(record(&app, "draft-2").await.agent_version, 2);

    // Editing the draft again leaves the published versions as they were.
    update(
        &app,
        Who::AcmeAdmin,
        set_llm_config(ACME_AGENT, serde_json::json!({"model": "gpt-4.1"})),
    )
    .await;
    let listed = versions(&app, Who::AcmeAdmin, ACME_AGENT).await;
    let numbers: Vec<i32> = listed.iter().map(|v| v.version).collect();
    assert_eq!(numbers, [2, 1], "newest first");
    assert_eq!(listed[1], v1, "version 1 as published");
    assert_eq!(listed[0], v2, "version 2 as published");
    assert_eq!(
        config_str(listed[0].llm_config.as_ref(), "model"),
        Some("gpt-4o-mini")
    );
    assert!(listed
        .iter()
        .all(|v| v.published_by == user(Who::AcmeAdmin)));

    // Pages of one.
    let mut agents = app.agents().await;
    let first = agents
        .list_agent_versions(as_who(
            Who::AcmeViewer,
            ListAgentVersionsRequest {
                agent_id: ACME_AGENT.into(),
                page_size: 1,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(first.versions.len(), 1);
    assert_eq!(first.versions[0].version, 2);
    assert!(!first.next_page_token.is_empty());
    let second = agents
        .list_agent_versions(as_who(
            Who::AcmeViewer,
            ListAgentVersionsRequest {
                agent_id: ACME_AGENT.into(),
                page_size: 1,
                page_token: first.next_page_token,
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(
        second
            .versions
            .iter()
            .map(|v| v.version)
            .collect::<Vec<_>>(),
        [1]
    );
}

#[tokio::test]
async fn an_agent_never_published_serves_its_own_fields_as_version_0() {
    let app = TestApp::spawn().await;
    let resolved = resolve_call(&app, "any").await;
    assert_eq!(resolved.agent_version, 0);
    let agent = resolved.agent.unwrap_or_default();
    assert_eq!(
        (agent.name.as_str(), agent.voice_id.as_str()),
        ("Acme Reception", "alloy")
    );
    assert_eq!(agent.latest_version, 0);

    // Without a version, an edit is what calls get at once.
    update(&app, Who::AcmeAdmin, set_voice(ACME_AGENT, "nova")).await;
    let resolved = resolve_call(&app, "").await;
    assert_eq!(agent_voice(resolved.agent.as_deref()), "nova");
    assert_eq!(resolved.agent_version, 0);
    let decision = start(&app, ACME_NUMBER, "", "unpublished-1").await;
    assert_eq!(decision.outcome, CallOutcome::Answer as i32);
    assert_eq!(decision.agent_version, 0);
    assert_eq!(agent_voice(decision.agent.as_ref()), "nova");
    assert_eq!(record(&app, "unpublished-1").await.agent_version, 0);

    let shown = get_agent(&app, Who::AcmeAdmin, ACME_AGENT).await;
    assert_eq!(shown.latest_version, 0);
    assert!(shown.serving.and_then(|s| s.rule).is_none());
    assert!(versions(&app, Who::AcmeViewer, ACME_AGENT).await.is_empty());
}

#[tokio::test]
async fn a_pinned_version_is_served_and_recorded_and_clearing_it_serves_the_latest() {
    let app = TestApp::spawn().await;
    two_versions(&app).await;

    // Roll back: pin version 1.
    let pinned = serve(&app, ACME_AGENT, Some(Rule::PinnedVersion(1))).await;
    assert_eq!(
        pinned.serving.and_then(|s| s.rule),
        Some(Rule::PinnedVersion(1))
    );
    let resolved = resolve_call(&app, "").await;
    assert_eq!(resolved.agent_version, 1);
    assert_eq!(agent_voice(resolved.agent.as_deref()), "alloy");
    let decision = start(&app, ACME_NUMBER, "", "pinned-1").await;
    assert_eq!(decision.agent_version, 1);
    assert_eq!(agent_voice(decision.agent.as_ref()), "alloy");
    assert_eq!(record(&app, "pinned-1").await.agent_version, 1);

    // A new version does not move a pin.
    update(&app, Who::AcmeAdmin, set_voice(ACME_AGENT, "echo")).await;
    assert_eq!(publish(&app, Who::AcmeAdmin, ACME_AGENT).await.version, 3);
    let resolved = resolve_call(&app, "").await;
    assert_eq!(resolved.agent_version, 1, "still pinned");
    assert_eq!(agent_voice(resolved.agent.as_deref()), "alloy");

    // Pin another older one.
    serve(&app, ACME_AGENT, Some(Rule::PinnedVersion(2))).await;
    let decision = start(&app, ACME_NUMBER, "", "pinned-2").await;
    assert_eq!(decision.agent_version, 2);
    assert_eq!(agent_voice(decision.agent.as_ref()), "nova");
    assert_eq!(record(&app, "pinned-2").await.agent_version, 2);

    // Cleared: the latest.
    let cleared = serve(&app, ACME_AGENT, None).await;
    assert!(cleared.serving.and_then(|s| s.rule).is_none());
    let resolved = resolve_call(&app, "").await;
    assert_eq!(resolved.agent_version, 3);
    assert_eq!(agent_voice(resolved.agent.as_deref()), "echo");
    let decision = start(&app, ACME_NUMBER, "", "latest-3").await;
    assert_eq!(decision.agent_version, 3);
    assert_eq!(record(&app, "latest-3").await.agent_version, 3);
}

#[tokio::test]
async fn a_split_places_each_call_by_its_id_the_same_on_every_replica_and_retry() {
    let app = TestApp::spawn().await;
    two_versions(&app).await;
    // Room for every call of this test.
    app.calls()
        .await
        .set_organization_call_limit(as_who(
            Who::Service,
            SetOrganizationCallLimitRequest {
                org_id: ACME.into(),
                max_concurrent_calls: Some(1000),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"));
    let agent = serve(&app, ACME_AGENT, Some(split(&[(1, 90), (2, 10)]))).await;
    assert_eq!(
        agent.serving.and_then(|s| s.rule),
        Some(split(&[(1, 90), (2, 10)]))
    );

    let ids: Vec<String> = (0..100).map(|i| format!("split-{i}")).collect();
    let mut placed = Vec::new();
    for id in &ids {
        let decision = start(&app, ACME_NUMBER, "", id).await;
        assert_eq!(decision.outcome, CallOutcome::Answer as i32, "{id}");
        let voice = if decision.agent_version == 1 {
            "alloy"
        } else {
            "nova"
        };
        assert_eq!(agent_voice(decision.agent.as_ref()), voice, "{id}");
        assert_eq!(
            decision.agent_version,
            documented_arm(ACME_AGENT, id, &[(1, 90), (2, 10)]),
            "{id}: the documented split function"
        );
        placed.push(decision.agent_version);
    }
    let second = placed.iter().filter(|v| **v == 2).count();
    let first = placed.iter().filter(|v| **v == 1).count();
    assert_eq!(first + second, 100, "{placed:?}");
    assert!((1..=30).contains(&second), "90/10: {second} of 100 on v2");

    // The same ids: ResolveAgent here and on another replica, the record,
    // and StartCall retried on that replica.
    let replica = app.spawn_replica(AppOptions::default()).await;
    for (id, version) in ids.iter().zip(&placed) {
        assert_eq!(resolve_call(&app, id).await.agent_version, *version, "{id}");
        let there = resolve_call(&replica, id).await;
        assert_eq!(there.agent_version, *version, "{id} on the replica");
    }
    for (id, version) in ids.iter().zip(&placed).take(20) {
        assert_eq!(record(&app, id).await.agent_version, *version, "{id}");
        let retried = start(&replica, ACME_NUMBER, "", id).await;
        assert!(retried.replayed, "{id}");
        assert_eq!(retried.agent_version, *version, "{id} retried");
        let retried = start(&app, ACME_NUMBER, "", id).await;
        assert!(retried.replayed, "{id}");
        assert_eq!(retried.agent_version, *version, "{id} retried");
    }
}

#[tokio::test]
async fn a_retry_after_a_serving_change_replays_the_version_it_was_given() {
    let app = TestApp::spawn().await;
    two_versions(&app).await;
    serve(&app, ACME_AGENT, Some(Rule::PinnedVersion(1))).await;
    let first = start(&app, ACME_NUMBER, "", "retry-pin").await;
    assert_eq!(first.agent_version, 1);
    serve(&app, ACME_AGENT, Some(Rule::PinnedVersion(2))).await;
    let retried = start(&app, ACME_NUMBER, "", "retry-pin").await;
    assert!(retried.replayed);
    assert_eq!(record(&app, "retry-pin").await.agent_version, 1);
    assert_eq!(
        retried.agent_version, 1,
        "a retry gets the same decision: the version the call was answered with"
    );
    assert_eq!(agent_voice(retried.agent.as_ref()), "alloy");
}

#[tokio::test]
async fn compare_lists_name_voice_and_each_config_key_that_changed() {
    let app = TestApp::spawn().await;
    publish(&app, Who::AcmeAdmin, ACME_AGENT).await;
    update(
        &app,
        Who::AcmeManager,
        UpdateAgentRequest {
            agent: Some(Agent {
                id: ACME_AGENT.into(),
                name: "Acme Front Desk".into(),
                voice_id: "nova".into(),
                llm_config: Some(to_struct(serde_json::json!({
                    "model": "gpt-4o-mini",
                    "temperature": 0.7,
                    "max_tokens": 256
                }))),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["name".into(), "voice_id".into(), "llm_config".into()],
            }),
        },
    )
    .await;
    publish(&app, Who::AcmeManager, ACME_AGENT).await;

    let compare = |from: i32, to: i32| {
        let app = &app;
        async move {
            app.agents()
                .await
                .compare_agent_versions(as_who(
                    Who::AcmeViewer,
                    CompareAgentVersionsRequest {
                        agent_id: ACME_AGENT.into(),
                        from_version: from,
                        to_version: to,
                    },
                ))
                .await
                .map(|r| r.into_inner().changes)
        }
    };
    let changes = compare(1, 2).await.unwrap_or_else(|s| panic!("{s:?}"));
    let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "llm_config.max_tokens",
            "llm_config.system_prompt",
            "llm_config.temperature",
            "name",
            "voice_id"
        ],
        "the model is the same: not listed"
    );
    let name = change(&changes, "name");
    assert_eq!(string_of(name.old_value.as_ref()), Some("Acme Reception"));
    assert_eq!(string_of(name.new_value.as_ref()), Some("Acme Front Desk"));
    let voice = change(&changes, "voice_id");
    assert_eq!(string_of(voice.old_value.as_ref()), Some("alloy"));
    assert_eq!(string_of(voice.new_value.as_ref()), Some("nova"));
    let temperature = change(&changes, "llm_config.temperature");
    assert_eq!(number_of(temperature.old_value.as_ref()), Some(0.3));
    assert_eq!(number_of(temperature.new_value.as_ref()), Some(0.7));
    let added = change(&changes, "llm_config.max_tokens");
    assert!(added.old_value.is_none(), "{added:?}");
    assert_eq!(number_of(added.new_value.as_ref()), Some(256.0));
    let removed = change(&changes, "llm_config.system_prompt");
    assert_eq!(
        string_of(removed.old_value.as_ref()),
        Some("You are the front desk of Acme Dental.")
    );
    assert!(removed.new_value.is_none(), "{removed:?}");

    // Backwards: old and new swap.
    let back = compare(2, 1).await.unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(
        string_of(change(&back, "voice_id").new_value.as_ref()),
        Some("alloy")
    );
    assert!(compare(2, 2)
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .is_empty());
    assert_code(compare(0, 2).await, Code::InvalidArgument);
    assert_code(compare(1, 0).await, Code::InvalidArgument);
    assert_code(compare(1, 3).await, Code::NotFound);
}

#[tokio::test]
async fn bad_versions_and_splits_and_other_callers_are_refused() {
    let app = TestApp::spawn().await;
    // Nothing published yet: no version to pin.
    assert_code(
        try_serve(
            &app,
            Who::AcmeAdmin,
            ACME_AGENT,
            Some(Rule::PinnedVersion(1)),
        )
        .await,
        Code::InvalidArgument,
    );
    publish(&app, Who::AcmeAdmin, ACME_AGENT).await;
    let message = assert_code(
        try_serve(
            &app,
            Who::AcmeAdmin,
            ACME_AGENT,
            Some(Rule::PinnedVersion(2)),
        )
        .await,
        Code::InvalidArgument,
    );
    assert!(message.contains('2'), "{message}");
    for bad in [0, -1] {
        assert_code(
            try_serve(
                &app,
                Who::AcmeAdmin,
                ACME_AGENT,
                Some(Rule::PinnedVersion(bad)),
            )
            .await,
            Code::InvalidArgument,
        );
    }
    update(&app, Who::AcmeAdmin, set_voice(ACME_AGENT, "nova")).await;
    publish(&app, Who::AcmeAdmin, ACME_AGENT).await;
    for arms in [
        vec![(1, 0), (2, 0)],
        vec![(1, 100)],
        vec![(1, 50), (1, 50)],
        vec![(1, 50), (3, 50)],
        vec![(1, 9_000), (2, 2_000)],
        vec![(1, -1), (2, 50)],
        vec![(1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (2, 1)],
    ] {
        assert_code(
            try_serve(&app, Who::AcmeAdmin, ACME_AGENT, Some(split(&arms))).await,
            Code::InvalidArgument,
        );
    }
    // None of it was kept.
    let agent = get_agent(&app, Who::AcmeAdmin, ACME_AGENT).await;
    assert!(
        agent.serving.and_then(|s| s.rule).is_none(),
        "serving unset"
    );
    assert_eq!(resolve_call(&app, "").await.agent_version, 2);

    // Publishing: an unknown agent, another org's, a viewer.
    assert_code(
        try_publish(&app, Who::AcmeAdmin, "aa000000-0000-4000-8000-0000000000ff").await,
        Code::NotFound,
    );
    assert_code(
        try_publish(&app, Who::AcmeAdmin, "not-a-uuid").await,
        Code::InvalidArgument,
    );
    assert_code(
        try_publish(&app, Who::BluebirdAdmin, ACME_AGENT).await,
        Code::NotFound,
    );
    assert_code(
        try_versions(&app, Who::BluebirdAdmin, ACME_AGENT).await,
        Code::NotFound,
    );
    assert_code(
        try_serve(
            &app,
            Who::BluebirdAdmin,
            ACME_AGENT,
            Some(Rule::PinnedVersion(1)),
        )
        .await,
        Code::NotFound,
    );
    assert_code(
        try_publish(&app, Who::AcmeViewer, ACME_AGENT).await,
        Code::PermissionDenied,
    );
    assert_code(
        try_serve(
            &app,
            Who::AcmeViewer,
            ACME_AGENT,
            Some(Rule::PinnedVersion(1)),
        )
        .await,
        Code::PermissionDenied,
    );
    // The viewer reads them; nothing the refusals tried was published.
    let listed = versions(&app, Who::AcmeViewer, ACME_AGENT).await;
    assert_eq!(listed.iter().map(|v| v.version).collect::<Vec<_>>(), [2, 1]);
    // A manager may publish.
    let v3 = publish(&app, Who::AcmeManager, ACME_AGENT).await;
    assert_eq!(v3.version, 3);
    assert_eq!(v3.published_by, user(Who::AcmeManager));
}

#[tokio::test]
async fn versions_are_immutable_in_the_database_and_an_insert_takes_the_agents_fields() {
    let app = TestApp::spawn().await;
    publish(&app, Who::AcmeAdmin, ACME_AGENT).await;

    // Not even the superuser may rewrite or remove a version.
    for statement in [
        format!(
            "update public.agent_versions set voice_id = 'forged' where agent_id = '{ACME_AGENT}'"
        ),
        format!("update public.agent_versions set version = 7 where agent_id = '{ACME_AGENT}'"),
        format!("delete from public.agent_versions where agent_id = '{ACME_AGENT}'"),
    ] {
        let refused = sqlx::raw_sql(&statement).execute(&app.db.pool).await;
        let message = match refused {
            Ok(done) => panic!("{statement}: allowed ({} rows)", done.rows_affected()),
            Err(e) => e.to_string(),
        };
        assert!(message.contains("immutable"), "{statement}: {message}");
    }

    // A forged insert: the trigger numbers it and copies the agent's fields.
    app.db
        .exec(&format!(
            "insert into public.agent_versions (agent_id, org_id, version, name, voice_id, llm_config, published_by) \
             values ('{ACME_AGENT}', '{ACME}', 99, 'Forged', 'forged', '{{\"model\": \"evil\"}}', \
                     '{}')",
            user(Who::BluebirdAdmin)
        ))
        .await;
    let listed = versions(&app, Who::AcmeAdmin, ACME_AGENT).await;
    assert_eq!(listed.iter().map(|v| v.version).collect::<Vec<_>>(), [2, 1]);
    let forged = &listed[0];
    assert_eq!(forged.name, "Acme Reception");
    assert_eq!(forged.voice_id, "alloy");
    assert_eq!(
        config_str(forged.llm_config.as_ref(), "model"),
        Some("gpt-4o-mini")
    );
    assert_eq!(forged.published_by, "", "plain SQL: no user");
    assert_eq!(listed[1].voice_id, "alloy", "version 1 untouched");
    let agent = get_agent(&app, Who::AcmeAdmin, ACME_AGENT).await;
    assert_eq!(agent.latest_version, 2);

    // latest_version is the trigger's alone.
    let refused = sqlx::raw_sql(&format!(
        "update public.agents set latest_version = 50 where id = '{ACME_AGENT}'"
    ))
    .execute(&app.db.pool)
    .await;
    assert!(refused.is_err(), "latest_version set by hand");
    // An insert for an agent of another org than the one named fails.
    let refused = sqlx::raw_sql(&format!(
        "insert into public.agent_versions (agent_id, org_id) values ('{ACME_AGENT}', '{BLUEBIRD}')"
    ))
    .execute(&app.db.pool)
    .await;
    assert!(refused.is_err(), "a version in another org");
    // As PostgREST would run it, with the admin's claims: no grant. (A
    // transaction of its own, rolled back when dropped.)
    let claims = serde_json::json!({"role": "authenticated", "sub": user(Who::AcmeAdmin)});
    let mut tx = app.db.pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
    sqlx::query(
        "select set_config('request.jwt.claims', $1, true), set_config('role', 'authenticated', true)",
    )
    .bind(claims.to_string())
    .execute(&mut *tx)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let refused = sqlx::query("update public.agent_versions set voice_id = 'forged'")
        .execute(&mut *tx)
        .await;
    drop(tx);
    let message = refused.map_or_else(|e| e.to_string(), |_| "allowed".to_owned());
    assert!(
        message.contains("permission denied"),
        "an API role updating a version: {message}"
    );

    // The versions go with their agent (the cascade is allowed).
    app.db
        .exec(&format!(
            "delete from public.agents where id = '{ACME_AGENT}'"
        ))
        .await;
    let left: i64 = sqlx::query_scalar("select count(*) from public.agent_versions")
        .fetch_one(&app.db.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(left, 0, "versions outlived their agent");
}

#[tokio::test]
async fn publishing_and_pinning_are_in_the_agents_history() {
    let app = TestApp::spawn().await;
    let history = || {
        let app = &app;
        async move {
            app.agents()
                .await
                .list_agent_history(as_who(
                    Who::AcmeViewer,
                    ListAgentHistoryRequest {
                        agent_id: ACME_AGENT.into(),
                        ..Default::default()
                    },
                ))
                .await
                .unwrap_or_else(|s| panic!("{s:?}"))
                .into_inner()
                .changes
        }
    };
    let only = |change: &AgentChange, field: &str| {
        let names: Vec<&str> = change.fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(names, [field], "{change:#?}");
    };

    publish(&app, Who::AcmeAdmin, ACME_AGENT).await;
    let changes = history().await;
    let published = &changes[0];
    only(published, "latest_version");
    assert_eq!(published.changed_by, user(Who::AcmeAdmin));
    assert_eq!(published.actor_role, "authenticated");
    let field = change(&published.fields, "latest_version");
    assert_eq!(number_of(field.new_value.as_ref()), Some(1.0));
    assert!(
        field
            .old_value
            .as_ref()
            .is_none_or(|v| matches!(v.kind, Some(Kind::NullValue(_)))),
        "{field:?}"
    );

    publish(&app, Who::AcmeManager, ACME_AGENT).await;
    serve(&app, ACME_AGENT, Some(Rule::PinnedVersion(1))).await;
    let changes = history().await;
    let (pinned, second) = (&changes[0], &changes[1]);
    only(second, "latest_version");
    assert_eq!(second.changed_by, user(Who::AcmeManager));
    assert_eq!(
        number_of(change(&second.fields, "latest_version").old_value.as_ref()),
        Some(1.0)
    );
    only(pinned, "serving");
    assert_eq!(pinned.changed_by, user(Who::AcmeAdmin));
    let serving = change(&pinned.fields, "serving");
    let pin = match serving.new_value.as_ref().and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(s)) => number_of(s.fields.get("pinned")),
        other => panic!("serving recorded as {other:?}"),
    };
    assert_eq!(pin, Some(1.0));
    assert!(pinned.id > second.id && second.id > published.id);
}
