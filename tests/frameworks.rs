//! Frameworks connect unedited: each real client is configured only from the connection
//! Secret's keys, set as its environment the way `envFrom` or the webhook would, with the
//! Secret's files where the webhook mounts them (/var/run/dbconn/<connection>/) and the
//! sidecar (`dbconn pooler` on those files) on the port the Secret names. docs/frameworks.md
//! lists what each reads.
//!
//! - libpq/psql through the `PG*` keys, and `direct-uri` (verify-full with the mounted CA);
//! - pgx through the `PG*` keys (the driver matrix's program, tests/drivers/go);
//! - psycopg 3 (`uri`, `direct-uri`), SQLAlchemy with asyncpg (`sqlalchemy-asyncpg-uri`),
//!   Django through dj-database-url (`uri` as DATABASE_URL): tests/frameworks/python_clients.py;
//! - node-postgres (`uri`, and `direct-uri` with its CA): tests/frameworks/node_client.js;
//! - Prisma ORM 7 with @prisma/adapter-pg (`uri`, `direct-uri`): tests/frameworks/prisma;
//! - Rails, railties and Active Record (`uri` as DATABASE_URL, then `direct-uri`):
//!   tests/frameworks/rails_client.rb;
//! - Spring Boot (`SPRING_DATASOURCE_URL`, `_USERNAME`, `_PASSWORD`; `direct-jdbc-uri`):
//!   tests/frameworks/spring.
//!
//! The clients come from scripts/drivers.sh (make setup).

mod support;

use std::process::Command;

use support::pooler::Pooler;
use support::{
    READY, admin_and_ca, apply_yaml, bed, connection, database, installed, mount_secret, namespace,
    operator, repo, secret_data, unique, wait_for,
};

