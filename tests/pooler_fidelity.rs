//! Protocol fidelity of `dbconn pooler` in transaction mode, against the bed's real
//! PostgreSQL: named prepared statements that follow their client from one server connection
//! to the next, pipelines with errors, COPY, and session state that never passes from one
//! client to another. A differential test sends the same message sequences through the
//! pooler and straight to PostgreSQL and compares what comes back.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::bed;
use support::pooler::{
    App, Pooler, Seen, Wire, app, bind, close_statement, describe_statement, execute, flush,
    message, msg, parse, query, startup_with, sync, value,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_follow_ten_clients_across_two_server_connections() {
    let a = app("prep");
    let pooler = Pooler::start(
        &a,
        bed().postgres.port,
        &["--pool-size", "2", "--min-idle", "2"],
    );
    // Another client keeps taking one of the two server connections for a few milliseconds,
    // so the clients' transactions keep changing server connection.
    let holder = pooler.client(&a).await.expect("holder");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let holding = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                holder
                    .batch_execute("SELECT pg_sleep(0.003)")
                    .await
                    .expect("holder");
            }
        })
    };
    let mut tasks = Vec::new();
    for i in 0..10i32 {
        let c = pooler.client(&a).await.expect("client");
        tasks.push(tokio::spawn(async move {
            let stmt = c
                .prepare(&format!("SELECT $1::int4 + {i}, pg_backend_pid()"))
                .await
                .expect("prepare");
            let mut pids = HashSet::new();
            for n in 0..100i32 {
                let row = c.query_one(&stmt, &[&n]).await.expect("execute");
                assert_eq!(
                    row.get::<_, i32>(0),
                    n + i,
                    "client {i} got another's statement"
                );
                pids.insert(row.get::<_, i32>(1));
            }
            pids
        }));
    }
    let mut all = HashSet::new();
    let mut moved = 0;
    for t in tasks {
        let pids = t.await.expect("client task");
        moved += usize::from(pids.len() > 1);
        all.extend(pids);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    holding.await.expect("holder task");
    assert_eq!(all.len(), 2, "two server connections: {all:?}");
    assert!(
        moved > 0,
        "no client's transactions changed server connection"
    );
    // Prepared at most once per statement and server connection, not once per transaction.
    let prepares = pooler.metric("dbconn_pooler_server_prepares_total");
    println!("1,000 transactions, {moved}/10 clients moved, {prepares} server prepares");
    assert!((10.0..=20.0).contains(&prepares), "{prepares}");
}

#[test]
fn two_clients_preparing_the_same_name_with_different_text_each_get_their_own() {
    let a = app("same-name");
    let pooler = Pooler::start(&a, bed().postgres.port, &["--pool-size", "2"]);
    let mut one = Wire::connect(pooler.port, &a.user, &a.password, &a.db);
    let mut two = Wire::connect(pooler.port, &a.user, &a.password, &a.db);
    let name = "Select \"s1\" ünï";
    let row = |w: &mut Wire| {
        w.until_ready(1)
            .into_iter()
            .map(|s| s.0)
            .collect::<String>()
    };
    one.send(&[parse(name, "SELECT 1"), sync()].concat());
    two.send(&[parse(name, "SELECT 2"), sync()].concat());
    assert_eq!(row(&mut one), "1Z");
    assert_eq!(row(&mut two), "1Z");
    for _ in 0..50 {
        one.send(&[bind(name, &[]), execute(), sync()].concat());
        two.send(&[bind(name, &[]), execute(), sync()].concat());
        assert_eq!(one.values(1), vec!["1"]);
        assert_eq!(two.values(1), vec!["2"]);
    }
}

