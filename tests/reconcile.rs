//! The operator against the real bed: a DatabaseConnection becomes Ready, its Secret logs in,
//! privileges converge exactly (and idempotently), and mistakes become readable conditions.

mod support;

use support::{
    READY, apply_yaml, bed, get, kubectl_ok, namespace, operator_log, psql_as_secret, secret_value,
    unique, wait_for, wait_reason,
};

/// Admin URL and CA Secrets for an inline connection in `ns`.
fn admin_secrets(ns: &str, port: u16) {
    let pg = &bed().postgres;
    let url = format!(
        "postgres://postgres:{}@localhost:{port}/postgres",
        pg.superuser_password
    );
    kubectl_ok(&[
        "-n",
        ns,
        "create",
        "secret",
        "generic",
        "admin-url",
        &format!("--from-literal=url={url}"),
    ]);
    let ca = format!("--from-file=ca.crt={}", bed().ca_cert.display());
    kubectl_ok(&["-n", ns, "create", "secret", "generic", "db-ca", &ca]);
}

fn connection(ns: &str, name: &str, db: &str, role: &str, access: &str, extra: &str) -> String {
    format!(
        "apiVersion: dbconn.io/v1alpha1\nkind: DatabaseConnection\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  \
         server:\n    urlSecretRef: {{name: admin-url}}\n    tls: {{sslmode: verify-full, caSecretRef: {{name: db-ca}}}}\n  \
         database: {db}\n  role: {{name: {role:?}}}\n  access: {access}\n{extra}"
    )
}

/// Merge-patches a DatabaseConnection's spec and waits until the operator has observed the
/// new generation.
fn patch_and_observe(ns: &str, name: &str, patch: &str) {
    kubectl_ok(&[
        "-n",
        ns,
        "patch",
        "dbconn",
        name,
        "--type=merge",
        "-p",
        patch,
    ]);
    let generation = get(ns, "dbconn", name, "{.metadata.generation}");
    wait_for(
        "dbconn",
        ns,
        name,
        "{.status.observedGeneration}",
        &generation,
        60,
    );
}

fn ddl_count(log: &str, role: &str) -> usize {
    let quoted = format!("\"{}\"", role.replace('"', "\"\""));
    log.lines()
        .filter(|l| l.contains("statement:") && l.contains(&quoted))
        .filter(|l| {
            [
                "GRANT",
                "REVOKE",
                "CREATE ROLE",
                "ALTER ROLE",
                "ALTER DEFAULT",
            ]
            .iter()
            .any(|k| l.contains(k))
        })
        .count()
}

