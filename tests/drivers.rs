//! The driver matrix: real PostgreSQL drivers, each with its own statement cache or
//! server-side prepare, run one scenario (tests/drivers/README.md) through `dbconn pooler` in
//! transaction mode with two server connections for six clients. Every answer is checked by
//! the driver program, and what it wrote is counted again here, as the bed's superuser.
//! `scripts/drivers.sh` (part of `make setup`) installs the drivers; a missing one fails.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::pooler::{Pooler, app};
use support::{bed, installed, repo, unique};

const CLIENTS: usize = 6;
const ITERATIONS: usize = 25;
/// doubled, application_name, the row count, the division-by-zero SQLSTATE.
const CHECKS_PER_ITERATION: usize = 4;
const POOL_SIZE: &str = "2";

/// Runs `program` against a fresh database behind a pooler and checks every answer.
fn matrix(driver: &str, mut program: Command) {
    let a = app(&format!("drv_{driver}"));
    let pg = &bed().postgres;
    pg.psql(
        &a.db,
        &format!(
            "CREATE TABLE driver_rows (client text NOT NULL, n int NOT NULL); \
             ALTER TABLE driver_rows OWNER TO {}",
            a.user
        ),
    )
    .expect("table");
    let iterations = dbconn::inject::GENERATED_PASSWORD_ITERATIONS.to_string();
    let p = Pooler::start(
        &a,
        pg.port,
        &[
            "--pool-size",
            POOL_SIZE,
            "--client-scram-iterations",
            &iterations,
        ],
    );
    p.wait_ready();
    let out = std::env::temp_dir().join(unique(&format!("driver-{driver}")));
    let stdout = out.with_extension("out");
    let stderr = out.with_extension("err");
    let mut child = program
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", p.port.to_string())
        .env("PGUSER", &a.user)
        .env("PGPASSWORD", &a.password)
        .env("PGDATABASE", &a.db)
        .env("PGSSLMODE", "disable")
        .env("DRIVER_CLIENTS", CLIENTS.to_string())
        .env("DRIVER_ITERATIONS", ITERATIONS.to_string())
        .env("DRIVER_TAG", driver)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("stdout"))
        .stderr(std::fs::File::create(&stderr).expect("stderr"))
        .spawn()
        .unwrap_or_else(|e| panic!("{driver}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let printed = std::fs::read_to_string(&stdout).unwrap_or_default();
    let errors = std::fs::read_to_string(&stderr).unwrap_or_default();
    let pooler_log = p.log_text();
    let tail = &pooler_log[pooler_log.len().saturating_sub(4000)..];
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("{driver} failed ({s}):\n{errors}\n{printed}\npooler log tail:\n{tail}"),
        None => panic!(
            "{driver} did not finish in 180 s:\n{errors}\n{printed}\npooler log tail:\n{tail}"
        ),
    }
    assert_eq!(
        printed.trim(),
        format!("checks={}", CLIENTS * ITERATIONS * CHECKS_PER_ITERATION),
        "{driver}: {errors}"
    );
    assert_eq!(
        pg.psql(
            &a.db,
            "SELECT count(*), count(DISTINCT client) FROM driver_rows"
        )
        .expect("count"),
        format!("{}|{CLIENTS}", CLIENTS * ITERATIONS),
        "{driver}: every client's rows, once each"
    );
    let servers: usize = pg
        .psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = '{}'",
                a.user
            ),
        )
        .expect("servers")
        .parse()
        .expect("number");
    assert!(
        (1..=2).contains(&servers),
        "{driver}: {servers} server connections for {CLIENTS} clients"
    );
    let _ = std::fs::remove_file(stdout);
    let _ = std::fs::remove_file(stderr);
}

fn node(lib: &str) -> Command {
    let mut c = Command::new("node");
    c.arg(repo().join("tests/drivers/node/driver.js"))
        .arg(lib)
        .env("NODE_PATH", installed("node/node_modules"));
    c
}

fn python(lib: &str) -> Command {
    let mut c = Command::new(installed("python/bin/python"));
    c.arg(repo().join("tests/drivers/python/driver.py"))
        .arg(lib);
    c
}

#[test]
fn node_postgres_named_statements() {
    matrix("node_postgres", node("pg"));
}

#[test]
fn postgres_js_prepared_statements() {
    matrix("postgres_js", node("postgres"));
}

#[test]
fn psycopg_server_side_prepare() {
    matrix("psycopg", python("psycopg"));
}

#[test]
fn asyncpg_statement_cache() {
    matrix("asyncpg", python("asyncpg"));
}

#[test]
fn pgx_statement_cache() {
    matrix("pgx", Command::new(installed("go/pgx-driver")));
}

#[test]
fn pgjdbc_prepare_threshold_1() {
    let dir = installed("java");
    let mut c = Command::new("java");
    c.arg("-cp")
        .arg(format!(
            "{}:{}",
            dir.display(),
            dir.join("postgresql.jar").display()
        ))
        .arg("Driver");
    matrix("pgjdbc", c);
}