#[tokio::test]
async fn deallocate_forgets_a_clients_statement_as_postgresql_does() {
    let a = app("dealloc");
    let pooler = Pooler::start(&a, bed().postgres.port, &["--pool-size", "2"]);
    let mut w = Wire::connect(pooler.port, &a.user, &a.password, &a.db);
    w.send(&[parse("My Stmt", "SELECT 1"), sync()].concat());
    w.until_ready(1);
    w.send(&query("DEALLOCATE \"My Stmt\""));
    assert_eq!(
        w.until_ready(1),
        vec![('C', String::new()), ('Z', "I".into())]
    );
    w.send(&[bind("My Stmt", &[]), execute(), sync()].concat());
    assert_eq!(w.until_ready(1)[0], ('E', "26000".into()));

    let c = pooler.client(&a).await.expect("client");
    let two = c.prepare("SELECT 2").await.expect("prepare");
    c.batch_execute("DEALLOCATE ALL")
        .await
        .expect("DEALLOCATE ALL");
    let e = c.query(&two, &[]).await.expect_err("deallocated");
    assert!(message(&e).contains("26000"), "{}", message(&e));
    // Another client's statement with the same text is untouched by this one's DEALLOCATE ALL.
    let d = pooler.client(&a).await.expect("client");
    let again = d.prepare("SELECT 2").await.expect("prepare");
    c.batch_execute("DEALLOCATE ALL")
        .await
        .expect("DEALLOCATE ALL");
    assert_eq!(
        d.query_one(&again, &[])
            .await
            .expect("run")
            .get::<_, i32>(0),
        2
    );
}

