use crate::helpers::*;

async fn migration_count(db: &TestDb) -> i64 {
    sqlx::query_scalar("select count(*) from switchboard_private._sqlx_migrations where success")
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn migrations_apply_twice_in_a_row() {
    let db = TestDb::empty().await;
    switchboard::migrate::run(&db.direct_url)
        .await
        .unwrap_or_else(|e| panic!("first: {e}"));
    let applied = migration_count(&db).await;
    assert!(applied >= 2);
    switchboard::migrate::run(&db.direct_url)
        .await
        .unwrap_or_else(|e| panic!("second: {e}"));
    assert_eq!(migration_count(&db).await, applied);
    // The SQL itself is re-runnable too (as `supabase db push` after a
    // manual apply would do), and the seed is idempotent.
    for file in std::fs::read_dir("migrations")
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
    {
        let sql = std::fs::read_to_string(file.path()).unwrap_or_default();
        db.exec(&sql).await;
    }
    switchboard::migrate::seed(&db.direct_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    switchboard::migrate::seed(&db.direct_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let policies: i64 =
        sqlx::query_scalar("select count(*) from pg_policies where schemaname = 'public'")
            .fetch_one(&db.pool)
            .await
            .unwrap_or_default();
    assert_eq!(policies, 22, "one policy per operation, none duplicated");
    let agents: i64 = sqlx::query_scalar("select count(*) from public.agents")
        .fetch_one(&db.pool)
        .await
        .unwrap_or_default();
    assert_eq!(agents, 2);
}

/// Supabase ships these objects; the bootstrap must leave them alone.
#[tokio::test]
async fn migrations_keep_existing_supabase_objects() {
    let db = TestDb::empty().await;
    db.exec(
        r#"
        do $$ begin
          if not exists (select 1 from pg_roles where rolname = 'anon') then create role anon nologin noinherit; end if;
          if not exists (select 1 from pg_roles where rolname = 'authenticated') then create role authenticated nologin noinherit; end if;
          if not exists (select 1 from pg_roles where rolname = 'service_role') then create role service_role nologin noinherit bypassrls; end if;
        end $$;
        create schema auth;
        create table auth.users (id uuid primary key, email text, instance_id uuid, raw_app_meta_data jsonb);
        create function auth.uid() returns uuid language sql stable as $f$
          select coalesce(
            nullif(current_setting('request.jwt.claim.sub', true), ''),
            (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
          )::uuid
        $f$;
        comment on function auth.uid() is 'Supabase original';
        create function auth.jwt() returns jsonb language sql stable as $f$
          select coalesce(
            nullif(current_setting('request.jwt.claim', true), ''),
            nullif(current_setting('request.jwt.claims', true), '')
          )::jsonb
        $f$;
        comment on function auth.jwt() is 'Supabase original';
        "#,
    )
    .await;
    switchboard::migrate::run(&db.direct_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    switchboard::migrate::seed(&db.direct_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let comments: Vec<Option<String>> = sqlx::query_scalar(
        "select obj_description(p.oid, 'pg_proc') from pg_proc p join pg_namespace n on n.oid = p.pronamespace \
         where n.nspname = 'auth' and p.proname in ('uid', 'jwt') order by p.proname",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap_or_default();
    assert_eq!(
        comments,
        [
            Some("Supabase original".to_owned()),
            Some("Supabase original".to_owned())
        ]
    );
    let has_extra_column: bool = sqlx::query_scalar(
        "select exists (select 1 from information_schema.columns where table_schema = 'auth' and table_name = 'users' and column_name = 'raw_app_meta_data')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap_or_default();
    assert!(has_extra_column, "auth.users was not replaced");

    // And the service works on top of them.
    let app = TestApp::spawn_with(db, AppOptions::default()).await;
    let mut agents = app.agents().await;
    let listed = agents
        .list_agents(as_who(
            Who::AcmeViewer,
            switchboard::pb::ListAgentsRequest::default(),
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}"))
        .into_inner();
    assert_eq!(listed.agents.len(), 1);
    assert_eq!(listed.agents[0].org_id, ACME);
}
