//! Months in the life of a connection, on the real bed: deletion by policy, a server outage
//! (backoff, a deletion that waits for the server, recovery), drift repaired by the periodic
//! re-validation, metrics, and `dbconn check`.

mod support;

use std::process::Command;

use support::{
    READY, Relay, admin_and_ca, apply_yaml, bed, condition, connection, database, get, kubectl,
    kubectl_ok, namespace, operator, poke, psql_env, secret_value, unique, wait_deleted, wait_for,
    wait_reason,
};

fn verify_full(port: u16) -> String {
    format!(
        "    host: localhost\n    port: {port}\n    adminSecretRef: {{name: admin}}\n    tls: {{sslmode: verify-full, caSecretRef: {{name: db-ca}}}}"
    )
}

/// Runs SQL as the bed's superuser in `db` and returns the trimmed output.
fn admin_sql(db: &str, sql: &str) -> String {
    bed()
        .postgres
        .psql(db, sql)
        .expect("psql")
        .trim()
        .to_owned()
}

fn role_exists(role: &str) -> bool {
    let lit = dbconn::postgres::quote::literal(role);
    admin_sql(
        "postgres",
        &format!("SELECT count(*) FROM pg_roles WHERE rolname = {lit}"),
    ) == "1"
}

/// Explicit ACL entries naming `role` on tables, schemas and the database of `db`.
fn acl_entries(db: &str, role: &str) -> String {
    let lit = dbconn::postgres::quote::literal(role);
    admin_sql(
        db,
        &format!(
            "WITH r AS (SELECT oid FROM pg_roles WHERE rolname = {lit}) \
             SELECT (SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a, r WHERE a.grantee = r.oid) \
             + (SELECT count(*) FROM pg_namespace n, aclexplode(n.nspacl) a, r WHERE a.grantee = r.oid) \
             + (SELECT count(*) FROM pg_database d, aclexplode(d.datacl) a, r WHERE a.grantee = r.oid AND d.datname = current_database())"
        ),
    )
}

/// psql as the connection's role into another database, with the Secret's credentials.
fn psql_as_role_in(ns: &str, secret: &str, db: &str, sql: &str) -> Result<String, String> {
    let env = vec![
        ("PGHOST", secret_value(ns, secret, "host")),
        ("PGPORT", secret_value(ns, secret, "port")),
        ("PGDATABASE", db.to_owned()),
        ("PGUSER", secret_value(ns, secret, "username")),
        ("PGPASSWORD", secret_value(ns, secret, "password")),
        ("PGSSLMODE", "verify-full".to_owned()),
        ("PGSSLROOTCERT", bed().ca_cert.display().to_string()),
    ];
    psql_env(sql, &env)
}

