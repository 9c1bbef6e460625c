//! The operator against the real bed, one capability at a time: every sslmode, each way of
//! naming the server, a certificate-only role in validate-only mode, names at PostgreSQL's
//! 63-byte limit, a hostile password through the real Secret, malformed Secrets, and a server
//! that never answers while other connections carry on.

mod support;

use support::{
    READY, admin_and_ca, apply_yaml, bed, condition, connection, database, get, kubectl_ok,
    namespace, operator_log, poke, psql_as_secret, psql_env, psql_uri, secret, secret_value,
    unique, wait_for, wait_reason,
};

use dbconn::operator::secret::mount_dir;
use dbconn::postgres::url::encode;

#[test]
fn every_sslmode_behaves_as_libpq_defines_it() {
    operator_log();
    let port = bed().postgres.port;
    let ns = namespace("sslmodes");
    admin_and_ca(&ns);
    let other = std::env::temp_dir().join(unique("other-ca"));
    std::fs::create_dir_all(&other).expect("dir");
    testbed::certs::Ca::create(&other, "someone-else").expect("CA");
    let other_ca = std::fs::read_to_string(other.join("ca.crt")).expect("CA");
    secret(&ns, "other-ca", &[("ca.crt", &other_ca)]);

    // (name, host, sslmode, CA Secret, the wire the server should see)
    let cases = [
        ("disable", "127.0.0.1", "disable", None, "plain TCP"),
        ("allow", "127.0.0.1", "allow", None, "plain TCP"),
        ("prefer", "127.0.0.1", "prefer", None, "TLS"),
        ("require", "127.0.0.1", "require", None, "TLS"),
        ("require-ca", "localhost", "require", Some("db-ca"), "TLS"),
        ("verify-ca", "127.0.0.1", "verify-ca", Some("db-ca"), "TLS"),
        (
            "verify-full",
            "localhost",
            "verify-full",
            Some("db-ca"),
            "TLS",
        ),
    ];
    for (name, host, mode, ca, _) in &cases {
        let ca = ca
            .map(|c| format!(", caSecretRef: {{name: {c}}}"))
            .unwrap_or_default();
        let server = format!(
            "    host: {host}\n    port: {port}\n    adminSecretRef: {{name: admin}}\n    tls: {{sslmode: {mode}{ca}}}"
        );
        let role = unique(&format!("app {name}"));
        apply_yaml(&connection(
            &ns,
            name,
            &server,
            &format!(
                "  database: postgres\n  role: {{name: {role:?}}}\n  access: none\n  grants: [{{privileges: [CONNECT]}}]\n"
            ),
        ));
    }
    // verify-ca with a CA that did not sign the server's certificate (verify-full with a name
    // the certificate lacks is in reconcile.rs).
    apply_yaml(&connection(
        &ns,
        "unknown-ca",
        &format!(
            "    host: 127.0.0.1\n    port: {port}\n    adminSecretRef: {{name: admin}}\n    tls: {{sslmode: verify-ca, caSecretRef: {{name: other-ca}}}}"
        ),
        "  database: postgres\n  role: {name: never_made}\n",
    ));

    for (name, _, mode, _, wire) in &cases {
        wait_for("dbconn", &ns, name, READY, "True", 90);
        let reached = get(
            &ns,
            "dbconn",
            name,
            &condition("ServerReachable", "message"),
        );
        assert!(
            reached.contains(&format!(" over {wire} ")),
            "{name}: {reached}"
        );
        assert_eq!(secret_value(&ns, name, "sslmode"), *mode, "{name}");
        println!("{name}: {reached}");
    }
    let untrusted = wait_reason(
        &ns,
        "unknown-ca",
        "ServerReachable",
        "CertificateUntrusted",
        60,
    );
    assert!(untrusted.contains("set tls.caSecretRef"), "{untrusted}");
    println!("unknown-ca: {untrusted}");
    // Nothing was created for a server that was not trusted.
    let roles = bed()
        .postgres
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'never_made'",
        )
        .expect("psql");
    assert_eq!(roles.trim(), "0");
}