/// The same exchanges through the pooler and straight to PostgreSQL.
#[test]
fn message_sequences_get_the_same_answers_through_the_pooler_as_from_postgresql() {
    let a = app("diff");
    let pooler = Pooler::start(&a, bed().postgres.port, &["--pool-size", "2"]);
    let pg = &bed().postgres;
    pg.psql(
        &a.db,
        &format!(
            "CREATE TABLE diff_t (x int); ALTER TABLE diff_t OWNER TO {}",
            a.user
        ),
    )
    .expect("table");

    // Each step: bytes to send, then how many ReadyForQuery to read (or, with Flush and no
    // Sync, how many messages).
    enum Want {
        Ready(usize),
        Messages(usize),
    }
    let cat = |parts: &[Vec<u8>]| parts.concat();
    let steps: Vec<(&str, Vec<u8>, Want)> = vec![
        (
            "named statement, then reused",
            cat(&[
                parse("s1", "SELECT $1::int"),
                bind("s1", &["7"]),
                execute(),
                sync(),
            ]),
            Want::Ready(1),
        ),
        (
            "reuse in a later transaction",
            cat(&[bind("s1", &["8"]), execute(), sync()]),
            Want::Ready(1),
        ),
        (
            "pipeline with an error in the middle: the rest is skipped until Sync",
            cat(&[
                parse("a", "SELECT 1"),
                bind("a", &[]),
                execute(),
                parse("b", "SELECT 1/0"),
                bind("b", &[]),
                execute(),
                parse("c", "SELECT 3"),
                bind("c", &[]),
                execute(),
                sync(),
            ]),
            Want::Ready(1),
        ),
        (
            "the statement after the error was never made; the one before was",
            cat(&[
                bind("c", &[]),
                execute(),
                sync(),
                bind("a", &[]),
                execute(),
                sync(),
            ]),
            Want::Ready(2),
        ),
        (
            "a second Parse of an existing name is refused",
            cat(&[
                parse("s1", "SELECT 2"),
                sync(),
                bind("s1", &["9"]),
                execute(),
                sync(),
            ]),
            Want::Ready(2),
        ),
        (
            "Describe of a named statement",
            cat(&[
                parse("d", "SELECT $1::text AS t"),
                describe_statement("d"),
                sync(),
            ]),
            Want::Ready(1),
        ),
        (
            "Close, then the closed name fails and a closed unknown name is fine",
            cat(&[
                close_statement("d"),
                close_statement("never"),
                sync(),
                bind("d", &["x"]),
                execute(),
                sync(),
            ]),
            Want::Ready(2),
        ),
        (
            "answered through Flush, without a Sync",
            cat(&[parse("f", "SELECT 5"), bind("f", &[]), execute(), flush()]),
            Want::Messages(4),
        ),
        ("…and its Sync", sync(), Want::Ready(1)),
        (
            "an error answered through Flush, then messages the server skips, then Sync",
            cat(&[parse("g", "SELEC"), flush()]),
            Want::Messages(1),
        ),
        (
            "…skipped until Sync",
            cat(&[parse("h", "SELECT 1"), bind("h", &[]), execute(), sync()]),
            Want::Ready(1),
        ),
        (
            "h was skipped, so it does not exist",
            cat(&[bind("h", &[]), execute(), sync()]),
            Want::Ready(1),
        ),
        (
            "unnamed statements pass through",
            cat(&[parse("", "SELECT 6"), bind("", &[]), execute(), sync()]),
            Want::Ready(1),
        ),
        (
            "COPY in and out over the simple protocol",
            cat(&[
                query("TRUNCATE diff_t"),
                query("COPY diff_t FROM STDIN"),
                msg(b'd', &[b"1\n2\n"]),
                msg(b'c', &[]),
                query("COPY diff_t TO STDOUT"),
            ]),
            Want::Ready(3),
        ),
        (
            "COPY in over the extended protocol, Sync ignored during COPY",
            cat(&[
                parse("", "COPY diff_t FROM STDIN"),
                bind("", &[]),
                execute(),
                sync(),
                msg(b'd', &[b"3\n"]),
                msg(b'c', &[]),
                sync(),
            ]),
            Want::Ready(1),
        ),
        (
            "DEALLOCATE ALL, then an old name fails",
            cat(&[query("DEALLOCATE ALL"), bind("a", &[]), execute(), sync()]),
            Want::Ready(2),
        ),
        (
            "an explicit transaction across several exchanges",
            cat(&[
                query("BEGIN"),
                parse("t", "SELECT count(*) FROM diff_t"),
                sync(),
            ]),
            Want::Ready(2),
        ),
        (
            "…fails, and is rolled back",
            cat(&[
                bind("t", &[]),
                execute(),
                sync(),
                query("SELECT 1/0"),
                query("ROLLBACK"),
            ]),
            Want::Ready(3),
        ),
    ];
    let run = |w: &mut Wire| -> Vec<Vec<Seen>> {
        steps
            .iter()
            .map(|(_, bytes, want)| {
                w.send(bytes);
                match want {
                    Want::Ready(n) => w.until_ready(*n),
                    Want::Messages(n) => w.read(*n),
                }
            })
            .collect()
    };
    let direct = run(&mut Wire::connect(pg.port, &a.user, &a.password, &a.db));
    // Through the pooler, with another client holding one of the two server connections every
    // other step, so consecutive exchanges land on different ones.
    let mut other = Wire::connect(pooler.port, &a.user, &a.password, &a.db);
    let mut w = Wire::connect(pooler.port, &a.user, &a.password, &a.db);
    let pooled: Vec<Vec<Seen>> = steps
        .iter()
        .enumerate()
        .map(|(i, (_, bytes, want))| {
            other.send(&query(if i % 2 == 0 { "BEGIN" } else { "COMMIT" }));
            other.until_ready(1);
            w.send(bytes);
            match want {
                Want::Ready(n) => w.until_ready(*n),
                Want::Messages(n) => w.read(*n),
            }
        })
        .collect();
    for (((name, _, _), d), p) in steps.iter().zip(&direct).zip(&pooled) {
        println!("{name}: {d:?}");
        assert_eq!(
            d, p,
            "{name}: direct (left) and through the pooler (right) differ"
        );
    }
    // Cross-check a few of the answers themselves.
    assert!(direct[2].contains(&('E', "22012".into())));
    assert!(direct[4].contains(&('E', "42P05".into())));
    assert!(direct[11].contains(&('E', "26000".into())));
}

