//! The sidecar's admin console (PgBouncer's commands on the virtual database `pgbouncer`)
//! and its pool metrics, against the bed's PostgreSQL: psql runs the commands as an operator
//! of PgBouncer would, and the figures are checked while one client holds the only server
//! connection and another waits for it.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::pooler::{Pooler, app, first_value, message};

/// psql on the console (`-t`: rows only, or with column names first): its output lines, or
/// its error output.
fn psql_console(
    p: &Pooler,
    user: &str,
    password: &str,
    sql: &str,
    rows_only: bool,
) -> Result<Vec<String>, String> {
    let out = Command::new("psql")
        .args(["-X", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .args(rows_only.then_some("-t"))
        .arg(format!(
            "host=127.0.0.1 port={} dbname=pgbouncer user={user} sslmode=disable connect_timeout=10",
            p.port
        ))
        .env("PGPASSWORD", password)
        .output()
        .expect("psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The console's rows as `|`-separated lines, or psql's error output.
fn console(p: &Pooler, user: &str, password: &str, sql: &str) -> Result<Vec<String>, String> {
    psql_console(p, user, password, sql, true)
}

/// The console's first row, by column name.
fn console_table(p: &Pooler, user: &str, password: &str, sql: &str) -> Vec<(String, String)> {
    let lines =
        psql_console(p, user, password, sql, false).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let cells = |i: usize| -> Vec<String> {
        lines
            .get(i)
            .unwrap_or_else(|| panic!("{sql}: no line {i}"))
            .split('|')
            .map(str::to_owned)
            .collect()
    };
    cells(0).into_iter().zip(cells(1)).collect()
}

fn column<'a>(row: &'a [(String, String)], name: &str) -> &'a str {
    row.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no column {name} in {row:?}"))
}

/// Waits until `check` holds, at most `secs` seconds.
fn eventually(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "{what} never held");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_pools_clients_servers_and_stats_and_pauses_reconnects_and_reloads() {
    let a = app("console");
    let p = Pooler::start(&a, support::bed().postgres.port, &["--pool-size", "1"]);
    p.wait_ready();
    let (user, pw) = (a.user.clone(), a.password.clone());

    // One client holds the only server connection in a transaction; another waits.
    let holder = p.client(&a).await.expect("client");
    holder.simple_query("BEGIN").await.expect("begin");
    let held_pid = first_value(
        &holder
            .simple_query("SELECT pg_backend_pid()")
            .await
            .expect("pid"),
    );
    let waiter = p.client(&a).await.expect("client");
    let waiting = tokio::spawn(async move {
        let rows = waiter.simple_query("SELECT 'served'").await;
        (waiter, rows.map(|r| first_value(&r)))
    });
    eventually("a client waits", 10, || {
        p.metric("dbconn_pooler_cl_waiting ") == 1.0
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let pools = console_table(&p, &user, &pw, "SHOW POOLS");
    assert_eq!(column(&pools, "database"), a.db);
    assert_eq!(column(&pools, "user"), a.user);
    assert_eq!(column(&pools, "cl_active"), "1");
    assert_eq!(column(&pools, "cl_waiting"), "1");
    assert_eq!(column(&pools, "sv_active"), "1");
    assert_eq!(column(&pools, "sv_idle"), "0");
    assert_eq!(column(&pools, "pool_mode"), "transaction");
    assert!(column(&pools, "maxwait").parse::<u64>().expect("maxwait") >= 1);
    // The same figures on /metrics (read from the pool at each scrape).
    assert_eq!(p.metric("dbconn_pooler_cl_active "), 1.0);
    assert_eq!(p.metric("dbconn_pooler_sv_active "), 1.0);
    assert_eq!(p.metric("dbconn_pooler_pool_size "), 1.0);
    assert!(p.metric("dbconn_pooler_maxwait_seconds ") >= 1.0);

    let clients = console(&p, &user, &pw, "SHOW CLIENTS").expect("clients");
    let mut states: Vec<&str> = clients
        .iter()
        .map(|l| l.split('|').nth(3).unwrap_or(""))
        .collect();
    states.sort_unstable();
    assert_eq!(states, ["active", "waiting"], "{clients:?}");
    let active = clients
        .iter()
        .find(|l| l.contains("|active|"))
        .expect("active");
    assert_eq!(
        active.split('|').nth(8),
        Some(held_pid.as_str()),
        "link: the server pid"
    );
    let servers = console(&p, &user, &pw, "SHOW SERVERS").expect("servers");
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert!(servers[0].starts_with(&format!("S|{}|{}|active|", a.user, a.db)));
    assert_eq!(servers[0].split('|').nth(8), Some(held_pid.as_str()));

    holder.simple_query("COMMIT").await.expect("commit");
    let (waiter, served) = waiting.await.expect("join");
    assert_eq!(served.expect("the waiter is served"), "served");

    // A named statement (tokio-postgres prepares one) is kept on the server connection.
    let n: i32 = waiter
        .query_one("SELECT $1::int + 1", &[&41i32])
        .await
        .expect("prepared")
        .get(0);
    assert_eq!(n, 42);
    eventually("the connection is idle", 10, || {
        console(&p, &user, &pw, "SHOW SERVERS")
            .is_ok_and(|s| s.len() == 1 && s[0].contains("|idle|"))
    });
    let prepared = console(&p, &user, &pw, "SHOW PREPARED").expect("prepared");
    assert_eq!(prepared.len(), 1, "{prepared:?}");
    let statements: u32 = prepared[0]
        .split('|')
        .nth(1)
        .expect("statements")
        .parse()
        .expect("number");
    assert!(statements >= 1, "{prepared:?}");

    let stats = console_table(&p, &user, &pw, "SHOW STATS");
    let total = |c: &str| column(&stats, c).parse::<u64>().expect(c);
    assert!(total("total_xact_count") >= 4, "{stats:?}");
    assert!(total("total_query_count") >= 4);
    assert!(total("total_received") > 0 && total("total_sent") > 0);
    assert!(
        total("total_wait_time") >= 1_000_000,
        "the waiter waited over a second: {stats:?}"
    );
    let config = console(&p, &user, &pw, "SHOW CONFIG").expect("config");
    assert!(
        config.contains(&"default_pool_size|1|no".to_owned()),
        "{config:?}"
    );
    assert!(config.contains(&"pool_mode|transaction|no".to_owned()));

    // Histograms and byte counters.
    assert!(p.metric("dbconn_pooler_transaction_duration_seconds_count ") >= 4.0);
    assert!(p.metric("dbconn_pooler_query_duration_seconds_count ") >= 4.0);
    assert!(p.metric("dbconn_pooler_received_bytes_total ") > 0.0);
    assert!(p.metric("dbconn_pooler_sent_bytes_total ") > 0.0);

    // PAUSE: queries wait until RESUME.
    assert_eq!(
        console(&p, &user, &pw, "PAUSE"),
        Ok(vec!["PAUSE".to_owned()])
    );
    let paused = tokio::spawn(async move {
        let rows = waiter.simple_query("SELECT 'after resume'").await;
        (waiter, rows.map(|r| first_value(&r)))
    });
    eventually("a query waits while paused", 10, || {
        p.metric("dbconn_pooler_cl_waiting ") == 1.0
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!paused.is_finished(), "a query ran while paused");
    assert_eq!(
        console(&p, &user, &pw, "RESUME"),
        Ok(vec!["RESUME".to_owned()])
    );
    let (waiter, after) = tokio::time::timeout(Duration::from_secs(10), paused)
        .await
        .expect("resumed in time")
        .expect("join");
    assert_eq!(after.expect("served after RESUME"), "after resume");

    // RECONNECT: the next transaction runs on a new server connection.
    let before = first_value(
        &waiter
            .simple_query("SELECT pg_backend_pid()")
            .await
            .expect("pid"),
    );
    assert_eq!(
        console(&p, &user, &pw, "RECONNECT"),
        Ok(vec!["RECONNECT".to_owned()])
    );
    let after = first_value(
        &waiter
            .simple_query("SELECT pg_backend_pid()")
            .await
            .expect("pid"),
    );
    assert_ne!(before, after, "RECONNECT replaced the server connection");

    // RELOAD reads the mounted Secret at once.
    assert_eq!(
        console(&p, &user, &pw, "RELOAD"),
        Ok(vec!["RELOAD".to_owned()])
    );
    eventually("the reload is logged", 5, || {
        p.log_text().contains("the Secret changed")
    });

    // What the console refuses, with an ErrorResponse that says why.
    let unknown = console(&p, &user, &pw, "SHOW FDS").expect_err("unknown");
    assert!(
        unknown.contains("SHOW FDS is not a console command"),
        "{unknown}"
    );
    let sql = console(&p, &user, &pw, "SELECT 1").expect_err("sql");
    assert!(sql.contains("is not a console command"), "{sql}");
    let wrong = console(&p, &user, "not the password", "SHOW POOLS").expect_err("password");
    assert!(wrong.contains("password authentication failed"), "{wrong}");
    let (console_client, conn) = tokio_postgres::connect(
        &p.conninfo(&a)
            .replace(&format!("dbname={}", a.db), "dbname=pgbouncer"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("console over tokio-postgres");
    tokio::spawn(conn);
    let extended = console_client
        .query("SHOW POOLS", &[])
        .await
        .expect_err("extended");
    assert!(
        message(&extended).contains("simple queries only"),
        "{}",
        message(&extended)
    );
    // The session goes on after an error.
    let rows = console_client
        .simple_query("SHOW VERSION")
        .await
        .expect("version");
    assert!(first_value(&rows).starts_with("dbconn pooler "));
    drop(waiter);
}