#[test]
fn the_server_can_be_named_by_url_and_a_certificate_only_role_is_validated() {
    operator_log();
    let pg = &bed().postgres;
    let ns = namespace("forms");
    admin_and_ca(&ns);

    // An inline URL (no password in it) with admin credentials from a Secret.
    let role = unique("url role");
    apply_yaml(&connection(
        &ns,
        "by-url",
        &format!(
            "    url: postgres://localhost:{}/postgres\n    adminSecretRef: {{name: admin}}\n    tls: {{sslmode: verify-full, caSecretRef: {{name: db-ca}}}}",
            pg.port
        ),
        &format!(
            "  database: postgres\n  role: {{name: {role:?}}}\n  access: none\n  grants: [{{privileges: [CONNECT]}}]\n"
        ),
    ));

    // A role that logs in only with its client certificate, and no admin credentials:
    // validate-only mode checks what it has and grants nothing.
    let db = database("certdb");
    pg.psql(
        &db,
        "CREATE TABLE public.ledger (id int); INSERT INTO public.ledger VALUES (1)",
    )
    .expect("table");
    let cert = std::fs::read_to_string(&pg.cert_user_cert).expect("cert");
    let key = std::fs::read_to_string(&pg.cert_user_key).expect("key");
    secret(
        &ns,
        "certuser-tls",
        &[("tls.crt", &cert), ("tls.key", &key)],
    );
    apply_yaml(&connection(
        &ns,
        "cert-only",
        &format!(
            "    host: localhost\n    port: {}\n    tls:\n      sslmode: verify-full\n      caSecretRef: {{name: db-ca}}\n      clientCertSecretRef: {{name: certuser-tls, key: tls.crt}}\n      clientKeySecretRef: {{name: certuser-tls, key: tls.key}}",
            pg.port
        ),
        &format!(
            "  database: {db}\n  role: {{name: {}, create: false}}\n  access: readOnly\n",
            testbed::postgres::CERT_USER
        ),
    ));
    let missing = wait_reason(&ns, "cert-only", "Ready", "PrivilegesMissing", 90);
    assert!(missing.contains("ledger"), "{missing}");
    assert_eq!(
        get(
            &ns,
            "dbconn",
            "cert-only",
            &condition("GrantsApplied", "reason")
        ),
        "ValidateOnly"
    );
    assert_eq!(
        get(&ns, "dbconn", "cert-only", "{.status.privileges.missing}"),
        "1"
    );
    println!("validate-only, before the grant: {missing}");
    // Nothing was granted by dbconn; once an administrator grants it, the connection is Ready.
    let acl = pg
        .psql(
            &db,
            "SELECT coalesce(relacl::text, '') FROM pg_class WHERE relname = 'ledger'",
        )
        .expect("acl");
    assert!(!acl.contains("certuser"), "validate-only granted: {acl}");
    pg.psql(&db, "GRANT SELECT ON public.ledger TO certuser")
        .expect("grant");
    poke(&ns, "cert-only");
    wait_for("dbconn", &ns, "cert-only", READY, "True", 60);

    // The Secret carries the certificate, and its settings log in with it alone.
    assert_eq!(secret_value(&ns, "cert-only", "tls.crt"), cert);
    assert!(secret_value(&ns, "cert-only", "uri").contains("&sslcert="));
    let env = vec![
        ("PGHOST", secret_value(&ns, "cert-only", "PGHOST")),
        ("PGPORT", secret_value(&ns, "cert-only", "PGPORT")),
        ("PGDATABASE", secret_value(&ns, "cert-only", "PGDATABASE")),
        ("PGUSER", secret_value(&ns, "cert-only", "PGUSER")),
        ("PGSSLMODE", secret_value(&ns, "cert-only", "PGSSLMODE")),
        ("PGSSLROOTCERT", bed().ca_cert.display().to_string()),
        ("PGSSLCERT", pg.cert_user_cert.display().to_string()),
        ("PGSSLKEY", pg.cert_user_key.display().to_string()),
    ];
    assert_eq!(
        psql_env("SELECT id FROM public.ledger", &env).as_deref(),
        Ok("1")
    );

    // The URL form reached the server with TLS and is Ready too.
    wait_for("dbconn", &ns, "by-url", READY, "True", 60);

    // Validate-only with a password, and sslmode allow against a user pg_hba admits only
    // over TLS: the plain attempt is refused, and the TLS retry logs in, as libpq does.
    secret(
        &ns,
        "tlsonly-password",
        &[("password", &pg.tls_only_password)],
    );
    apply_yaml(&connection(
        &ns,
        "allow-falls-back",
        &format!(
            "    host: 127.0.0.1\n    port: {}\n    tls: {{sslmode: allow}}",
            pg.port
        ),
        &format!(
            "  database: postgres\n  role: {{name: {}, create: false, passwordSecretRef: {{name: tlsonly-password}}}}\n  access: none\n  grants: [{{privileges: [CONNECT]}}]\n",
            testbed::postgres::TLS_ONLY_USER
        ),
    ));
    wait_for("dbconn", &ns, "allow-falls-back", READY, "True", 60);
    let reached = get(
        &ns,
        "dbconn",
        "allow-falls-back",
        &condition("ServerReachable", "message"),
    );
    assert!(reached.contains(" over TLS "), "{reached}");
}

