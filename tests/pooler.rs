//! `dbconn pooler` in front of the bed's real PostgreSQL, driven by tokio-postgres, psql,
//! pgbench and raw sockets: what an application in the pod sees.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use support::pooler::{App, Pooler, admin, app, app_on, first_value, message, raw, startup, value};
use support::{bed, http_get, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_share_five_server_connections_in_transaction_mode() {
    let a = app("many");
    let pooler = Pooler::start(&a, bed().postgres.port, &["--pool-size", "5"]);
    pooler.wait_ready();
    let setup = pooler.client(&a).await.expect("login through the pooler");
    setup
        .batch_execute("CREATE TABLE hits (client int, n int)")
        .await
        .expect("table");
    let mut tasks = Vec::new();
    for c in 0..100 {
        let client = pooler.client(&a).await.expect("client");
        tasks.push(tokio::spawn(async move {
            for n in 0..10 {
                let tx = format!("BEGIN; INSERT INTO hits VALUES ({c}, {n}); COMMIT;");
                client.batch_execute(&tx).await?;
                // Parse/Bind/Execute/Sync in one pipeline, with a parameter.
                let row = client
                    .query_typed_one(
                        "SELECT count(*) FROM hits WHERE client = $1",
                        &[(&c, tokio_postgres::types::Type::INT4)],
                    )
                    .await?;
                assert_eq!(row.get::<_, i64>(0), n + 1);
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("no client saw an error");
    }
    let total = value(&setup, "SELECT count(*) FROM hits")
        .await
        .expect("count");
    assert_eq!(total, "1000");
    let servers = admin(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbconn:test/pod' AND datname = '{}'",
        a.db
    ));
    println!("server connections for 101 clients: {servers}");
    assert!(servers.parse::<i32>().expect("count") <= 5, "{servers}");
    let (code, metrics) = http_get(pooler.http, "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("dbconn_pooler_transactions_total"),
        "{metrics}"
    );
    // The same few server connections served every transaction.
    let connects: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dbconn_pooler_server_connects_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("server_connects in /metrics");
    println!("server connections opened for 2,000 transactions: {connects}");
    assert!(connects <= 5.0, "{connects}");
}

#[tokio::test]
async fn a_client_that_leaves_mid_transaction_never_hands_its_transaction_to_another() {
    let a = app("dirty");
    let pooler = Pooler::start(&a, bed().postgres.port, &["--pool-size", "1"]);
    let first = pooler.client(&a).await.expect("client");
    first
        .batch_execute("CREATE TABLE t (x int)")
        .await
        .expect("table");
    first
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .expect("open transaction");
    drop(first);
    // With a pool of one, the next client gets the same slot: it must be a clean session.
    let second = pooler.client(&a).await.expect("client");
    let rows = value(&second, "SELECT count(*) FROM t")
        .await
        .expect("count");
    assert_eq!(rows, "0", "the abandoned INSERT was rolled back");
    let rows = second
        .simple_query("SELECT txid_current_if_assigned() IS NULL")
        .await
        .expect("query");
    assert_eq!(
        first_value(&rows),
        "t",
        "not inside someone else's transaction"
    );
}

#[tokio::test]
async fn session_mode_keeps_settings_for_the_client_and_resets_them_after() {
    let a = app("session");
    let pooler = Pooler::start(
        &a,
        bed().postgres.port,
        &["--pool-size", "1", "--mode", "session"],
    );
    let c = pooler.client(&a).await.expect("client");
    c.batch_execute("SET statement_timeout = '1234ms'")
        .await
        .expect("set");
    let v = value(&c, "SHOW statement_timeout").await.expect("show");
    assert_eq!(v, "1234ms");
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = pooler.client(&a).await.expect("client");
    let v = value(&c, "SHOW statement_timeout").await.expect("show");
    assert_eq!(v, "0", "DISCARD ALL reset the previous client's setting");
}

#[tokio::test]
async fn startup_parameters_follow_the_client_and_the_pool_is_named_in_pg_stat_activity() {
    let a = app("params");
    let pooler = Pooler::start(&a, bed().postgres.port, &["--pool-size", "1"]);
    let conninfo = format!(
        "{} application_name=billing options='-c search_path=public'",
        pooler.conninfo(&a)
    );
    let (c, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .expect("client");
    tokio::spawn(conn);
    let name = value(&c, "SHOW application_name").await.expect("show");
    assert_eq!(name, "billing");
    drop(c);
    // Another client without the setting does not inherit it.
    let c = pooler.client(&a).await.expect("client");
    let name = value(&c, "SHOW application_name").await.expect("show");
    assert_eq!(
        name, "dbconn:test/pod",
        "the pool's own name, as pg_stat_activity shows"
    );
}

#[tokio::test]
async fn wrong_credentials_and_names_get_clear_errors() {
    let a = app("auth");
    let pooler = Pooler::start(&a, bed().postgres.port, &[]);
    let wrong = App {
        password: "not it".into(),
        ..App {
            db: a.db.clone(),
            user: a.user.clone(),
            password: String::new(),
        }
    };
    let e = pooler.client(&wrong).await.expect_err("refused");
    let db = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "28P01");
    assert!(
        db.message().contains("password authentication failed"),
        "{db:?}"
    );
    let other_db = App {
        db: "elsewhere".into(),
        user: a.user.clone(),
        password: a.password.clone(),
    };
    let e = pooler.client(&other_db).await.expect_err("refused");
    assert_eq!(e.as_db_error().expect("db error").code().code(), "3D000");
    // psql agrees, with md5 and trust not asked for.
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "SELECT 42"])
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", pooler.port.to_string())
        .env("PGDATABASE", &a.db)
        .env("PGUSER", &a.user)
        .env("PGPASSWORD", &a.password)
        .output()
        .expect("psql");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42", "{out:?}");
}

#[tokio::test]
async fn malformed_and_oversized_messages_close_only_that_client() {
    let a = app("malformed");
    let pooler = Pooler::start(
        &a,
        bed().postgres.port,
        &["--client-auth", "trust", "--max-message-bytes", "65536"],
    );
    let bystander = pooler.client(&a).await.expect("client");
    // A startup packet with a negative length.
    let out = raw(pooler.port, &[0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0]);
    assert_eq!(out.first(), Some(&b'E'), "{out:?}");
    assert!(String::from_utf8_lossy(&out).contains("08P01"));
    // A protocol version nobody speaks.
    let mut v9 = 8i32.to_be_bytes().to_vec();
    v9.extend((9i32 << 16).to_be_bytes());
    let out = raw(pooler.port, &v9);
    assert!(
        String::from_utf8_lossy(&out).contains("unsupported frontend protocol 9.0"),
        "{out:?}"
    );
    // After login, a Query announcing 1 GiB: refused from its header alone.
    let mut msg = startup(&a.user, &a.db);
    msg.extend([b'Q', 0x40, 0, 0, 0]);
    let out = raw(pooler.port, &msg);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("exceeds the limit of 65536 bytes"), "{text}");
    // A server-only message type from a client.
    let mut msg = startup(&a.user, &a.db);
    msg.extend([b'Z', 0, 0, 0, 5, b'I']);
    let out = raw(pooler.port, &msg);
    assert!(String::from_utf8_lossy(&out).contains("unexpected message type"));
    // A second StartupMessage after the first (a length where a tag belongs).
    let mut msg = startup(&a.user, &a.db);
    msg.extend(startup(&a.user, &a.db));
    let out = raw(pooler.port, &msg);
    assert!(
        String::from_utf8_lossy(&out).contains("unexpected message type"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // Nothing else was disturbed.
    assert_eq!(value(&bystander, "SELECT 1").await.expect("bystander"), "1");
    assert!(!pooler.log_text().contains("panicked"));
}

#[tokio::test]
async fn a_server_connection_killed_mid_transaction_fails_only_that_transaction() {
    let a = app("killed");
    let pooler = Pooler::start(&a, bed().postgres.port, &["--pool-size", "2"]);
    let c = pooler.client(&a).await.expect("client");
    c.batch_execute("BEGIN").await.expect("begin");
    let pid = value(&c, "SELECT pg_backend_pid()").await.expect("pid");
    admin(&format!("SELECT pg_terminate_backend({pid})"));
    let e = c.simple_query("SELECT 1").await.expect_err("error");
    println!("the client saw: {}", message(&e));
    let fresh = pooler.client(&a).await.expect("a new client");
    assert_eq!(value(&fresh, "SELECT 1").await.expect("works"), "1");
}

/// A PostgreSQL of this test's own (with its own CA), so stopping it disturbs no one;
/// stopped and removed when dropped, even when the test fails.
struct PrivateServer {
    pg: testbed::PostgresInfo,
    dir: PathBuf,
    ca: PathBuf,
}

impl PrivateServer {
    fn start() -> PrivateServer {
        let dir = std::env::temp_dir().join(unique("private-pg"));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = testbed::certs::Ca::create(&dir, "private-pg-ca").expect("CA");
        let pg = testbed::postgres::start(&dir, &ca).expect("a private PostgreSQL");
        PrivateServer {
            pg,
            dir,
            ca: ca.cert_path(),
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self.pg.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_server_restart_gives_clear_errors_and_service_returns_with_it() {
    let server = PrivateServer::start();
    let a = app_on(&server.pg, "restart");
    let pooler = Pooler::start_with_ca(
        &a,
        server.pg.port,
        &server.ca,
        &["--connect-timeout-seconds", "2", "--min-idle", "1"],
    );
    pooler.wait_ready();
    let c = pooler.client(&a).await.expect("client");
    c.batch_execute("SELECT 1").await.expect("works");
    server.pg.stop().expect("stop PostgreSQL");
    let e = c.batch_execute("SELECT 1").await.expect_err("server gone");
    println!("during the outage: {}", message(&e));
    let started = Instant::now();
    let late = pooler.client(&a).await.expect("login is local");
    let err = late.batch_execute("SELECT 1").await.expect_err("no server");
    let text = message(&err);
    println!(
        "a new client during the outage, after {:?}: {text}",
        started.elapsed()
    );
    assert!(text.contains("cannot connect to the server"), "{text}");
    assert!(text.contains("08006"), "{text}");
    server.pg.start().expect("start PostgreSQL");
    // The idle connections from before the restart are dead; new ones are made at once.
    let c = pooler.client(&a).await.expect("client after the restart");
    assert_eq!(value(&c, "SELECT 1").await.expect("works again"), "1");
}

#[tokio::test]
async fn verify_full_against_the_wrong_name_is_not_ready_and_says_why() {
    let a = app("wrongname");
    let pooler = Pooler::start(
        &a,
        bed().postgres.port,
        &["--server-name", "db.example.com"],
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(http_get(pooler.http, "/readyz").0, 503);
    // Never having reached the server, the pooler cannot tell a client the server's
    // parameters: the login itself fails, saying why.
    let e = pooler.client(&a).await.expect_err("no server yet");
    let text = message(&e);
    assert!(text.contains("57P03"), "{text}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    println!("{text}");
}

#[tokio::test]
async fn new_credentials_in_the_secret_are_used_without_dropping_clients() {
    let a = app("rotate");
    let pooler = Pooler::start(&a, bed().postgres.port, &[]);
    let old = pooler.client(&a).await.expect("client");
    // Clients keep working through the rotation.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let c = pooler.client(&a).await.expect("client");
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.batch_execute("BEGIN; SELECT 1; COMMIT").await?;
                n += 1;
            }
            Ok::<_, tokio_postgres::Error>(n)
        }));
    }
    let new_password = "rotated p@ss";
    admin(&format!(
        "ALTER ROLE {} PASSWORD {}",
        a.user,
        dbconn::postgres::quote::literal(new_password)
    ));
    std::fs::write(pooler.secret_dir.join("password"), new_password).expect("write");
    let rotated = App {
        db: a.db.clone(),
        user: a.user.clone(),
        password: new_password.into(),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let fresh = loop {
        if let Ok(c) = pooler.client(&rotated).await {
            break c;
        }
        assert!(Instant::now() < deadline, "the new password never worked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    fresh
        .batch_execute("SELECT 1")
        .await
        .expect("new client works");
    old.batch_execute("SELECT 1")
        .await
        .expect("the old client was not dropped");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut done = 0;
    for t in load {
        done += t
            .await
            .expect("task")
            .expect("no error under load during the rotation");
    }
    println!("{done} transactions ran through the rotation without an error");
}

/// A rotation's switch on the server before the kubelet brings the new Secret: the
/// sidecar's login with `server-password` is refused, and it logs in with the staged
/// `server-password-next` at once; the clients' own password never changed.
#[tokio::test]
async fn a_staged_next_password_takes_over_when_the_server_refuses_the_current_one() {
    let a = app("staged");
    let pooler = Pooler::start(&a, bed().postgres.port, &[]);
    pooler.wait_ready();
    let next = "next p@ss 'staged'";
    std::fs::write(pooler.secret_dir.join("server-password"), &a.password).expect("write");
    std::fs::write(pooler.secret_dir.join("server-password-next"), next).expect("write");
    // The server switches; its sessions opened with the old password are ended.
    admin(&format!(
        "ALTER ROLE {} PASSWORD {}",
        a.user,
        dbconn::postgres::quote::literal(next)
    ));
    admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{}'",
        a.user
    ));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(c) = pooler.client(&a).await
            && c.batch_execute("SELECT 1").await.is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no query after the switch: {}",
            pooler.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        pooler
            .log_text()
            .contains("the server refused the password; using the rotation's next one"),
        "{}",
        pooler.log_text()
    );
}

#[tokio::test]
async fn every_upstream_sslmode_behaves_as_libpq_defines_it() {
    let a = app("sslmodes");
    // (sslmode, whether the server sees TLS): "allow" tries plain first, "prefer" TLS first.
    for (mode, tls) in [
        ("disable", "f"),
        ("allow", "f"),
        ("prefer", "t"),
        ("require", "t"),
        ("verify-ca", "t"),
        ("verify-full", "t"),
    ] {
        let pooler = Pooler::start(&a, bed().postgres.port, &["--sslmode", mode]);
        let c = pooler.client(&a).await.expect("client");
        let ssl = value(
            &c,
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )
        .await
        .expect("query");
        assert_eq!(ssl, tls, "sslmode {mode}");
    }
}

#[tokio::test]
async fn sigterm_lets_a_busy_transaction_finish_then_exits_cleanly() {
    let a = app("sigterm");
    let mut pooler = Pooler::start(&a, bed().postgres.port, &["--shutdown-grace-seconds", "10"]);
    let c = pooler.client(&a).await.expect("client");
    c.batch_execute("BEGIN").await.expect("begin");
    let pid = pooler.child.id();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New clients are turned away…
    assert!(pooler.client(&a).await.is_err());
    // …while the busy one finishes its transaction.
    c.batch_execute("SELECT pg_sleep(0.2); COMMIT")
        .await
        .expect("in-flight transaction completes");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = pooler.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "pooler did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status:?}\n{}", pooler.log_text());
}

#[test]
fn pgbench_runs_through_the_pooler_in_every_query_mode() {
    let a = app("pgbench");
    let pooler = Pooler::start(&a, bed().postgres.port, &["--pool-size", "4"]);
    let pg = &bed().postgres;
    let pgbench = pg.bin_dir.join("pgbench");
    let run = |args: &[&str], port: u16| {
        let out = Command::new(&pgbench)
            .args(args)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                &a.user,
                &a.db,
            ])
            .env("PGPASSWORD", &a.password)
            .env("PGSSLMODE", "disable")
            .output()
            .expect("pgbench");
        assert!(
            out.status.success(),
            "pgbench {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["-i", "-q", "-s", "1"], pooler.port);
    // select-only and tpcb-like in every query mode; -M prepared names its statements and
    // reuses them in transactions that land on any of the four server connections. A thread
    // per client: pgbench prepares each statement with a blocking PQprepare on first use, so a
    // thread waiting there for a server connection would stall its other clients, which hold
    // connections mid-transaction (true of any transaction pooler).
    for mode in ["simple", "extended", "prepared"] {
        for script in ["select-only", "tpcb-like"] {
            let out = run(
                &["-c", "8", "-j", "8", "-t", "100", "-b", script, "-M", mode],
                pooler.port,
            );
            assert!(
                out.contains("number of failed transactions: 0"),
                "{mode} {script}: {out}"
            );
            assert!(
                out.contains("number of transactions actually processed: 800/800"),
                "{out}"
            );
        }
    }
}

#[tokio::test]
async fn a_cancel_reaches_the_running_statement_and_does_nothing_for_an_idle_client() {
    let a = app("cancel");
    let pooler = Pooler::start(&a, bed().postgres.port, &["--pool-size", "2"]);
    let c = pooler.client(&a).await.expect("client");
    // Idle: a cancel does nothing, and the next statement runs normally.
    c.cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel sent");
    assert_eq!(value(&c, "SELECT 1").await.expect("still fine"), "1");
    // Running: the cancel goes to the backend running it, through the pooler.
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel sent");
    let e = sleeper
        .await
        .expect("task")
        .expect_err("the sleep was cancelled");
    let text = message(&e);
    assert!(text.contains("57014"), "{text}");
    println!("cancelled after {:?}: {text}", started.elapsed());
}

/// A bad setting stops the sidecar before it binds a port, with one line naming the setting
/// and exit 64 (EX_USAGE): the same from `dbconn-pooler` (the injected binary) as from
/// `dbconn pooler`.
#[test]
fn a_bad_setting_is_one_line_naming_it_and_exit_64_from_either_binary() {
    let secrets = std::env::temp_dir().join(unique("pooler-bad"));
    std::fs::create_dir_all(&secrets).expect("dir");
    for (file, value) in [
        ("host", "127.0.0.1"),
        ("port", "5432"),
        ("dbname", "app"),
        ("username", "app"),
        ("password", "pw"),
    ] {
        std::fs::write(secrets.join(file), value).expect("write");
    }
    let dir = secrets.to_str().expect("utf-8");
    let cases: [(&[&str], &str); 4] = [
        (
            &["--secret-dir", dir, "--sslmode", "verify-fulll"],
            "--sslmode",
        ),
        (&["--secret-dir", dir, "--mode", "statement"], "--mode"),
        (
            &["--secret-dir", dir, "--pool-size", "2", "--min-idle", "3"],
            "--min-idle",
        ),
        (&["--secret-dir", "/nonexistent/dbconn"], "--secret-dir"),
    ];
    for (program, first) in [
        (env!("CARGO_BIN_EXE_dbconn-pooler"), None),
        (env!("CARGO_BIN_EXE_dbconn"), Some("pooler")),
    ] {
        for (args, setting) in cases {
            let listen = format!("127.0.0.1:{}", testbed::free_port().expect("port"));
            let mut child = Command::new(program)
                .args(first)
                .args(args)
                .args(["--listen", &listen, "--http-addr", "127.0.0.1:0"])
                .env_remove("DBCONN_PASSWORD")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run");
            // One that starts anyway is stopped, and fails the test below.
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().expect("wait").is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{program} {args:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{program} {args:?}: {stderr}");
            assert!(
                stderr.starts_with("dbconn pooler: ") && stderr.contains(setting),
                "{program} {args:?}: {stderr}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&secrets);
}