/// Runs a client with exactly `env` (and PATH/HOME); its stdout lines.
fn run(what: &str, mut cmd: Command, env: &[(&str, &str)]) -> Vec<String> {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn frameworks_connect_unedited_through_the_sidecar_and_directly() {
    let _ = operator();
    let ns = namespace("fw");
    admin_and_ca(&ns);
    let db = database("fw");
    // The pgx scenario's table, there before the connection's grants are planned.
    bed()
        .postgres
        .psql(
            &db,
            "CREATE TABLE driver_rows (client text NOT NULL, n int NOT NULL)",
        )
        .expect("table");
    let name = unique("fw");
    let role = format!("{}_app", db);
    let port = testbed::free_port().expect("port");
    apply_yaml(&connection(
        &ns,
        &name,
        &format!(
            "    host: localhost\n    port: {}\n    adminSecretRef: {{name: admin}}\n    tls: {{sslmode: verify-full, caSecretRef: {{name: db-ca}}}}",
            bed().postgres.port
        ),
        &format!(
            "  database: {db}\n  role: {{name: {role}}}\n  access: readWrite\n  pooler: {{enabled: true, port: {port}}}\n"
        ),
    ));
    wait_for("dbconn", &ns, &name, READY, "True", 90);
    let data = secret_data(&ns, &name);

    // The files, where the Secret's values name them.
    let mounted = mount_secret(&name, &data);
    // As the webhook injects it for a generated password: 16 SCRAM iterations, which every
    // client below must accept.
    let iterations = dbconn::inject::GENERATED_PASSWORD_ITERATIONS.to_string();
    let sidecar = Pooler::on_secret_dir(
        mounted.0.clone(),
        port,
        &["--client-scram-iterations", &iterations],
    );
    sidecar.wait_ready();
    assert_eq!(
        data["host"], "127.0.0.1",
        "with the pooler, host is the sidecar"
    );
    assert_eq!(data["port"], port.to_string());

    let want = |framework: &str| format!("{framework} {role} ");
    // libpq/psql: the PG* keys alone (envFrom: secretRef), then direct-uri.
    let pg: Vec<(&str, &str)> = data
        .iter()
        .filter(|(k, _)| k.starts_with("PG"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let psql = || {
        let mut c = Command::new("psql");
        c.args(["-XAt", "-F", " ", "-c"])
            .arg("SELECT 'psql', current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
        c
    };
    let lines = run("psql with PG*", psql(), &pg);
    assert_eq!(lines, [format!("psql {role} t")], "through the sidecar");
    let mut direct = psql();
    direct.arg(&data["direct-uri"]);
    let lines = run("psql with direct-uri", direct, &[]);
    assert_eq!(lines, [format!("psql {role} t")], "straight to the server");

    // pgx: the driver matrix's program (tests/drivers/go), on the PG* keys alone.
    let mut pgx_env = pg.clone();
    pgx_env.extend([("DRIVER_CLIENTS", "2"), ("DRIVER_ITERATIONS", "3")]);
    let lines = run(
        "pgx with PG*",
        Command::new(installed("go/pgx-driver")),
        &pgx_env,
    );
    assert_eq!(lines, ["checks=24"], "2 clients × 3 iterations × 4 checks");

    // Python: psycopg, SQLAlchemy + asyncpg, Django with dj-database-url.
    let mut python = Command::new(installed("python/bin/python"));
    python.arg(repo().join("tests/frameworks/python_clients.py"));
    let lines = run(
        "python frameworks",
        python,
        &[
            ("DATABASE_URL", &data["uri"]),
            ("SQLALCHEMY_URL", &data["sqlalchemy-asyncpg-uri"]),
            ("DIRECT_URL", &data["direct-uri"]),
        ],
    );
    for framework in ["psycopg", "sqlalchemy", "django", "psycopg-direct"] {
        assert!(
            lines
                .iter()
                .any(|l| *l == format!("{}True", want(framework))),
            "{framework}: {lines:?}"
        );
    }

    // A client that reads DATABASE_URL (the Secret's uri, through the sidecar) and DIRECT_URL
    // (direct-uri, verify-full with the CA file sslrootcert names), printing `<name> …` and
    // `<name>-direct …`.
    let through = |served: f64| {
        let now = sidecar.metric("dbconn_pooler_transactions_total");
        assert!(now > served, "through the sidecar: {now} after {served}");
        now
    };
    let both_urls = |framework: &str, program: &str, script: &str, extra: &[(&str, &str)]| {
        let served = sidecar.metric("dbconn_pooler_transactions_total");
        let mut cmd = Command::new(program);
        cmd.arg(repo().join(script));
        let mut env = vec![
            ("DATABASE_URL", data["uri"].as_str()),
            ("DIRECT_URL", data["direct-uri"].as_str()),
        ];
        env.extend_from_slice(extra);
        let lines = run(framework, cmd, &env);
        assert_eq!(
            lines,
            [
                format!("{}true", want(framework)),
                format!("{}true", want(&format!("{framework}-direct"))),
            ]
        );
        through(served);
    };
    // node-postgres; Prisma ORM 7 (its Rust-free client over @prisma/adapter-pg); Rails
    // (railties + Active Record), which the script runs again with DATABASE_URL=$DIRECT_URL.
    let modules = installed("node/node_modules");
    let nm = [("NODE_PATH", modules.to_str().expect("path"))];
    both_urls(
        "node-postgres",
        "node",
        "tests/frameworks/node_client.js",
        &nm,
    );
    let modules = installed("prisma/node_modules");
    let nm = [("NODE_PATH", modules.to_str().expect("path"))];
    both_urls("prisma", "node", "tests/frameworks/prisma/client.js", &nm);
    both_urls("rails", "ruby", "tests/frameworks/rails_client.rb", &[]);

    // Spring Boot: the three SPRING_DATASOURCE_* keys as they are (envFrom), through the
    // sidecar; then direct-jdbc-uri, as a migration tool's datasource would name it.
    let spring = || {
        let mut c = Command::new("java");
        c.arg("-jar").arg(installed("spring/app.jar"));
        c
    };
    let spring_env: Vec<(&str, &str)> = data
        .iter()
        .filter(|(k, _)| k.starts_with("SPRING_DATASOURCE_"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(spring_env.len(), 3, "{spring_env:?}");
    let served = sidecar.metric("dbconn_pooler_transactions_total");
    let lines = run("spring-boot", spring(), &spring_env);
    assert_eq!(lines, [format!("{}true", want("spring-boot"))]);
    through(served);
    let lines = run(
        "spring-boot direct",
        spring(),
        &[
            ("SPRING_DATASOURCE_URL", &data["direct-jdbc-uri"]),
            ("SPRING_DATASOURCE_USERNAME", &data["username"]),
            ("SPRING_DATASOURCE_PASSWORD", &data["server-password"]),
        ],
    );
    assert_eq!(lines, [format!("{}true", want("spring-boot"))]);

    // The nine clients that used uri, PG*, SQLALCHEMY_URL or SPRING_DATASOURCE_* went through
    // the sidecar.
    assert!(
        sidecar.metric("dbconn_pooler_transactions_total") >= 9.0,
        "{}",
        sidecar.log_text()
    );
}