#[test]
fn a_connection_becomes_ready_and_its_secret_logs_in_with_exactly_the_privileges_asked_for() {
    let op_log = operator_log();
    let pg = &bed().postgres;
    let ns = namespace("ready");
    let db = unique("app").replace('-', "_");
    pg.psql("postgres", &format!("CREATE DATABASE {db}"))
        .expect("database");
    pg.psql(&db, "CREATE TABLE public.orders (id serial primary key, note text); INSERT INTO public.orders (note) VALUES ('first')").expect("table");
    admin_secrets(&ns, pg.port);
    // A hostile role name: quotes, spaces, capitals, unicode and a reserved word.
    let role = format!("Shop \"Orders\" ü select {}", &db[4..]);
    apply_yaml(&connection(
        &ns,
        "orders",
        &db,
        &role,
        "readWrite",
        "  secret:\n    name: orders-db\n    template: {DATABASE_URL: \"{{ uri }}\"}\n",
    ));
    wait_for("dbconn", &ns, "orders", READY, "True", 90);
    let status = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "dbconn",
        "orders",
        "-o",
        "jsonpath={.status}",
    ]);
    println!("Ready; status: {status}");

    // The Secret's credentials log in and can do what readWrite promises, and no more.
    assert_eq!(
        psql_as_secret(&ns, "orders-db", "SELECT note FROM public.orders").as_deref(),
        Ok("first")
    );
    psql_as_secret(
        &ns,
        "orders-db",
        "INSERT INTO public.orders (note) VALUES ('second')",
    )
    .expect("readWrite inserts");
    let denied = psql_as_secret(&ns, "orders-db", "CREATE TABLE public.mine (x int)")
        .expect_err("readWrite cannot create");
    assert!(denied.contains("permission denied"), "{denied}");
    assert_eq!(
        secret_value(&ns, "orders-db", "DATABASE_URL"),
        secret_value(&ns, "orders-db", "uri")
    );

    // Default privileges: a table the admin creates later is usable at once.
    pg.psql(
        &db,
        "CREATE TABLE public.later (x int); INSERT INTO public.later VALUES (7)",
    )
    .expect("later table");
    assert_eq!(
        psql_as_secret(&ns, "orders-db", "SELECT x FROM public.later").as_deref(),
        Ok("7")
    );

    // A change that does not touch privileges sends no DDL.
    let before = ddl_count(&pg.log().expect("log"), &role);
    assert!(before > 0, "the first reconcile granted");
    patch_and_observe(
        &ns,
        "orders",
        r#"{"spec":{"secret":{"template":{"DSN":"host={{ host }}"}}}}"#,
    );
    assert_eq!(
        ddl_count(&pg.log().expect("log"), &role),
        before,
        "no DDL on a reconcile with nothing to change"
    );

    // Privileges removed from the spec are revoked.
    patch_and_observe(&ns, "orders", r#"{"spec":{"access":"readOnly"}}"#);
    wait_for("dbconn", &ns, "orders", READY, "True", 60);
    let insert = psql_as_secret(
        &ns,
        "orders-db",
        "INSERT INTO public.orders (note) VALUES ('third')",
    )
    .expect_err("readOnly");
    assert!(insert.contains("permission denied"), "{insert}");
    assert_eq!(
        psql_as_secret(&ns, "orders-db", "SELECT count(*) FROM public.orders").as_deref(),
        Ok("2")
    );

    // The password never travels as SQL text, nor shows in logs, Events or status.
    let password = secret_value(&ns, "orders-db", "password");
    assert_eq!(password.len(), 32);
    assert!(
        !pg.log().expect("log").contains(&password),
        "password in the PostgreSQL log"
    );
    assert!(
        !std::fs::read_to_string(op_log)
            .unwrap_or_default()
            .contains(&password),
        "password in the operator log"
    );
    let events = kubectl_ok(&["-n", &ns, "get", "events", "-o", "yaml"]);
    assert!(
        events.contains("Ready"),
        "a Ready event was published:\n{events}"
    );
    assert!(
        !events.contains(&password) && !status.contains(&password),
        "password in events or status"
    );
    println!("converged, idempotent, revoked, default privileges work; the password stays secret");
}

#[test]
fn mistakes_become_conditions_that_say_what_to_fix() {
    operator_log();
    let pg = &bed().postgres;
    let ns = namespace("mistakes");
    admin_secrets(&ns, pg.port);

    // A Secret that does not exist.
    apply_yaml(
        &connection(&ns, "no-secret", "postgres", "app_x", "readOnly", "")
            .replace("name: admin-url", "name: nope"),
    );
    let msg = wait_reason(&ns, "no-secret", "ServerReachable", "SecretNotFound", 60);
    assert_eq!(msg, format!("secret {ns}/nope not found"));

    // A server nobody listens on: the condition says so within the connect time-out.
    let port = testbed::free_port().expect("port");
    let url = format!("postgres://postgres:x@127.0.0.1:{port}/postgres");
    kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "secret",
        "generic",
        "dead-url",
        &format!("--from-literal=url={url}"),
    ]);
    apply_yaml(
        &connection(&ns, "dead", "postgres", "app_y", "readOnly", "")
            .replace("name: admin-url", "name: dead-url"),
    );
    wait_reason(&ns, "dead", "ServerReachable", "Unreachable", 60);

    // verify-full against a name the certificate does not carry.
    apply_yaml(
        &connection(&ns, "wrong-name", "postgres", "app_z", "readOnly", "").replace(
            "sslmode: verify-full,",
            "sslmode: verify-full, serverName: db.example.com,",
        ),
    );
    wait_reason(
        &ns,
        "wrong-name",
        "ServerReachable",
        "CertificateNameMismatch",
        60,
    );

    // A DatabaseServer that does not admit this namespace.
    let server = unique("closed");
    apply_yaml(&format!(
        "apiVersion: dbconn.io/v1alpha1\nkind: DatabaseServer\nmetadata: {{name: {server}}}\nspec:\n  host: localhost\n  port: {}\n  allowedNamespaces: {{matchLabels: {{team: other}}}}\n",
        pg.port
    ));
    apply_yaml(&format!(
        "apiVersion: dbconn.io/v1alpha1\nkind: DatabaseConnection\nmetadata: {{name: denied, namespace: {ns}}}\nspec:\n  serverRef: {server}\n  database: postgres\n  role: {{name: app_d}}\n"
    ));
    wait_reason(&ns, "denied", "Authorized", "ServerNotAllowed", 60);
    wait_for("dbconn", &ns, "denied", READY, "False", 10);
    println!(
        "missing Secret, unreachable server, wrong certificate name and denied server all reported"
    );
}
