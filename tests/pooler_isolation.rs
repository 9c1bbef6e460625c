//! What one client leaves on a server connection never reaches the next, however it was made;
//! statements answer for the schema they were parsed in; a cancel stops only the statement it
//! was sent for; and the sidecar's memory stays bounded whatever passes through it. Each runs
//! `dbconn pooler` in transaction mode with a pool smaller than its clients, in front of the
//! bed's real PostgreSQL.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use support::pooler::{Pooler, app, message, value};
use support::{bed, memory_kib};

/// The chart's default memory limit of the sidecar.
const SIDECAR_LIMIT_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_set_inside_functions_procedures_and_do_blocks_never_reaches_the_next_client() {
    let a = app("hidden");
    let p = Pooler::start(&a, bed().postgres.port, &["--pool-size", "1"]);
    p.wait_ready();
    let first = p.client(&a).await.expect("first client");
    let next = p.client(&a).await.expect("next client");
    first
        .batch_execute(
            "CREATE TABLE notes (n int); \
             CREATE PROCEDURE tune() LANGUAGE plpgsql AS $$ BEGIN \
               SET statement_timeout = '4321'; SET work_mem = '7MB'; END $$; \
             CREATE FUNCTION hide_lock() RETURNS void LANGUAGE plpgsql AS $$ BEGIN \
               PERFORM pg_advisory_lock(77); CREATE TEMP TABLE secret_notes (s text); \
               INSERT INTO secret_notes VALUES ('first client''s'); END $$",
        )
        .await
        .expect("setup");
    let defaults = [
        value(&next, "SHOW statement_timeout")
            .await
            .expect("default"),
        value(&next, "SHOW work_mem").await.expect("default"),
        value(&next, "SHOW search_path").await.expect("default"),
    ];
    // Session state made every way a SQL scan cannot see.
    for sql in [
        "SELECT set_config('app.tenant', 'tenant A', false)",
        "CALL tune()",
        "DO $$ BEGIN PERFORM set_config('search_path', 'pg_catalog', false); END $$",
        "SELECT hide_lock()",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    ] {
        first.batch_execute(sql).await.expect(sql);
        // The only server connection now serves the other client: none of it is there.
        assert_eq!(
            value(
                &next,
                "SELECT coalesce(current_setting('app.tenant', true), '')"
            )
            .await
            .expect("tenant"),
            "",
            "after {sql}: another client's set_config"
        );
        let now = [
            value(&next, "SHOW statement_timeout")
                .await
                .expect("setting"),
            value(&next, "SHOW work_mem").await.expect("setting"),
            value(&next, "SHOW search_path").await.expect("setting"),
        ];
        assert_eq!(now, defaults, "after {sql}");
        next.batch_execute("INSERT INTO notes VALUES (1)")
            .await
            .unwrap_or_else(|e| panic!("after {sql}: not read-only: {}", message(&e)));
        assert_eq!(
            value(
                &next,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
            .await
            .expect("locks"),
            "0",
            "after {sql}"
        );
        let temp = next.simple_query("SELECT s FROM secret_notes").await;
        assert!(temp.is_err(), "after {sql}: another client's temp table");
    }
    // What the first client set with a plain SET statement stays with it.
    let err = first
        .batch_execute("INSERT INTO notes VALUES (2)")
        .await
        .expect_err("still read-only for the client that asked");
    assert_eq!(err.code().map(|c| c.code()), Some("25006"), "{err}");
    assert!(p.metric("dbconn_pooler_server_resets_total ") >= 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_queries_cost_no_reset_and_always_resets_after_them_too() {
    let a = app("resetmode");
    let auto = Pooler::start(&a, bed().postgres.port, &["--pool-size", "1"]);
    let always = Pooler::start(
        &a,
        bed().postgres.port,
        &["--pool-size", "1", "--server-reset", "always"],
    );
    auto.wait_ready();
    always.wait_ready();
    // A view that sets something: its SELECT reads as a plain query.
    let setup = auto.client(&a).await.expect("client");
    setup
        .batch_execute("CREATE VIEW sets AS SELECT set_config('app.viewed', 'yes', false) AS s")
        .await
        .expect("view");
    drop(setup);
    // Plain queries alternating between two clients: no reset at all.
    let (x, y) = (
        auto.client(&a).await.expect("client"),
        auto.client(&a).await.expect("client"),
    );
    // (The view's CREATE left the connection to be reset once.)
    value(&x, "SELECT 1").await.expect("query");
    let before = auto.metric("dbconn_pooler_server_resets_total ");
    for _ in 0..10 {
        value(&y, "SELECT count(*) FROM pg_class WHERE relname = 'sets'")
            .await
            .expect("query");
        value(&x, "SELECT 1").await.expect("query");
    }
    assert_eq!(auto.metric("dbconn_pooler_server_resets_total "), before);
    assert!(auto.metric("dbconn_pooler_transactions_total ") >= 21.0);
    // With always, the next client never sees what the view set.
    let (x, y) = (
        always.client(&a).await.expect("client"),
        always.client(&a).await.expect("client"),
    );
    value(&x, "SELECT s FROM sets")
        .await
        .expect("through the view");
    assert_eq!(
        value(
            &y,
            "SELECT coalesce(current_setting('app.viewed', true), '')"
        )
        .await
        .expect("setting"),
        ""
    );
    assert!(always.metric("dbconn_pooler_server_resets_total ") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_prepared_after_a_migration_see_the_new_columns() {
    let a = app("migrate");
    let p = Pooler::start(&a, bed().postgres.port, &["--pool-size", "2"]);
    p.wait_ready();
    let old = p.client(&a).await.expect("client");
    old.batch_execute("CREATE TABLE items (a int); INSERT INTO items VALUES (1)")
        .await
        .expect("table");
    let before = old.prepare("SELECT * FROM items").await.expect("prepare");
    assert_eq!(old.query(&before, &[]).await.expect("rows")[0].len(), 1);
    // Keep the statement on both server connections: another client uses the same text.
    let other = p.client(&a).await.expect("client");
    let warm = other.prepare("SELECT * FROM items").await.expect("prepare");
    for _ in 0..4 {
        other.query(&warm, &[]).await.expect("rows");
        old.query(&before, &[]).await.expect("rows");
    }
    // A migration through the pooler, then one from outside it.
    other
        .batch_execute("ALTER TABLE items ADD COLUMN b int DEFAULT 7")
        .await
        .expect("migration");
    let fresh = p.client(&a).await.expect("client");
    for _ in 0..4 {
        let s = fresh.prepare("SELECT * FROM items").await.expect("prepare");
        let rows = fresh.query(&s, &[]).await.expect("after the migration");
        assert_eq!(rows[0].len(), 2);
        assert_eq!(rows[0].get::<_, i32>(1), 7);
    }
    bed()
        .postgres
        .psql(&a.db, "ALTER TABLE items ADD COLUMN c int DEFAULT 9")
        .expect("migration outside the pooler");
    for _ in 0..4 {
        let c = p.client(&a).await.expect("client");
        let s = c.prepare("SELECT * FROM items").await.expect("prepare");
        let rows = c.query(&s, &[]).await.expect("after the outside migration");
        assert_eq!((rows[0].len(), rows[0].get::<_, i32>(2)), (3, 9));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_cancel_never_stops_another_clients_query() {
    let a = app("latecancel");
    let p = Pooler::start(&a, bed().postgres.port, &["--pool-size", "1"]);
    p.wait_ready();
    let quick = Arc::new(p.client(&a).await.expect("client"));
    let slow = p.client(&a).await.expect("client");
    let done = Arc::new(AtomicBool::new(false));
    let cancels = Arc::new(AtomicUsize::new(0));
    // One client cancels its own short statements as they end: the cancel is on its way (a
    // new TLS connection to the server) while the statement finishes and the only server
    // connection could already be running the other client's statement.
    let canceller = {
        let (quick, done, cancels) = (quick.clone(), done.clone(), cancels.clone());
        tokio::spawn(async move {
            let mut delay = 1u64;
            while !done.load(Ordering::SeqCst) {
                let q = quick.clone();
                let running =
                    tokio::spawn(async move { q.simple_query("SELECT pg_sleep(0.004)").await });
                tokio::time::sleep(Duration::from_micros(2500 + delay * 250)).await;
                let _ = quick
                    .cancel_token()
                    .cancel_query(tokio_postgres::NoTls)
                    .await;
                let _ = running.await;
                cancels.fetch_add(1, Ordering::SeqCst);
                delay = (delay + 1) % 12;
            }
        })
    };
    // The other runs statements on the same (only) server connection meanwhile.
    let mut cancelled = 0;
    for _ in 0..150 {
        if let Err(e) = slow.simple_query("SELECT pg_sleep(0.005)").await {
            assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e}");
            cancelled += 1;
        }
    }
    done.store(true, Ordering::SeqCst);
    let _ = canceller.await;
    println!(
        "{} cancels sent while 150 statements of another client ran",
        cancels.load(Ordering::SeqCst)
    );
    assert!(cancels.load(Ordering::SeqCst) >= 20);
    assert_eq!(cancelled, 0, "another client's statements were cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_value_and_a_1_gb_copy_pass_within_the_sidecars_memory_limit() {
    let a = app("large");
    let p = Pooler::start(&a, bed().postgres.port, &["--pool-size", "2"]);
    p.wait_ready();
    let pid = p.child.id();
    let c = p.client(&a).await.expect("client");
    let row = c
        .query_one("SELECT repeat('x', 100000000)", &[])
        .await
        .expect("100 MB value");
    assert_eq!(row.get::<_, String>(0).len(), 100_000_000);
    eprintln!("large: 100 MB value read");
    // COPY out: 1 GB in 1 KB rows, read as it comes.
    let out = c
        .copy_out("COPY (SELECT repeat('y', 999) FROM generate_series(1, 1000000)) TO STDOUT")
        .await
        .expect("copy out");
    futures::pin_mut!(out);
    let mut bytes = 0usize;
    while let Some(chunk) = out.next().await {
        bytes += chunk.expect("copy data").len();
    }
    assert_eq!(bytes, 1_000_000_000);
    eprintln!("large: 1 GB copied out");
    // COPY in: 256 MB in 64 KB messages.
    c.batch_execute("CREATE TABLE sink (s text)")
        .await
        .expect("table");
    let sink = c.copy_in("COPY sink FROM STDIN").await.expect("copy in");
    futures::pin_mut!(sink);
    let line = bytes::Bytes::from(format!("{}\n", "z".repeat(65_535)));
    for _ in 0..4096 {
        futures::SinkExt::send(&mut sink, line.clone())
            .await
            .expect("copy data");
    }
    eprintln!("large: 256 MB sent");
    let rows = sink.finish().await.expect("copy done");
    assert_eq!(rows, 4096);
    let (peak, now) = memory_kib(pid);
    println!("pooler memory: peak {peak} KiB, now {now} KiB");
    assert!(peak > 0 && peak < SIDECAR_LIMIT_KIB, "peak {peak} KiB");
    // A message the pooler would have to hold whole is refused by name, for that client.
    let big = "q".repeat(20 << 20);
    let err = c
        .query_one("SELECT length($1::text)", &[&big])
        .await
        .expect_err("over --max-message-bytes");
    assert!(
        message(&err).contains("exceeds the limit"),
        "{}",
        message(&err)
    );
    let again = p.client(&a).await.expect("another client");
    assert_eq!(value(&again, "SELECT 1").await.expect("still serving"), "1");
    tokio::time::sleep(Duration::from_millis(10)).await;
}
