//! What the routing schema holds for every writer (SQL, Studio, PostgREST),
//! found by the attack review: nesting bounds, a strict `serving`, versions
//! numbered per row, no existence oracle through version inserts, and an
//! odd row that the checks let through never fails a read.

use crate::helpers::*;
use switchboard::pb::{GetAgentRequest, ListAgentsRequest, ResolveAgentRequest};

fn user(who: Who) -> String {
    who.user_id().map(|u| u.to_string()).unwrap_or_default()
}

/// Runs `sql` in a transaction as `who` would through PostgREST (claims and
/// role set locally), returning the database's error text if refused.
async fn as_tenant(app: &TestApp, who: Who, sql: &str) -> Result<u64, String> {
    let claims = serde_json::json!({"role": "authenticated", "sub": user(who)});
    let mut tx = app.db.pool.begin().await.map_err(|e| e.to_string())?;
    sqlx::query(
        "select set_config('request.jwt.claims', $1, true), set_config('role', 'authenticated', true)",
    )
    .bind(claims.to_string())
    .execute(&mut *tx)
    .await
    .map_err(|e| e.to_string())?;
    let done = sqlx::raw_sql(sql)
        .execute(&mut *tx)
        .await
        .map(|r| r.rows_affected())
        .map_err(|e| e.to_string());
    if done.is_ok() {
        tx.commit().await.map_err(|e| e.to_string())?;
    }
    done
}