#[tokio::test]
async fn copy_in_and_out_through_the_extended_protocol() {
    use futures::{SinkExt, StreamExt};
    let a = app("copy");
    let pooler = Pooler::start(&a, bed().postgres.port, &["--pool-size", "1"]);
    let c = pooler.client(&a).await.expect("client");
    c.batch_execute("CREATE TABLE t (x int, s text)")
        .await
        .expect("table");
    let sink = c
        .copy_in("COPY t FROM STDIN")
        .await
        .expect("copy in starts");
    let mut sink = std::pin::pin!(sink);
    for i in 0..1000 {
        sink.send(bytes::Bytes::from(format!("{i}\trow {i}\n")))
            .await
            .expect("row");
    }
    assert_eq!(sink.as_mut().finish().await.expect("copy in"), 1000);
    let other = pooler.client(&a).await.expect("client");
    assert_eq!(
        value(&other, "SELECT count(*) FROM t").await.unwrap(),
        "1000"
    );
    let stream = c
        .copy_out("COPY (SELECT x FROM t ORDER BY x) TO STDOUT")
        .await
        .expect("copy out starts");
    let chunks: Vec<_> = stream.collect().await;
    let text: String = chunks
        .into_iter()
        .map(|c| String::from_utf8_lossy(&c.expect("chunk")).into_owned())
        .collect();
    assert_eq!(text.lines().count(), 1000);
    assert_eq!(text.lines().last(), Some("999"));
}

/// With one server connection, two clients take turns on the same backend.
struct Two {
    pooler: Pooler,
    a: App,
}

impl Two {
    fn start(prefix: &str) -> Two {
        let a = app(prefix);
        let pooler = Pooler::start(
            &a,
            bed().postgres.port,
            &["--pool-size", "1", "--query-wait-timeout-seconds", "2"],
        );
        Two { pooler, a }
    }

    async fn client(&self) -> tokio_postgres::Client {
        self.pooler.client(&self.a).await.expect("client")
    }
}

#[tokio::test]
async fn a_session_set_stays_with_its_client_and_never_reaches_the_next() {
    let t = Two::start("leak-set");
    let first = t.client().await;
    let second = t.client().await;
    let pid = |c| async move { value(c, "SELECT pg_backend_pid()").await.unwrap() };
    assert_eq!(
        pid(&first).await,
        pid(&second).await,
        "one server connection"
    );
    first
        .batch_execute("SET statement_timeout = '5s'; SET search_path = \"My Schema\", public")
        .await
        .expect("SET");
    // The other client on the same backend sees the defaults…
    assert_eq!(value(&second, "SHOW statement_timeout").await.unwrap(), "0");
    assert_eq!(
        value(&second, "SHOW search_path").await.unwrap(),
        "\"$user\", public"
    );
    // …and the first keeps its own, list settings included.
    assert_eq!(value(&first, "SHOW statement_timeout").await.unwrap(), "5s");
    assert_eq!(
        value(&first, "SHOW search_path").await.unwrap(),
        "\"My Schema\", public"
    );
    // Through the extended protocol, and SET LOCAL stays in its transaction.
    first
        .execute("SET work_mem = '7MB'", &[])
        .await
        .expect("SET via a prepared statement");
    first
        .batch_execute("BEGIN; SET LOCAL lock_timeout = '3s'; COMMIT")
        .await
        .expect("SET LOCAL");
    assert_eq!(value(&second, "SHOW work_mem").await.unwrap(), "4MB");
    assert_eq!(value(&first, "SHOW work_mem").await.unwrap(), "7MB");
    assert_eq!(value(&first, "SHOW lock_timeout").await.unwrap(), "0");
    // RESET ALL takes the client back to its defaults.
    first.batch_execute("RESET ALL").await.expect("RESET ALL");
    assert_eq!(value(&first, "SHOW statement_timeout").await.unwrap(), "0");
    // A client that leaves does not leave its settings behind.
    first
        .batch_execute("SET statement_timeout = '9s'")
        .await
        .expect("SET");
    drop(first);
    let third = t.client().await;
    assert_eq!(value(&third, "SHOW statement_timeout").await.unwrap(), "0");
}