#[test]
fn each_deletion_policy_does_what_it_says() {
    operator();
    let pg = &bed().postgres;
    let ns = namespace("deletion");
    admin_and_ca(&ns);
    let db = database("deletion");
    let other_db = database("deletion_other");
    admin_sql(
        &db,
        "CREATE TABLE public.items (n int); INSERT INTO public.items VALUES (1)",
    );
    let roles: Vec<String> = ["keep me", "revoke me", "drop me"]
        .iter()
        .map(|r| unique(r))
        .collect();
    for ((name, policy, access), role) in [
        ("retain", "Retain", "readOnly"),
        ("revoke", "Revoke", "readWrite"),
        ("delete", "Delete", "owner"),
    ]
    .iter()
    .zip(&roles)
    {
        apply_yaml(&connection(
            &ns,
            name,
            &verify_full(pg.port),
            &format!(
                "  database: {db}\n  role: {{name: {role:?}}}\n  access: {access}\n  deletionPolicy: {policy}\n"
            ),
        ));
    }
    for name in ["retain", "revoke", "delete"] {
        wait_for("dbconn", &ns, name, READY, "True", 90);
    }
    let finalizers = get(&ns, "dbconn", "retain", "{.metadata.finalizers}");
    assert!(finalizers.contains("dbconn.io/cleanup"), "{finalizers}");

    // The Delete role owns tables in two databases and has a session open.
    psql_as_role_in(&ns, "delete", &db, "CREATE TABLE public.mine (n int)").expect("create");
    admin_sql(
        &other_db,
        &format!(
            "GRANT CREATE ON SCHEMA public TO \"{}\"",
            roles[2].replace('"', "\"\"")
        ),
    );
    psql_as_role_in(
        &ns,
        "delete",
        &other_db,
        "CREATE TABLE public.theirs (n int)",
    )
    .expect("create elsewhere");
    let mut session = Command::new("psql")
        .args(["-X", "-c", "SELECT pg_sleep(300)"])
        .env("PGHOST", "localhost")
        .env("PGPORT", pg.port.to_string())
        .env("PGDATABASE", &db)
        .env("PGUSER", &roles[2])
        .env("PGPASSWORD", secret_value(&ns, "delete", "password"))
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &bed().ca_cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("psql session");
    let lit = dbconn::postgres::quote::literal(&roles[2]);
    for _ in 0..50 {
        if admin_sql(
            "postgres",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE usename = {lit}"),
        ) != "0"
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    kubectl_ok(&[
        "-n",
        &ns,
        "delete",
        "dbconn",
        "retain",
        "revoke",
        "delete",
        "--wait=false",
    ]);
    for name in ["retain", "revoke", "delete"] {
        wait_deleted("dbconn", &ns, name, 90);
    }
    // Revoke and Delete take the Secret with them; Retain keeps it, without its owner, as the
    // only copy of the generated password of the role it keeps.
    for name in ["revoke", "delete"] {
        let secrets = kubectl(&["-n", &ns, "get", "secret", name]);
        assert!(
            !secrets.status.success(),
            "secret {name} went with its connection"
        );
    }
    assert_eq!(
        get(&ns, "secret", "retain", "{.metadata.ownerReferences}"),
        "",
        "the retained Secret has no owner to be collected with"
    );
    assert!(!get(&ns, "secret", "retain", "{.data.password}").is_empty());

    // Retain: the role and its grants stay.
    assert!(role_exists(&roles[0]));
    assert_ne!(acl_entries(&db, &roles[0]), "0");
    // Revoke: the role stays, without a single grant.
    assert!(role_exists(&roles[1]));
    assert_eq!(acl_entries(&db, &roles[1]), "0");
    // Delete: the session ended, the role is gone, and its tables with it in both databases
    // (never handed to the admin, whose privileges their owner's code would then run with).
    let ended = session.wait().expect("psql session");
    assert!(!ended.success(), "the session was terminated");
    assert!(!role_exists(&roles[2]));
    assert_eq!(
        admin_sql(
            &db,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'mine'"
        ),
        "0"
    );
    assert_eq!(
        admin_sql(
            &other_db,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'theirs'"
        ),
        "0"
    );
    assert_eq!(
        admin_sql(&db, "SELECT count(*) FROM public.items"),
        "1",
        "what the role did not own stays"
    );
    let events = kubectl_ok(&["-n", &ns, "get", "events", "-o", "yaml"]);
    assert!(
        events.contains("dropped (deletionPolicy Delete)"),
        "{events}"
    );
}

/// `retry_in_ms` of each failed reconcile of `name` in `ns`, in order.
fn retries(log: &str, ns: &str, name: &str) -> Vec<u64> {
    let object = format!("/{name}.{ns}");
    log.lines()
        .filter(|l| l.contains("reconcile failed") && l.contains(&object))
        .filter_map(|l| {
            let rest = l.split("retry_in_ms=").nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn a_server_outage_backs_off_then_recovers_and_a_pending_deletion_finishes() {
    let op = operator();
    let pg = &bed().postgres;
    let ns = namespace("outage");
    admin_and_ca(&ns);
    let relay = Relay::start(pg.port);
    let through_relay = format!(
        "    host: 127.0.0.1\n    port: {}\n    adminSecretRef: {{name: admin}}\n    tls: {{sslmode: verify-full, caSecretRef: {{name: db-ca}}}}",
        relay.port
    );
    let (stays, goes) = (unique("stays"), unique("goes"));
    for (name, role) in [("stays", &stays), ("goes", &goes)] {
        apply_yaml(&connection(
            &ns,
            name,
            &through_relay,
            &format!(
                "  database: postgres\n  role: {{name: {role:?}}}\n  access: none\n  grants: [{{privileges: [CONNECT]}}]\n  deletionPolicy: Delete\n"
            ),
        ));
    }
    wait_for("dbconn", &ns, "stays", READY, "True", 60);
    wait_for("dbconn", &ns, "goes", READY, "True", 60);

    relay.down();
    poke(&ns, "stays");
    let msg = wait_for(
        "dbconn",
        &ns,
        "stays",
        &condition("ServerReachable", "status"),
        "False",
        60,
    );
    println!("server down: {msg}");
    // Four failures in a row: 1 s, 2 s, 4 s, 8 s apart (±10 %).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = retries(&op.log_text(), &ns, "stays");
    while seen.len() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(500));
        seen = retries(&op.log_text(), &ns, "stays");
    }
    println!("retry delays while down (ms): {seen:?}");
    assert!(seen.len() >= 4, "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[1] > w[0]) || seen.iter().rev().take(2).all(|d| *d >= 14_000),
        "the wait grows until the cap: {seen:?}"
    );
    assert!(seen[3] >= 3 * seen[0], "{seen:?}");

    // Deleted while the server is down: the finalizer holds and Ready says why.
    kubectl_ok(&["-n", &ns, "delete", "dbconn", "goes", "--wait=false"]);
    let blocked = wait_reason(&ns, "goes", "Ready", "DeletionBlocked", 60);
    assert!(blocked.contains("cannot finish yet"), "{blocked}");
    assert!(role_exists(&goes));

    // Metrics count the reconciles and the errors by reason.
    let (code, metrics) = op.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains(r#"dbconn_reconciles_total{kind="DatabaseConnection"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"dbconn_reconcile_errors_total{kind="DatabaseConnection",reason="#),
        "{metrics}"
    );
    assert_eq!(op.get("/healthz").0, 200);
    op.assert_ready_within(30);
    assert_eq!(op.get("/nope").0, 404);

    // The server returns: within one backoff period (capped at 16 s here) all is well.
    relay.up();
    wait_for("dbconn", &ns, "stays", READY, "True", 40);
    wait_deleted("dbconn", &ns, "goes", 40);
    assert!(
        !role_exists(&goes),
        "the role was dropped once the server was back"
    );
}

#[test]
fn a_grant_revoked_by_hand_comes_back_with_an_event() {
    operator();
    let pg = &bed().postgres;
    let ns = namespace("drift");
    admin_and_ca(&ns);
    let db = database("drift");
    admin_sql(
        &db,
        "CREATE TABLE public.facts (n int); INSERT INTO public.facts VALUES (3)",
    );
    let role = unique("drifter");
    apply_yaml(&connection(
        &ns,
        "drift",
        &verify_full(pg.port),
        &format!("  database: {db}\n  role: {{name: {role:?}}}\n  access: readOnly\n"),
    ));
    wait_for("dbconn", &ns, "drift", READY, "True", 60);
    let check = format!(
        "SELECT has_table_privilege({}, 'public.facts', 'SELECT')",
        dbconn::postgres::quote::literal(&role)
    );
    assert_eq!(admin_sql(&db, &check), "t");
    // Let the reconciles that follow creation (Secret, status) pass, so that what repairs
    // the grant below is the periodic re-validation.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let revoked = std::time::Instant::now();
    admin_sql(
        &db,
        &format!("REVOKE SELECT ON public.facts FROM \"{role}\""),
    );
    assert_eq!(admin_sql(&db, &check), "f");
    // The operator re-validates every 20 s in the tests.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while admin_sql(&db, &check) != "t" {
        assert!(std::time::Instant::now() < deadline, "SELECT not restored");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    println!("restored {:?} after the revoke", revoked.elapsed());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let events = kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "events",
            "--field-selector",
            "reason=DriftRepaired",
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        if events.contains("changed outside dbconn") {
            println!("event: {events}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no DriftRepaired event"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn check(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dbconn"))
        .arg("check")
        .args(args)
        .env("KUBECONFIG", &bed().kube.kubeconfig)
        .envs(env.iter().copied())
        .output()
        .expect("dbconn check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dbconn_check_prints_the_privileges_and_fails_when_one_is_missing() {
    operator();
    let pg = &bed().postgres;
    let ns = namespace("check");
    admin_and_ca(&ns);
    let db = database("check");
    admin_sql(&db, "CREATE TABLE public.\"Order Lines\" (n int)");
    let role = unique("checked");
    apply_yaml(&connection(
        &ns,
        "checked",
        &verify_full(pg.port),
        &format!("  database: {db}\n  role: {{name: {role:?}}}\n  access: readOnly\n"),
    ));
    wait_for("dbconn", &ns, "checked", READY, "True", 60);

    // A DatabaseConnection in the current kube context.
    let (code, out, err) = check(&["--connection", "checked", "-n", &ns], &[]);
    println!("{out}{err}");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!("role {role:?} logged in to localhost:")),
        "{out}"
    );
    let row = out
        .lines()
        .find_map(|l| l.strip_prefix("TABLE \"public\".\"Order Lines\" "))
        .expect("table row");
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["SELECT", "-"],
        "{out}"
    );
    assert!(out.contains("privileges held"), "{out}");

    // A URL and a role without the privileges the preset asks for.
    let url = format!(
        "postgres://{}@localhost:{}/{db}?sslmode=verify-full",
        testbed::postgres::TLS_ONLY_USER,
        pg.port
    );
    let ca = bed().ca_cert.display().to_string();
    let (code, out, err) = check(
        &["--url", &url, "--sslrootcert", &ca, "--access", "readOnly"],
        &[("PGPASSWORD", &pg.tls_only_password)],
    );
    println!("{out}{err}");
    assert_eq!(code, 1, "a missing privilege fails: {out}{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("TABLE \"public\".\"Order Lines\""))
        .expect("table row");
    assert!(row.ends_with("SELECT"), "SELECT is missing: {row}");

    // A login that fails says so and exits 2.
    let (code, _, err) = check(
        &["--url", &url, "--sslrootcert", &ca],
        &[("PGPASSWORD", "wrong")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("password authentication failed"), "{err}");
}