/// `s` padded with `x` to exactly 63 bytes.
fn at_the_limit(s: &str) -> String {
    let mut name = s.to_owned();
    while name.len() < 63 {
        name.push('x');
    }
    assert_eq!(name.len(), 63);
    name
}

#[test]
fn names_at_the_limit_and_a_hostile_password_round_trip_through_the_secret() {
    let op_log = operator_log();
    let pg = &bed().postgres;
    let ns = namespace("limits");
    admin_and_ca(&ns);
    let db = database("limits");
    let tag = unique("");
    let schema = at_the_limit(&format!("Sché\"ma\" select {tag} "));
    let role = at_the_limit(&format!("Rôle \"user\" {tag} "));
    let quoted = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    pg.psql(
        &db,
        &format!(
            "CREATE SCHEMA {s}; CREATE TABLE {s}.\"Order Lines\" (n int); INSERT INTO {s}.\"Order Lines\" VALUES (42)",
            s = quoted(&schema)
        ),
    )
    .expect("schema");
    let password = "p@ss:/?#%'\"\\ w0rd with spaces";
    secret(&ns, "app-password", &[("password", password)]);
    apply_yaml(&connection(
        &ns,
        "limits",
        &format!(
            "    host: localhost\n    port: {}\n    adminSecretRef: {{name: admin}}\n    tls: {{sslmode: verify-full, caSecretRef: {{name: db-ca}}}}",
            pg.port
        ),
        &format!(
            "  database: {db}\n  role: {{name: {role:?}, passwordSecretRef: {{name: app-password}}}}\n  access: readOnly\n  schemas: [{schema:?}]\n"
        ),
    ));
    wait_for("dbconn", &ns, "limits", READY, "True", 90);
    let exists = pg
        .psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_roles WHERE rolname = {}",
                dbconn::postgres::quote::literal(&role)
            ),
        )
        .expect("psql");
    assert_eq!(exists.trim(), "1", "the 63-byte role exists, not truncated");
    let select = format!("SELECT n FROM {}.\"Order Lines\"", quoted(&schema));
    let ca_path = encode(&bed().ca_cert.display().to_string());
    // The Secret names the CA where pods mount it; here the bed's file stands in.
    let mounted = encode(&format!("{}/ca.crt", mount_dir("limits")));
    let local = |uri: String| uri.replace(&mounted, &ca_path);

    // uri: psql decodes the percent-encoding and logs in.
    let uri = local(secret_value(&ns, "limits", "uri"));
    assert!(!uri.contains(password), "the password is percent-encoded");
    let out = psql_uri(&uri, &select);
    assert_eq!(out.as_deref(), Ok("42"), "uri logs in");

    // jdbc-uri: its user and password parameters, moved into a libpq URL, log in.
    let jdbc = local(secret_value(&ns, "limits", "jdbc-uri"));
    let (base, query) = jdbc
        .strip_prefix("jdbc:postgresql://")
        .and_then(|r| r.split_once('?'))
        .expect("jdbc form");
    let param = |k: &str| {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(&format!("{k}=")))
            .expect("param")
            .to_owned()
    };
    let (user, pass) = (param("user"), param("password"));
    let rebuilt = format!(
        "postgresql://{user}:{pass}@{base}?sslmode={}&sslrootcert={ca_path}",
        param("sslmode")
    );
    assert_eq!(
        psql_uri(&rebuilt, &select).as_deref(),
        Ok("42"),
        "jdbc-uri's credentials log in"
    );

    // pgpass: libpq finds the password by host, port, database and user.
    let pgpass = std::env::temp_dir().join(unique("pgpass"));
    std::fs::write(&pgpass, secret_value(&ns, "limits", "pgpass")).expect("pgpass");
    std::process::Command::new("chmod")
        .arg("0600")
        .arg(&pgpass)
        .status()
        .expect("chmod");
    let env = vec![
        ("PGHOST", secret_value(&ns, "limits", "host")),
        ("PGPORT", secret_value(&ns, "limits", "port")),
        ("PGDATABASE", secret_value(&ns, "limits", "dbname")),
        ("PGUSER", secret_value(&ns, "limits", "username")),
        ("PGSSLMODE", "verify-full".to_owned()),
        ("PGSSLROOTCERT", bed().ca_cert.display().to_string()),
        ("PGPASSFILE", pgpass.display().to_string()),
    ];
    assert_eq!(
        psql_env(&select, &env).as_deref(),
        Ok("42"),
        "pgpass logs in"
    );
    let _ = std::fs::remove_file(&pgpass);

    assert_eq!(secret_value(&ns, "limits", "password"), password);
    assert!(!pg.log().expect("log").contains(password));
    let operator = std::fs::read_to_string(op_log).unwrap_or_default();
    assert!(!operator.contains(password));
    assert!(!operator.contains(&encode(password)));
}