/// Runs `hold` on the first client; checks the connection is pinned to it (the second client
/// cannot get the single server connection), that `still` works for the first in a later
/// transaction, then that once the first leaves, `gone` reads 0 for the second.
async fn pins(prefix: &str, hold: &str, still: &str, gone: &str, reason: &str) {
    let t = Two::start(prefix);
    let first = t.client().await;
    let second = t.client().await;
    first.batch_execute(hold).await.expect("hold");
    let e = second
        .simple_query("SELECT 1")
        .await
        .expect_err("the only server connection is pinned to the first client");
    assert!(message(&e).contains("53300"), "{}", message(&e));
    first
        .batch_execute(still)
        .await
        .expect("still there for its client");
    assert_eq!(
        t.pooler
            .metric(&format!("dbconn_pooler_pins_total{{kind=\"{reason}\"}}")),
        1.0
    );
    assert_eq!(t.pooler.metric("dbconn_pooler_pinned_servers"), 1.0);
    drop(first);
    // The client left: the connection is reset and serves the next one clean.
    let third = t.client().await;
    let mut left = String::new();
    for _ in 0..50 {
        match value(&third, gone).await {
            Ok(v) => {
                left = v;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(left, "0", "{gone}");
    assert_eq!(t.pooler.metric("dbconn_pooler_pinned_servers"), 0.0);
}

#[tokio::test]
async fn a_session_advisory_lock_pins_the_connection_until_its_client_leaves() {
    pins(
        "leak-lock",
        "SELECT pg_advisory_lock(42)",
        "SELECT 1",
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
        "advisory_lock",
    )
    .await;
}

#[tokio::test]
async fn an_unlocked_advisory_lock_releases_the_pin() {
    let t = Two::start("leak-unlock");
    let first = t.client().await;
    let second = t.client().await;
    first
        .batch_execute("SELECT pg_advisory_lock(7)")
        .await
        .expect("lock");
    first
        .batch_execute("SELECT pg_advisory_unlock(7)")
        .await
        .expect("unlock");
    assert_eq!(value(&second, "SELECT 1").await.expect("free again"), "1");
    // A transaction-level lock never pins.
    first
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(8); COMMIT")
        .await
        .expect("xact lock");
    assert_eq!(value(&second, "SELECT 2").await.expect("free"), "2");
    assert_eq!(t.pooler.metric("dbconn_pooler_pinned_servers"), 0.0);
}

#[tokio::test]
async fn listen_pins_the_connection_until_its_client_leaves() {
    pins(
        "leak-listen",
        "LISTEN jobs",
        "NOTIFY jobs",
        "SELECT count(*) FROM pg_listening_channels()",
        "listen",
    )
    .await;
}

#[tokio::test]
async fn a_temp_table_pins_the_connection_until_its_client_leaves() {
    pins(
        "leak-temp",
        "CREATE TEMP TABLE scratch (x int)",
        "INSERT INTO scratch VALUES (1)",
        "SELECT count(*) FROM pg_class WHERE relpersistence = 't' AND relnamespace = pg_my_temp_schema()",
        "temp_table",
    )
    .await;
}

#[tokio::test]
async fn a_with_hold_cursor_pins_the_connection_until_its_client_leaves() {
    pins(
        "leak-cursor",
        "DECLARE c CURSOR WITH HOLD FOR SELECT generate_series(1, 3)",
        "FETCH 1 FROM c",
        "SELECT count(*) FROM pg_cursors",
        "with_hold_cursor",
    )
    .await;
}

#[test]
fn a_newer_protocol_minor_version_and_protocol_options_are_negotiated_down_to_3_0() {
    let a = app("negotiate");
    let pooler = Pooler::start(&a, bed().postgres.port, &[]);
    // Protocol 3.2 with a _pq_ option, as a newer libpq may ask.
    let packet = startup_with(
        (3 << 16) | 2,
        &[
            ("user", &a.user),
            ("database", &a.db),
            ("_pq_.future", "on"),
        ],
    );
    let mut w = Wire::connect_with(pooler.port, &packet, &a.password);
    assert_eq!(w.login.first(), Some(&'v'), "{:?}", w.login);
    let v = w.negotiated.clone().expect("NegotiateProtocolVersion");
    assert_eq!(&v[..8], &[0, 3, 0, 0, 0, 0, 0, 1], "3.0, one option");
    assert_eq!(&v[8..], b"_pq_.future\0");
    w.send(&query("SELECT 1"));
    assert_eq!(w.values(1), vec!["1"]);
    // What PostgreSQL itself answers.
    let direct = Wire::connect_with(bed().postgres.port, &packet, &a.password);
    assert_eq!(direct.negotiated, w.negotiated);
}

/// A login through the pooler reports the parameters a login straight to PostgreSQL reports,
/// with the client's own values for those it set, whatever the case of their names, spelled
/// as the server spells them (application_name cleaned of non-ASCII bytes as the server
/// version cleans it), however many clients log in; a value the
/// server refuses fails the login with the server's error. Without an application_name, the
/// client is told the pool's (the name pg_stat_activity shows).
#[tokio::test]
async fn a_login_reports_the_parameters_postgresql_reports_with_the_clients_own_values() {
    let a = app("params");
    let pooler = Pooler::start(&a, bed().postgres.port, &["--pool-size", "1"]);
    pooler.wait_ready();
    let packet = startup_with(
        196_608,
        &[
            ("user", &a.user),
            ("database", &a.db),
            ("application_name", "billing é"),
            ("client_encoding", "latin1"),
            // libpq's PGDATESTYLE and PGTZ send these names in lower case.
            ("datestyle", "sql,dmy"),
            ("timezone", "asia/tokyo"),
            ("IntervalStyle", "ISO_8601"),
            ("default_transaction_read_only", "yes"),
        ],
    );
    let direct = Wire::connect_with(bed().postgres.port, &packet, &a.password);
    assert_eq!(direct.params["TimeZone"], "Asia/Tokyo");
    assert_eq!(direct.params["default_transaction_read_only"], "on");
    for _ in 0..3 {
        let mut w = Wire::connect_with(pooler.port, &packet, &a.password);
        assert_eq!(w.params, direct.params);
        w.send(&query("SHOW TimeZone"));
        assert_eq!(w.values(1), vec!["Asia/Tokyo"]);
    }
    for (name, bad) in [("TimeZone", "Mars/Olympus"), ("DateStyle", "ISO, Leap")] {
        let packet = startup_with(
            196_608,
            &[("user", &a.user), ("database", &a.db), (name, bad)],
        );
        let refused = Wire::try_connect_with(bed().postgres.port, &packet, &a.password)
            .err()
            .expect("PostgreSQL refuses it");
        let got = Wire::try_connect_with(pooler.port, &packet, &a.password)
            .err()
            .expect("the pooler refuses it");
        assert_eq!(got, refused, "{name}={bad}");
    }
    let plain = Wire::connect(pooler.port, &a.user, &a.password, &a.db);
    assert_eq!(plain.params["application_name"], "dbconn:test/pod");
    assert_eq!(plain.params["TimeZone"], direct_default_timezone(&a));
    assert_eq!(
        plain.params.keys().collect::<Vec<_>>(),
        direct.params.keys().collect::<Vec<_>>()
    );
}

/// The TimeZone a login straight to PostgreSQL is told when it sets none.
fn direct_default_timezone(a: &App) -> String {
    let w = Wire::connect(bed().postgres.port, &a.user, &a.password, &a.db);
    w.params["TimeZone"].clone()
}