async fn as_postgres(app: &TestApp, sql: &str) -> Result<u64, String> {
    sqlx::raw_sql(sql)
        .execute(&app.db.pool)
        .await
        .map(|r| r.rows_affected())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn deeply_nested_routing_json_is_refused_for_every_writer() {
    let app = TestApp::spawn().await;
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    for (column, value) in [
        (
            "business_hours",
            format!(r#"{{"time_zone":"UTC","x":{deep}}}"#),
        ),
        ("llm_config", format!(r#"{{"model":"x","x":{deep}}}"#)),
    ] {
        let sql = format!(
            "update public.agents set {column} = '{value}'::jsonb where id = '{ACME_AGENT}'"
        );
        let refused = as_tenant(&app, Who::AcmeAdmin, &sql).await;
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("depth")),
            "{column} as a tenant: {refused:?}"
        );
        let refused = as_postgres(&app, &sql).await;
        assert!(refused.is_err(), "{column} as postgres: {refused:?}");
    }
    // The agent still reads and answers.
    let agent = app
        .agents()
        .await
        .get_agent(as_who(
            Who::AcmeAdmin,
            GetAgentRequest {
                id: ACME_AGENT.into(),
            },
        ))
        .await;
    assert!(agent.is_ok(), "{agent:?}");
}

#[tokio::test]
async fn hours_the_service_cannot_read_count_as_always_open_and_fail_no_read() {
    let app = TestApp::spawn().await;
    // Shallow, within every check, but not a schedule the service reads.
    as_postgres(
        &app,
        &format!(
            r#"update public.agents set business_hours = '{{"time_zone":"Mars/Olympus","weekly":[]}}'::jsonb
               where id = '{ACME_AGENT}'"#
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let answer = service_resolve_ok(&app).await;
    assert_eq!(
        answer.agent.as_ref().map(|a| a.id.as_str()),
        Some(ACME_AGENT),
        "unreadable hours: always open"
    );
    for who in [Who::Service, Who::AcmeAdmin] {
        let listed = app
            .agents()
            .await
            .list_agents(as_who(who, ListAgentsRequest::default()))
            .await;
        assert!(listed.is_ok(), "{who:?}: {listed:?}");
    }
}

async fn service_resolve_ok(app: &TestApp) -> switchboard::pb::ResolveAgentResponse {
    app.agents()
        .await
        .resolve_agent(as_who(
            Who::Service,
            ResolveAgentRequest {
                called_number: ACME_NUMBER.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner()
}

#[tokio::test]
async fn serving_takes_integers_and_each_version_once() {
    let app = TestApp::spawn().await;
    for _ in 0..2 {
        as_tenant(
            &app,
            Who::AcmeAdmin,
            &format!(
                "insert into public.agent_versions (agent_id, org_id) values ('{ACME_AGENT}', '{ACME}')"
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    for bad in [
        r#"{"split":[{"version":"1","weight":"5"},{"version":2,"weight":5}]}"#,
        r#"{"split":[{"version":1,"weight":5},{"version":1,"weight":5}]}"#,
        r#"{"split":[{"version":1,"weight":5.5},{"version":2,"weight":5}]}"#,
        r#"{"split":[{"version":1,"weight":5,"x":1},{"version":2,"weight":5}]}"#,
        r#"{"pinned":"1"}"#,
        r#"{"pinned":1,"x":2}"#,
        r#"{"pinned":1,"split":[{"version":1,"weight":5},{"version":2,"weight":5}]}"#,
    ] {
        let refused = as_tenant(
            &app,
            Who::AcmeAdmin,
            &format!("update public.agents set serving = '{bad}' where id = '{ACME_AGENT}'"),
        )
        .await;
        assert!(refused.is_err(), "{bad}: {refused:?}");
    }
    let ok = as_tenant(
        &app,
        Who::AcmeAdmin,
        &format!(
            r#"update public.agents set serving = '{{"split":[{{"version":1,"weight":5}},{{"version":2,"weight":5}}]}}' where id = '{ACME_AGENT}'"#
        ),
    )
    .await;
    assert_eq!(ok, Ok(1));
}

#[tokio::test]
async fn versions_inserted_in_one_statement_are_numbered_in_turn() {
    let app = TestApp::spawn().await;
    as_postgres(
        &app,
        &format!(
            "insert into public.agent_versions (agent_id, org_id) \
             select '{ACME_AGENT}', '{ACME}' from generate_series(1, 3)"
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let versions: Vec<i32> = sqlx::query_scalar(
        "select version from public.agent_versions where agent_id = $1::uuid order by version",
    )
    .bind(ACME_AGENT)
    .fetch_all(&app.db.pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(versions, [1, 2, 3]);
    let latest: Option<i32> =
        sqlx::query_scalar("select latest_version from public.agents where id = $1::uuid")
            .bind(ACME_AGENT)
            .fetch_one(&app.db.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(latest, Some(3));
}

#[tokio::test]
async fn a_version_insert_tells_a_tenant_nothing_about_other_orgs() {
    let app = TestApp::spawn().await;
    let missing = "dd000000-0000-4000-8000-000000000001";
    // Acme's real agent in Acme's org, a made-up agent in Acme's org, and
    // Acme's agent said to be Bluebird's own: one answer for all three.
    let mut answers = Vec::new();
    for (agent, org) in [(ACME_AGENT, ACME), (missing, ACME), (ACME_AGENT, BLUEBIRD)] {
        let refused = as_tenant(
            &app,
            Who::BluebirdAdmin,
            &format!(
                "insert into public.agent_versions (agent_id, org_id) values ('{agent}', '{org}')"
            ),
        )
        .await;
        answers.push(refused.err().unwrap_or_default());
    }
    // Into its own org, the foreign agent is simply not found.
    assert!(answers[0].contains("row-level security"), "{answers:?}");
    assert_eq!(answers[0], answers[1], "an existing agent looks like none");
    assert!(answers[2].contains("agent not found"), "{answers:?}");
    let versions: i64 = sqlx::query_scalar("select count(*) from public.agent_versions")
        .fetch_one(&app.db.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(versions, 0);
}

#[tokio::test]
async fn caller_rules_tell_no_foreign_count_and_hold_their_bound_at_any_isolation() {
    let app = TestApp::spawn().await;
    // Acme full: 200 rules.
    as_postgres(
        &app,
        &format!(
            "insert into public.caller_rules (org_id, match, pattern, action) \
             select '{ACME}', 'exact', '+1888' || lpad(n::text, 7, '0'), 'block' \
             from generate_series(1, 200) n"
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // Bluebird learns nothing of Acme's count: the answer of RLS, as for an
    // org that does not exist.
    let insert = |org: &str| {
        format!(
            "insert into public.caller_rules (org_id, match, pattern, action) \
             values ('{org}', 'exact', '+19990000001', 'block')"
        )
    };
    let full = as_tenant(&app, Who::BluebirdAdmin, &insert(ACME)).await;
    let nowhere = as_tenant(
        &app,
        Who::BluebirdAdmin,
        &insert("dd000000-0000-4000-8000-00000000000d"),
    )
    .await;
    assert!(
        full.as_ref()
            .is_err_and(|e| e.contains("row-level security")),
        "{full:?}"
    );
    assert_eq!(full, nowhere);
    // A REPEATABLE READ writer would count from its snapshot: refused.
    let mut tx = app.db.pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
    sqlx::raw_sql(&format!(
        "set transaction isolation level repeatable read; \
         delete from public.caller_rules where pattern = '+18880000001'; {}",
        insert(ACME)
    ))
    .execute(&mut *tx)
    .await
    .map(|_| ())
    .map_or_else(
        |e| assert!(e.to_string().contains("REPEATABLE READ"), "{e}"),
        |()| panic!("a REPEATABLE READ insert was allowed"),
    );
}

/// What one number's route carries besides the agent: its served versions,
/// after-hours number and the org's caller rules, as jsonb text.
type Extras = (Option<String>, Option<String>, Option<String>);
/// The agent's and org's ids, then its [`Extras`].
type OnCall = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The call path (`resolve_number`) and the preload (`route_extras`, through
/// `routes_after`) write the same three sub-selects twice (the call path's
/// inline, for one cached plan). They must agree for every number, under a
/// tenant's claims and as service_role (which RLS lets through), or a
/// preloaded route would differ from one resolved on demand.
#[tokio::test]
async fn the_preload_and_the_call_path_carry_the_same_route_extras() {
    let app = TestApp::spawn().await;
    let line = "ac000000-0000-4000-8000-000000000101";
    let night = "ac000000-0000-4000-8000-000000000102";
    let bluebird_line = "bc000000-0000-4000-8000-000000000101";
    app.db
        .exec(&format!(
            "insert into public.agents (id, org_id, name, phone_number, voice_id) values
               ('{line}', '{ACME}', 'Line', '+15550001101', 'alloy'),
               ('{night}', '{ACME}', 'Night', '+15550001102', 'verse'),
               ('{bluebird_line}', '{BLUEBIRD}', 'Line', '+15550002101', 'verse');
             insert into public.agent_versions (agent_id, org_id) values
               ('{ACME_AGENT}', '{ACME}'), ('{ACME_AGENT}', '{ACME}'), ('{ACME_AGENT}', '{ACME}'),
               ('{line}', '{ACME}'), ('{line}', '{ACME}'), ('{night}', '{ACME}'),
               ('{BLUEBIRD_AGENT}', '{BLUEBIRD}'), ('{bluebird_line}', '{BLUEBIRD}');
             update public.agents set after_hours_agent_id = '{night}',
               serving = '{{\"split\":[{{\"version\":1,\"weight\":3}},{{\"version\":3,\"weight\":7}}]}}'
               where id = '{ACME_AGENT}';
             update public.agents set serving = '{{\"pinned\":1}}' where id = '{line}';
             insert into public.caller_rules (org_id, match, pattern, action, agent_id) values
               ('{ACME}', 'exact', '+15550003003', 'route', '{line}'),
               ('{ACME}', 'prefix', '+1900', 'block', null),
               ('{BLUEBIRD}', 'exact', '+15550003003', 'route', '{bluebird_line}');"
        ))
        .await;
    let numbers = [
        ACME_NUMBER,
        "+15550001101",
        "+15550001102",
        BLUEBIRD_NUMBER,
        "+15550002101",
    ];
    let acme_admin =
        serde_json::json!({"role": "authenticated", "sub": user(Who::AcmeAdmin)}).to_string();
    let mut seen = 0;
    for (claims, role) in [
        (acme_admin.as_str(), "authenticated"),
        ("{}", "service_role"),
    ] {
        for number in numbers {
            let mut tx = app.db.pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
            let on_call: Option<OnCall> = sqlx::query_as(
                "select agent_id::text, org_id::text, served_versions::text, \
                            after_hours_agent_number, caller_rules::text \
                     from switchboard_private.resolve_number($1, $2, $3, null)",
            )
            .bind(claims)
            .bind(role)
            .bind(number)
            .fetch_optional(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{number}: {e}"));
            let Some((agent, org, versions, after_hours, rules)) = on_call else {
                // Under Acme's claims, only Bluebird's numbers are unknown.
                assert!(
                    role == "authenticated" && [BLUEBIRD_NUMBER, "+15550002101"].contains(&number),
                    "{number} ({role}): no route"
                );
                continue;
            };
            // Same transaction, same claims and role (resolve_number set
            // them): what the preload reads for this agent.
            let preload: Extras = sqlx::query_as(
                "select served_versions::text, after_hours_agent_number, caller_rules::text \
                 from switchboard_private.route_extras($1::uuid, $2::uuid)",
            )
            .bind(&agent)
            .bind(&org)
            .fetch_one(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{number}: {e}"));
            assert_eq!(
                (versions.clone(), after_hours.clone(), rules.clone()),
                preload,
                "{number} ({role})"
            );
            if number == ACME_NUMBER {
                let versions = versions.unwrap_or_default();
                assert!(
                    versions.contains("\"version\": 1")
                        && versions.contains("\"version\": 3")
                        && !versions.contains("\"version\": 2"),
                    "{versions}"
                );
                assert_eq!(after_hours.as_deref(), Some("+15550001102"));
                let rules = rules.unwrap_or_default();
                assert!(
                    rules.contains("+15550001101") && rules.contains("+1900"),
                    "{rules}"
                );
                assert!(
                    !rules.contains("+15550002101"),
                    "another org's rule: {rules}"
                );
            }
            seen += 1;
            tx.rollback().await.unwrap_or_else(|e| panic!("{e}"));
        }
    }
    // Acme's three numbers under its claims, all five as service_role.
    assert_eq!(seen, 8);
}

/// `resolve_number` takes the role to run as from its caller; anything but
/// an API role (`none`, a login role, NULL) would run its query as the
/// session user, outside RLS, so it is refused.
#[tokio::test]
async fn the_call_path_runs_only_as_an_api_role() {
    let app = TestApp::spawn().await;
    for role in ["'none'", "'postgres'", "'pg_read_all_data'", "null", "''"] {
        let refused = as_postgres(
            &app,
            &format!(
                "select * from switchboard_private.resolve_number('{{}}', {role}, '{ACME_NUMBER}', null)"
            ),
        )
        .await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("is not an API role")),
            "{role}: {refused:?}"
        );
    }
    let served = as_postgres(
        &app,
        &format!(
            "select * from switchboard_private.resolve_number('{{}}', 'service_role', '{ACME_NUMBER}', null)"
        ),
    )
    .await;
    assert_eq!(served, Ok(1), "service_role reads the route");
}

/// `resolve_number` sets `request.jwt.claim.sub` from the claims it is
/// given (auth.uid() reads that setting before it parses the claims, so the
/// policies parse them once, not once per table). Whatever a neighbour left
/// in that setting on a pooled connection, the policies see the caller's
/// own `sub`; claims without one see nothing; and the neighbour's session
/// value is back after the statement (transaction-local, like the rest).
#[tokio::test]
async fn the_call_path_reads_its_user_from_the_claims_it_is_given() {
    let app = TestApp::spawn().await;
    let mut conn = app
        .db
        .pool
        .acquire()
        .await
        .unwrap_or_else(|e| panic!("acquire: {e}"));
    let neighbour = user(Who::BluebirdAdmin);
    sqlx::raw_sql(&format!(
        "select set_config('request.jwt.claim.sub', '{neighbour}', false)"
    ))
    .execute(&mut *conn)
    .await
    .unwrap_or_else(|e| panic!("the neighbour's setting: {e}"));

    let acme = serde_json::json!({"role": "authenticated", "sub": user(Who::AcmeAdmin)});
    let no_sub = serde_json::json!({"role": "authenticated"});
    for (claims, number, expected) in [
        (&acme, ACME_NUMBER, Some(ACME)),
        (&acme, BLUEBIRD_NUMBER, None),
        (&no_sub, BLUEBIRD_NUMBER, None),
        (&no_sub, ACME_NUMBER, None),
    ] {
        let org: Option<(uuid::Uuid,)> = sqlx::query_as(
            "select org_id from switchboard_private.resolve_number($1, 'authenticated', $2, null)",
        )
        .bind(claims.to_string())
        .bind(number)
        .fetch_optional(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{claims} {number}: {e}"));
        assert_eq!(
            org.map(|(o,)| o.to_string()),
            expected.map(str::to_string),
            "{claims} calling {number}"
        );
    }
    let (left,): (String,) = sqlx::query_as("select current_setting('request.jwt.claim.sub')")
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("current_setting: {e}"));
    assert_eq!(
        left, neighbour,
        "the session's own value, after the statement"
    );
}