#[test]
fn malformed_secrets_are_named_in_the_condition() {
    operator_log();
    let pg = &bed().postgres;
    let ns = namespace("malformed");
    admin_and_ca(&ns);
    let tls = "    tls: {sslmode: verify-full, caSecretRef: {name: db-ca}}";
    let rest = "  database: postgres\n  role: {name: nobody_made}\n";

    secret(
        &ns,
        "no-url-key",
        &[("URL", "postgres://localhost/postgres")],
    );
    apply_yaml(&connection(
        &ns,
        "key-missing",
        &format!(
            "    urlSecretRef: {{name: no-url-key}}\n    adminSecretRef: {{name: admin}}\n{tls}"
        ),
        rest,
    ));
    secret(&ns, "mysql-url", &[("url", "mysql://localhost/postgres")]);
    apply_yaml(&connection(
        &ns,
        "bad-url",
        &format!(
            "    urlSecretRef: {{name: mysql-url}}\n    adminSecretRef: {{name: admin}}\n{tls}"
        ),
        &format!(
            "  database: postgres\n  role: {{name: {}}}\n  access: none\n  grants: [{{privileges: [CONNECT]}}]\n",
            unique("fixed_url_role")
        ),
    ));
    secret(
        &ns,
        "garbage-ca",
        &[("ca.crt", "this is not a certificate")],
    );
    apply_yaml(&connection(
        &ns,
        "bad-ca",
        &format!(
            "    host: localhost\n    port: {}\n    adminSecretRef: {{name: admin}}\n    tls: {{sslmode: verify-full, caSecretRef: {{name: garbage-ca}}}}",
            pg.port
        ),
        rest,
    ));
    secret(&ns, "half-admin", &[("username", "postgres")]);
    apply_yaml(&connection(
        &ns,
        "admin-key-missing",
        &format!(
            "    host: localhost\n    port: {}\n    adminSecretRef: {{name: half-admin}}\n{tls}",
            pg.port
        ),
        rest,
    ));
    secret(
        &ns,
        "wrong-admin",
        &[("username", "postgres"), ("password", "not it")],
    );
    apply_yaml(&connection(
        &ns,
        "wrong-password",
        &format!(
            "    host: localhost\n    port: {}\n    adminSecretRef: {{name: wrong-admin}}\n{tls}",
            pg.port
        ),
        rest,
    ));

    let msg = wait_reason(
        &ns,
        "key-missing",
        "ServerReachable",
        "SecretKeyMissing",
        60,
    );
    assert_eq!(msg, format!("secret {ns}/no-url-key has no key url"));
    let msg = wait_reason(&ns, "bad-url", "ServerReachable", "InvalidURL", 60);
    assert!(msg.contains("postgres://"), "{msg}");
    let msg = wait_reason(&ns, "bad-ca", "ServerReachable", "TLSConfigInvalid", 60);
    assert!(msg.contains("garbage-ca") || msg.contains("CA"), "{msg}");
    let msg = wait_reason(
        &ns,
        "admin-key-missing",
        "ServerReachable",
        "SecretKeyMissing",
        60,
    );
    assert_eq!(msg, format!("secret {ns}/half-admin has no key password"));
    let msg = wait_reason(
        &ns,
        "wrong-password",
        "ServerReachable",
        "AuthenticationFailed",
        60,
    );
    assert!(
        msg.contains("password authentication failed for user \"postgres\""),
        "{msg}"
    );
    for name in [
        "key-missing",
        "bad-url",
        "bad-ca",
        "admin-key-missing",
        "wrong-password",
    ] {
        assert_eq!(
            get(&ns, "dbconn", name, &condition("Ready", "status")),
            "False"
        );
        println!(
            "{name}: {}",
            get(
                &ns,
                "dbconn",
                name,
                &condition("ServerReachable", "message")
            )
        );
    }
    // Fixing the Secret is enough: the failing connection is retried (with backoff) and
    // becomes Ready; the operator does not watch Secrets in application namespaces.
    secret(
        &ns,
        "mysql-url",
        &[("url", &format!("postgres://localhost:{}/postgres", pg.port))],
    );
    wait_for("dbconn", &ns, "bad-url", READY, "True", 60);
}

#[test]
fn a_server_that_never_answers_does_not_hold_up_other_connections() {
    operator_log();
    let pg = &bed().postgres;
    let ns = namespace("blackhole");
    admin_and_ca(&ns);
    // Accepts TCP connections (the kernel completes the handshake) and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    for i in 0..3 {
        apply_yaml(&connection(
            &ns,
            &format!("silent-{i}"),
            &format!(
                "    host: 127.0.0.1\n    port: {silent_port}\n    adminSecretRef: {{name: admin}}\n    tls: {{sslmode: disable}}"
            ),
            "  database: postgres\n  role: {name: never_made}\n",
        ));
    }
    let role = unique("alive");
    apply_yaml(&connection(
        &ns,
        "alive",
        &format!(
            "    host: localhost\n    port: {}\n    adminSecretRef: {{name: admin}}\n    tls: {{sslmode: verify-full, caSecretRef: {{name: db-ca}}}}",
            pg.port
        ),
        &format!(
            "  database: postgres\n  role: {{name: {role:?}}}\n  access: none\n  grants: [{{privileges: [CONNECT]}}]\n"
        ),
    ));
    wait_for("dbconn", &ns, "alive", READY, "True", 60);
    for i in 0..3 {
        let msg = wait_reason(
            &ns,
            &format!("silent-{i}"),
            "ServerReachable",
            "ConnectTimeout",
            60,
        );
        assert!(msg.contains(&silent_port.to_string()), "{msg}");
        println!("silent-{i}: {msg}");
    }
    drop(silent);
}

#[test]
fn a_database_server_is_checked_and_serves_only_the_namespaces_it_allows() {
    operator_log();
    let pg = &bed().postgres;
    // The server's Secrets live in the operator's namespace and are never copied elsewhere.
    let admin = unique("server-admin");
    secret(
        "dbconn-system",
        &admin,
        &[
            ("username", "postgres"),
            ("password", &pg.superuser_password),
        ],
    );
    let ca = unique("server-ca");
    let ca_pem = std::fs::read_to_string(&bed().ca_cert).expect("CA");
    secret("dbconn-system", &ca, &[("ca.crt", &ca_pem)]);
    let server = unique("shared");
    let team = unique("team");
    apply_yaml(&format!(
        "apiVersion: dbconn.io/v1alpha1\nkind: DatabaseServer\nmetadata: {{name: {server}}}\nspec:\n  host: localhost\n  port: {}\n  \
         tls: {{sslmode: verify-full, caSecretRef: {{name: {ca}}}}}\n  adminSecretRef: {{name: {admin}}}\n  \
         allowedNamespaces: {{matchLabels: {{team: {team}}}}}\n  \
         tenants: [{{databases: [postgres], roleNames: [\"tenant app*\"]}}]\n",
        pg.port
    ));
    wait_for("dbserver", "", &server, READY, "True", 60);
    let version = get("", "dbserver", &server, "{.status.serverVersion}");
    assert!(version.starts_with("15"), "{version}");

    let ns = namespace("tenant");
    kubectl_ok(&["label", "namespace", &ns, &format!("team={team}")]);
    let role = unique("tenant app");
    apply_yaml(&format!(
        "apiVersion: dbconn.io/v1alpha1\nkind: DatabaseConnection\nmetadata: {{name: app, namespace: {ns}}}\nspec:\n  \
         serverRef: {server}\n  database: postgres\n  role: {{name: {role:?}}}\n  access: none\n  grants: [{{privileges: [CONNECT]}}]\n"
    ));
    wait_for("dbconn", &ns, "app", READY, "True", 60);
    assert_eq!(
        get(&ns, "dbconn", "app", "{.status.server}"),
        format!("localhost:{}", pg.port)
    );
    // The CA is public and travels with the Secret; the admin credentials do not.
    assert_eq!(secret_value(&ns, "app", "ca.crt"), ca_pem);
    let secrets = kubectl_ok(&["-n", &ns, "get", "secrets", "-o", "yaml"]);
    assert!(!secrets.contains(&admin));
    assert_eq!(
        psql_as_secret(&ns, "app", "SELECT current_user").as_deref(),
        Ok(role.as_str())
    );

    // A wrong admin password shows on the DatabaseServer itself.
    secret(
        "dbconn-system",
        &admin,
        &[("username", "postgres"), ("password", "wrong")],
    );
    wait_for(
        "dbserver",
        "",
        &server,
        &condition("Ready", "reason"),
        "AuthenticationFailed",
        60,
    );
}
