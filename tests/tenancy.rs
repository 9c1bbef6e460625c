//! Tenancy, attacked by tenants: two namespaces allowed on one shared DatabaseServer (and a
//! third that is not), each acting through a ServiceAccount token with only a namespaced Role,
//! so the apiserver enforces what a tenant may do. The operator runs with the chart's RBAC
//! alone, and the server's admin is a CREATEROLE role, not a superuser. Each attack is
//! numbered as in docs/security.md; each must be refused with a condition and an Event naming
//! the rule, and afterwards the victim's Secret still logs in, its privileges are unchanged
//! and the operator's memory stayed under the chart's limit.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use dbconn::postgres::quote::{ident, literal};
use support::{
    Operator, READY, Tenant, bed, get, kubectl_ok, memory_kib, operator_with_chart_rbac, psql_uri,
    secret, secret_value, unique, wait_for,
};

/// The chart's memory limit for the operator.
const CHART_LIMIT_KIB: u64 = 256 * 1024;

/// The shared server and the tenants on it.
struct World {
    op: Operator,
    /// The operator's ServiceAccount, as a user name.
    operator_user: String,
    server: String,
    admin: String,
    a: Tenant,
    b: Tenant,
    outsider: Tenant,
}

fn q(name: &str) -> String {
    ident(name).expect("identifier").to_string()
}

/// SQL as the bed's superuser (the platform team, or a DBA).
fn dba(db: &str, sql: &str) -> String {
    bed().postgres.psql(db, sql).expect("psql as the superuser")
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let (op, system, operator_user) = operator_with_chart_rbac("tenancy");
        let pg = &bed().postgres;
        // A CREATEROLE admin, as on a managed server: it owns the tenants' databases.
        let admin = unique("dbconn_admin").replace('-', "_");
        let admin_password = unique("pw");
        dba(
            "postgres",
            &format!(
                "CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}",
                q(&admin),
                literal(&admin_password)
            ),
        );
        secret(
            &system,
            "shared-admin",
            &[("username", &admin), ("password", &admin_password)],
        );
        let ca = std::fs::read_to_string(&bed().ca_cert).expect("CA");
        secret(&system, "shared-ca", &[("ca.crt", &ca)]);
        let group = unique("tenancy");
        let a = Tenant::new("team-a", &[("tenancy", &group), ("team", "a")]);
        let b = Tenant::new("team-b", &[("tenancy", &group), ("team", "b")]);
        let outsider = Tenant::new("team-c", &[("team", "c")]);
        for t in [&a, &b] {
            dba("postgres", &format!("CREATE DATABASE {} OWNER {}", q(&t.ns), q(&admin)));
            dba(
                &t.ns,
                &format!(
                    "SET ROLE {}; CREATE TABLE public.items (n int); INSERT INTO public.items VALUES (1)",
                    q(&admin)
                ),
            );
        }
        let server = unique("shared");
        // No tenants rule: the default gives each namespace its own database and role prefix;
        // one extra rule lets team b adopt existing roles (its own names only).
        support::apply_yaml(&format!(
            "apiVersion: dbconn.io/v1alpha1\nkind: DatabaseServer\nmetadata: {{name: {server}}}\nspec:\n  \
             host: localhost\n  port: {}\n  tls: {{sslmode: verify-full, caSecretRef: {{name: shared-ca}}}}\n  \
             adminSecretRef: {{name: shared-admin}}\n  allowedNamespaces: {{matchLabels: {{tenancy: {group}}}}}\n  \
             tenants:\n  - namespaceSelector: {{matchLabels: {{team: a}}}}\n  \
             - namespaceSelector: {{matchLabels: {{team: b}}}}\n    adoptExistingRoles: true\n",
            pg.port
        ));
        wait_for("dbserver", "", &server, READY, "True", 90);
        World {
            op,
            operator_user,
            server,
            admin,
            a,
            b,
            outsider,
        }
    })
}

fn connection(t: &Tenant, name: &str, server: &str, rest: &str) -> String {
    format!(
        "apiVersion: dbconn.io/v1alpha1\nkind: DatabaseConnection\nmetadata: {{name: {name}, namespace: {}}}\n\
         spec:\n  serverRef: {server}\n{rest}",
        t.ns
    )
}

/// The victim: team b's Ready connection, its role and what it can do.
struct Victim {
    role: String,
    secret: String,
}

fn victim() -> &'static Victim {
    static VICTIM: OnceLock<Victim> = OnceLock::new();
    VICTIM.get_or_init(|| {
        let w = world();
        let role = format!("{}_Orders \"Ünï\"", w.b.ns);
        w.b.apply_ok(&connection(
            &w.b,
            "orders",
            &w.server,
            &format!(
                "  database: {}\n  role: {{name: {}}}\n  access: readWrite\n",
                w.b.ns,
                json(&role)
            ),
        ));
        wait_for("dbconn", &w.b.ns, "orders", READY, "True", 120);
        Victim {
            role,
            secret: "orders".into(),
        }
    })
}

fn json(s: &str) -> String {
    serde_json::to_string(s).expect("json")
}

/// What the victim's role is and holds, as the catalog says: attributes, comment and ACLs.
fn catalog_of(db: &str, role: &str) -> String {
    let lit = literal(role);
    dba(
        db,
        &format!(
            "SELECT r.rolcanlogin, r.rolconnlimit, r.rolpassword, \
             coalesce(shobj_description(r.oid, 'pg_authid'), ''), \
             (SELECT string_agg(x, ',' ORDER BY x) FROM ( \
               SELECT c.relname || ':' || a.privilege_type AS x FROM pg_class c, aclexplode(c.relacl) a \
               WHERE a.grantee = r.oid UNION ALL \
               SELECT n.nspname || ':' || a.privilege_type FROM pg_namespace n, aclexplode(n.nspacl) a \
               WHERE a.grantee = r.oid) s) \
             FROM pg_authid r WHERE r.rolname = {lit}"
        ),
    )
}

/// The victim's Secret logs in, as the victim.
fn victim_logs_in() {
    let w = world();
    let v = victim();
    let uri = secret_value(&w.b.ns, &v.secret, "uri");
    let uri = format!("{uri}&sslrootcert={}", bed().ca_cert.display());
    assert_eq!(
        psql_uri(&uri, "SELECT current_user").as_deref(),
        Ok(v.role.as_str()),
        "the victim's Secret logs in"
    );
}

/// Waits for a condition reason, then checks the Event that names it.
fn refused(t: &Tenant, name: &str, kind: &str, reason: &str, names: &str) -> String {
    let message = support::wait_reason(&t.ns, name, kind, reason, 90);
    assert!(message.contains(names), "{reason}: {message}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = kubectl_ok(&[
            "-n",
            &t.ns,
            "get",
            "events.events.k8s.io",
            "-o",
            "jsonpath={range .items[*]}{.reason}: {.note}{\"\\n\"}{end}",
        ]);
        if events
            .lines()
            .any(|l| l.starts_with(&format!("{reason}:")) && l.contains(names))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} Event naming {names:?}:\n{events}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    message
}

fn operator_memory_under_the_limit(op: &Operator) {
    let (peak, now) = memory_kib(op.pid());
    println!("operator memory: peak {peak} KiB, now {now} KiB");
    assert!(peak > 0, "read the operator's memory");
    assert!(
        peak < CHART_LIMIT_KIB,
        "the operator peaked at {peak} KiB, past the chart's limit"
    );
}

#[test]
fn attack_1_a_foreign_database_or_an_unlisted_namespace_is_refused() {
    let w = world();
    let v = victim();
    let before = catalog_of(&w.b.ns, &v.role);
    // Team a asks for team b's database, with a role name of its own.
    w.a.apply_ok(&connection(
        &w.a,
        "foreign-db",
        &w.server,
        &format!(
            "  database: {}\n  role: {{name: {}_reader}}\n  access: readOnly\n",
            w.b.ns, w.a.ns
        ),
    ));
    let message = refused(
        &w.a,
        "foreign-db",
        "Authorized",
        "DatabaseNotAllowed",
        "spec.tenants[0]",
    );
    assert!(message.contains(&w.b.ns), "{message}");
    assert_eq!(get(&w.a.ns, "dbconn", "foreign-db", READY), "False");
    assert!(
        kubectl_ok(&["-n", &w.a.ns, "get", "secrets", "-o", "name"]).is_empty()
            || !kubectl_ok(&["-n", &w.a.ns, "get", "secrets", "-o", "name"]).contains("foreign-db"),
        "no Secret for a refused connection"
    );
    // A namespace the server does not allow at all.
    w.outsider.apply_ok(&connection(
        &w.outsider,
        "outsider",
        &w.server,
        &format!(
            "  database: {}\n  role: {{name: {}_x}}\n",
            w.outsider.ns, w.outsider.ns
        ),
    ));
    refused(
        &w.outsider,
        "outsider",
        "Authorized",
        "ServerNotAllowed",
        "allowedNamespaces",
    );
    // Nor may a tenant register a server of its own.
    let (ok, out) = w.a.apply(&format!(
        "apiVersion: dbconn.io/v1alpha1\nkind: DatabaseServer\nmetadata: {{name: {}}}\nspec: {{host: evil}}\n",
        unique("evil")
    ));
    assert!(!ok && out.contains("forbidden"), "{out}");
    assert_eq!(catalog_of(&w.b.ns, &v.role), before);
    victim_logs_in();
}

#[test]
fn attack_2_another_namespaces_role_cannot_be_taken() {
    let w = world();
    let v = victim();
    let before = catalog_of(&w.b.ns, &v.role);
    // A Ready connection in team a ...
    w.a.apply_ok(&connection(
        &w.a,
        "mine",
        &w.server,
        &format!(
            "  database: {}\n  role: {{name: {}_mine}}\n  access: readOnly\n",
            w.a.ns, w.a.ns
        ),
    ));
    wait_for("dbconn", &w.a.ns, "mine", READY, "True", 120);
    // ... cannot be turned to team b's role or database: identity is immutable.
    for (patch, rule) in [
        (
            format!("{{\"spec\":{{\"role\":{{\"name\":{}}}}}}}", json(&v.role)),
            "role.name is immutable",
        ),
        (
            format!("{{\"spec\":{{\"database\":{}}}}}", json(&w.b.ns)),
            "database is immutable",
        ),
    ] {
        let out =
            w.a.kubectl(&["patch", "dbconn", "mine", "--type=merge", "-p", &patch]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(rule), "{stderr}");
    }
    // A new connection naming team b's role: its name is not team a's to use ...
    w.a.apply_ok(&connection(
        &w.a,
        "takeover",
        &w.server,
        &format!(
            "  database: {}\n  role: {{name: {}}}\n  access: readWrite\n",
            w.a.ns,
            json(&v.role)
        ),
    ));
    refused(
        &w.a,
        "takeover",
        "Authorized",
        "RoleNameNotAllowed",
        "spec.tenants[0]",
    );
    // ... and even in its own namespace, with the victim's leaked password and adoption
    // allowed, a second connection cannot manage a role another connection owns.
    w.b.secret(
        "leaked",
        &[("password", &secret_value(&w.b.ns, &v.secret, "password"))],
    );
    w.b.apply_ok(&connection(
        &w.b,
        "second",
        &w.server,
        &format!(
            "  database: {}\n  role: {{name: {}, passwordSecretRef: {{name: leaked}}, connectionLimit: 0}}\n  access: owner\n",
            w.b.ns,
            json(&v.role)
        ),
    ));
    refused(&w.b, "second", "Authorized", "RoleClaimed", "orders");
    assert_eq!(catalog_of(&w.b.ns, &v.role), before);
    victim_logs_in();
}

#[test]
fn attack_3_an_existing_role_is_not_touched_before_its_password_is_proven() {
    let w = world();
    let a_role = format!("{}_legacy", w.a.ns);
    let b_role = format!("{}_legacy", w.b.ns);
    for r in [&a_role, &b_role] {
        dba(
            "postgres",
            &format!(
                "CREATE ROLE {} LOGIN CONNECTION LIMIT 7 PASSWORD 'the real one'; COMMENT ON ROLE {} IS 'made by the DBA'",
                q(r),
                q(r)
            ),
        );
    }
    let before_a = catalog_of(&w.a.ns, &a_role);
    let before_b = catalog_of(&w.b.ns, &b_role);
    // Team a may not adopt at all: refused before any login.
    w.a.secret("guess", &[("password", "a wrong guess")]);
    w.a.apply_ok(&connection(
        &w.a,
        "lockout",
        &w.server,
        &format!(
            "  database: {}\n  role: {{name: {a_role}, passwordSecretRef: {{name: guess}}, connectionLimit: 0}}\n  deletionPolicy: Delete\n",
            w.a.ns
        ),
    ));
    refused(
        &w.a,
        "lockout",
        "Authorized",
        "AdoptionNotAllowed",
        "adoptExistingRoles",
    );
    // Team b may adopt, but a wrong password proves nothing and changes nothing.
    w.b.secret("guess", &[("password", "a wrong guess")]);
    w.b.apply_ok(&connection(
        &w.b,
        "lockout",
        &w.server,
        &format!(
            "  database: {}\n  role: {{name: {b_role}, passwordSecretRef: {{name: guess}}, connectionLimit: 0}}\n",
            w.b.ns
        ),
    ));
    refused(
        &w.b,
        "lockout",
        "Authorized",
        "AdoptionUnproven",
        "password authentication failed",
    );
    assert_eq!(catalog_of(&w.a.ns, &a_role), before_a);
    assert_eq!(catalog_of(&w.b.ns, &b_role), before_b);
    // Deleting the refused Delete connection leaves the role alone (it never owned it).
    w.a.kubectl(&["delete", "dbconn", "lockout", "--wait=false"]);
    support::wait_deleted("dbconn", &w.a.ns, "lockout", 60);
    assert_eq!(catalog_of(&w.a.ns, &a_role), before_a);
    // With the right password team b adopts it: marked, its limit set, the DBA's note kept.
    w.b.secret("guess", &[("password", "the real one")]);
    let out = w.b.kubectl(&[
        "patch",
        "dbconn",
        "lockout",
        "--type=merge",
        "-p",
        r#"{"spec":{"role":{"connectionLimit":3}}}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("dbconn", &w.b.ns, "lockout", READY, "True", 90);
    let after = catalog_of(&w.b.ns, &b_role);
    assert!(after.starts_with("t|3|"), "{after}");
    assert!(
        after.contains("adopted\nmade by the DBA") || after.contains("adopted\\nmade by the DBA"),
        "{after}"
    );
}

#[test]
fn attack_4_templates_are_bounded_and_the_operator_stays_up() {
    let w = world();
    let v = victim();
    for (name, template, reason) in [
        (
            "bomb",
            "{% for i in range(10000) %}{% for j in range(10000) %}{{ uri }}{% endfor %}{% endfor %}",
            "TemplateNotAllowed",
        ),
        (
            "concat",
            "{% set s = uri %}{% set s = s ~ s %}{% set s = s ~ s %}{{ s }}",
            "TemplateNotAllowed",
        ),
        (
            "repeat",
            "{{ uri | replace('', uri) | replace('', uri) | replace('', uri) }}",
            "TemplateTooLarge",
        ),
    ] {
        w.a.apply_ok(&connection(
            &w.a,
            name,
            &w.server,
            &format!(
                "  database: {}\n  role: {{name: {}_{name}}}\n  secret:\n    template: {{X: {}}}\n",
                w.a.ns,
                w.a.ns,
                json(template)
            ),
        ));
        refused(&w.a, name, "SecretReady", reason, "secret.template[\"X\"]");
    }
    // 32 keys of 32 KiB each: every value within bounds, the Secret past 1 MiB.
    let mut keys = String::new();
    for i in 0..32 {
        keys.push_str(&format!(
            "      K{i}: \"{{{{ password | replace('', '{}') }}}}\"\n",
            "z".repeat(1200)
        ));
    }
    w.a.apply_ok(&connection(
        &w.a,
        "huge",
        &w.server,
        &format!(
            "  database: {}\n  role: {{name: {}_huge}}\n  secret:\n    template:\n{keys}",
            w.a.ns, w.a.ns
        ),
    ));
    refused(&w.a, "huge", "SecretReady", "SecretTooLarge", "1048576");
    operator_memory_under_the_limit(&w.op);
    // The operator kept serving everyone else.
    support::poke(&w.b.ns, "orders");
    wait_for("dbconn", &w.b.ns, &v.secret, READY, "True", 60);
    victim_logs_in();
}

#[test]
fn system_schemas_are_refused_by_the_apiserver() {
    let w = world();
    for rest in [
        "  grants: [{schema: pg_catalog, privileges: [CREATE]}]\n",
        "  schemas: [public, information_schema]\n",
        "  grants: [{schema: pg_temp_3, tables: ['*'], privileges: [SELECT]}]\n",
    ] {
        let (ok, out) = w.a.apply(&connection(
            &w.a,
            "system",
            &w.server,
            &format!(
                "  database: {}\n  role: {{name: {}_sys}}\n{rest}",
                w.a.ns, w.a.ns
            ),
        ));
        assert!(!ok && out.contains("system schemas"), "{rest}: {out}");
    }
}

#[test]
fn a_role_left_without_connect_is_claimed_and_finishes() {
    let w = world();
    // The database takes CONNECT from PUBLIC before the first reconcile: the role is created
    // and marked in one step, gets CONNECT from its grants, then logs in.
    let db = format!("{}_private", w.a.ns);
    dba(
        "postgres",
        &format!("CREATE DATABASE {} OWNER {}", q(&db), q(&w.admin)),
    );
    dba(
        "postgres",
        &format!("REVOKE CONNECT ON DATABASE {} FROM PUBLIC", q(&db)),
    );
    // The namespace's rule must list it; the default allows only the namespace's name.
    // Team a's database is the namespace's; this one is refused ...
    w.a.apply_ok(&connection(
        &w.a,
        "private",
        &w.server,
        &format!(
            "  database: {}\n  role: {{name: {}_private}}\n",
            json(&db),
            w.a.ns
        ),
    ));
    refused(&w.a, "private", "Authorized", "DatabaseNotAllowed", &db);
    // ... so the test takes CONNECT away from team a's own database instead.
    dba(
        "postgres",
        &format!("REVOKE CONNECT ON DATABASE {} FROM PUBLIC", q(&w.a.ns)),
    );
    let role = format!("{}_fresh", w.a.ns);
    w.a.apply_ok(&connection(
        &w.a,
        "fresh",
        &w.server,
        &format!("  database: {}\n  role: {{name: {role}}}\n", w.a.ns),
    ));
    wait_for("dbconn", &w.a.ns, "fresh", READY, "True", 90);
    let uid = get(&w.a.ns, "dbconn", "fresh", "{.metadata.uid}");
    let comment = dba(
        "postgres",
        &format!(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = {}",
            literal(&role)
        ),
    );
    assert_eq!(
        comment,
        format!(
            "dbconn: DatabaseConnection {}/fresh uid={uid} created",
            w.a.ns
        )
    );
}

#[test]
fn retain_keeps_the_password_and_a_new_connection_takes_the_role_back() {
    let w = world();
    let role = format!("{}_kept", w.a.ns);
    let yaml = connection(
        &w.a,
        "kept",
        &w.server,
        &format!(
            "  database: {}\n  role: {{name: {role}}}\n  deletionPolicy: Retain\n",
            w.a.ns
        ),
    );
    w.a.apply_ok(&yaml);
    wait_for("dbconn", &w.a.ns, "kept", READY, "True", 90);
    let password = secret_value(&w.a.ns, "kept", "password");
    w.a.kubectl(&["delete", "dbconn", "kept", "--wait=false"]);
    support::wait_deleted("dbconn", &w.a.ns, "kept", 60);
    // The Secret stays, without an owner, holding the only copy of the password.
    assert_eq!(secret_value(&w.a.ns, "kept", "password"), password);
    assert_eq!(
        get(&w.a.ns, "secret", "kept", "{.metadata.ownerReferences}"),
        ""
    );
    // The same connection again: Ready with the same password, the role claimed anew.
    w.a.apply_ok(&yaml);
    wait_for("dbconn", &w.a.ns, "kept", READY, "True", 90);
    assert_eq!(secret_value(&w.a.ns, "kept", "password"), password);
    let uid = get(&w.a.ns, "dbconn", "kept", "{.metadata.uid}");
    assert_eq!(
        get(
            &w.a.ns,
            "secret",
            "kept",
            "{.metadata.ownerReferences[0].uid}"
        ),
        uid
    );
    let comment = dba(
        "postgres",
        &format!(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = {}",
            literal(&role)
        ),
    );
    assert!(comment.contains(&format!("uid={uid}")), "{comment}");
}

#[test]
fn delete_finishes_past_privileges_a_third_role_granted() {
    let w = world();
    let role = format!("{}_dropme", w.a.ns);
    let third = format!("{}_third", w.a.ns);
    dba(
        &w.a.ns,
        &format!(
            "CREATE ROLE {t}; CREATE TABLE public.theirs (n int); ALTER TABLE public.theirs OWNER TO {t}",
            t = q(&third)
        ),
    );
    w.a.apply_ok(&connection(
        &w.a,
        "dropme",
        &w.server,
        &format!(
            "  database: {}\n  role: {{name: {role}}}\n  access: none\n  grants: [{{privileges: [CONNECT]}}]\n  deletionPolicy: Delete\n",
            w.a.ns
        ),
    ));
    wait_for("dbconn", &w.a.ns, "dropme", READY, "True", 90);
    dba(
        &w.a.ns,
        &format!(
            "SET ROLE {}; GRANT SELECT ON public.theirs TO {}",
            q(&third),
            q(&role)
        ),
    );
    // The role plants a SECURITY DEFINER function: handed to the admin, it would run with
    // the admin's privileges for whoever may call it.
    dba(
        &w.a.ns,
        &format!(
            "GRANT CREATE ON SCHEMA public TO {r}; SET ROLE {r}; \
             CREATE FUNCTION public.planted() RETURNS text LANGUAGE sql SECURITY DEFINER AS 'SELECT current_user::text'",
            r = q(&role)
        ),
    );
    w.a.kubectl(&["delete", "dbconn", "dropme", "--wait=false"]);
    // The admin cannot act as the grantor: the condition names the object and the grantor.
    let message = support::wait_reason(&w.a.ns, "dropme", "Ready", "DeletionBlocked", 90);
    assert!(
        message.contains("SELECT on TABLE \"public\".\"theirs\"") && message.contains(&q(&third)),
        "{message}"
    );
    // Once the admin may act as that role, dbconn revokes as it and the deletion finishes.
    dba(
        "postgres",
        &format!("GRANT {} TO {}", q(&third), q(&w.admin)),
    );
    support::wait_deleted("dbconn", &w.a.ns, "dropme", 90);
    let left = dba(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_roles WHERE rolname = {}",
            literal(&role)
        ),
    );
    assert_eq!(left, "0");
    assert_eq!(
        dba(
            &w.a.ns,
            "SELECT count(*) FROM pg_proc WHERE proname = 'planted'"
        ),
        "0",
        "the role's function went with it, not to the admin"
    );
}

#[test]
fn a_readonly_connection_sees_tables_a_migration_role_creates_later() {
    let w = world();
    let migrator = format!("{}_migrator", w.a.ns);
    // The platform lets the admin act for the migration role, which owns schema app.
    dba(
        &w.a.ns,
        &format!(
            "CREATE ROLE {m} LOGIN; GRANT {m} TO {admin}; CREATE SCHEMA app AUTHORIZATION {m}; \
             GRANT CREATE ON SCHEMA public TO {m}",
            m = q(&migrator),
            admin = q(&w.admin)
        ),
    );
    let role = format!("{}_reader", w.a.ns);
    w.a.apply_ok(&connection(
        &w.a,
        "reader",
        &w.server,
        &format!(
            "  database: {}\n  role: {{name: {role}}}\n  access: readOnly\n  schemas: [app, public]\n  defaultPrivilegesFor: [{migrator}]\n",
            w.a.ns
        ),
    ));
    wait_for("dbconn", &w.a.ns, "reader", READY, "True", 90);
    // Later, the migration runs: new tables in both schemas, created by the migrator.
    dba(
        &w.a.ns,
        &format!(
            "SET ROLE {}; CREATE TABLE app.orders (n int); INSERT INTO app.orders VALUES (7); \
             CREATE TABLE public.later (n int); INSERT INTO public.later VALUES (8)",
            q(&migrator)
        ),
    );
    let uri = format!(
        "{}&sslrootcert={}",
        secret_value(&w.a.ns, "reader", "uri"),
        bed().ca_cert.display()
    );
    assert_eq!(
        psql_uri(
            &uri,
            "SELECT (SELECT n FROM app.orders) + (SELECT n FROM public.later)"
        )
        .as_deref(),
        Ok("15"),
        "readable at once, without another reconcile"
    );
    // A role a tenant may not name is refused.
    w.a.apply_ok(&connection(
        &w.a,
        "creator",
        &w.server,
        &format!(
            "  database: {}\n  role: {{name: {}_c}}\n  defaultPrivilegesFor: [{}]\n",
            w.a.ns,
            w.a.ns,
            json(&format!("{}_migrator", w.b.ns))
        ),
    ));
    refused(
        &w.a,
        "creator",
        "Authorized",
        "RoleNameNotAllowed",
        "defaultPrivilegesFor",
    );
}

/// A fake PostgreSQL on loopback that asks every client for its password in cleartext (3), as
/// MD5 (5), or through SCRAM with one iteration (11), answering SSLRequest with `N`, and
/// records what each client sends after that request.
fn fake_server(code: u32) -> (u16, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let record = seen.clone();
    // Serves until the test binary exits; each connection is bounded by its read time-out.
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten().take(200) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
            let mut s = stream;
            let read_packet = |s: &mut std::net::TcpStream| -> Option<Vec<u8>> {
                let mut len = [0u8; 4];
                s.read_exact(&mut len).ok()?;
                let n = u32::from_be_bytes(len).saturating_sub(4).min(10_000) as usize;
                let mut body = vec![0; n];
                s.read_exact(&mut body).ok()?;
                Some(body)
            };
            let Some(mut first) = read_packet(&mut s) else {
                continue;
            };
            if first.starts_with(&[0x04, 0xd2, 0x16, 0x2f]) {
                let _ = s.write_all(b"N");
                let Some(startup) = read_packet(&mut s) else {
                    continue;
                };
                first = startup;
            }
            drop(first);
            let auth = |body: Vec<u8>| {
                let mut m = vec![b'R'];
                m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
                m.extend_from_slice(&body);
                m
            };
            let request = match code {
                5 => auth([5u32.to_be_bytes().as_slice(), b"salt"].concat()),
                // SCRAM, then a server-first-message asking for a single iteration.
                11 => {
                    let _ = s.write_all(&auth(
                        [10u32.to_be_bytes().as_slice(), b"SCRAM-SHA-256\0\0"].concat(),
                    ));
                    let mut tag = [0u8; 1];
                    if s.read_exact(&mut tag).is_err() {
                        continue;
                    }
                    let Some(initial) = read_packet(&mut s) else {
                        continue;
                    };
                    let text = String::from_utf8_lossy(&initial).into_owned();
                    let nonce = text.split("r=").nth(1).unwrap_or("").to_owned();
                    auth(
                        [
                            11u32.to_be_bytes().as_slice(),
                            format!("r={nonce}srv,s=c2FsdA==,i=1").as_bytes(),
                        ]
                        .concat(),
                    )
                }
                code => auth(code.to_be_bytes().to_vec()),
            };
            let _ = s.write_all(&request);
            let mut after = Vec::new();
            let _ = s.read_to_end(&mut after);
            record.lock().expect("record").push(after);
        }
    });
    (port, seen)
}

#[test]
fn an_inline_servers_admin_password_never_leaves_in_cleartext_or_md5() {
    let w = world();
    w.a.secret(
        "someone-elses",
        &[("username", "postgres"), ("password", "do not send me")],
    );
    for (code, sslmode, name) in [
        (3, "disable", "cleartext"),
        (5, "prefer", "md5"),
        (11, "disable", "one-iteration"),
    ] {
        let (port, seen) = fake_server(code);
        w.a.apply_ok(&format!(
            "apiVersion: dbconn.io/v1alpha1\nkind: DatabaseConnection\nmetadata: {{name: {name}, namespace: {}}}\n\
             spec:\n  server:\n    host: 127.0.0.1\n    port: {port}\n    tls: {{sslmode: {sslmode}}}\n    \
             adminSecretRef: {{name: someone-elses}}\n  database: app\n  role: {{name: app}}\n",
            w.a.ns
        ));
        let message = support::wait_reason(
            &w.a.ns,
            name,
            "ServerReachable",
            "InsecureAuthentication",
            90,
        );
        assert!(message.contains("SCRAM-SHA-256"), "{message}");
        let seen = seen.lock().expect("seen");
        assert!(!seen.is_empty(), "the operator connected");
        for after in seen.iter() {
            assert!(
                after.is_empty(),
                "the server received {} bytes after asking for the password: {:?}",
                after.len(),
                String::from_utf8_lossy(after)
            );
        }
    }
    let logs = w.op.log_text();
    assert!(
        !logs.contains("do not send me"),
        "the password is not logged"
    );
}

#[test]
fn the_operator_reads_no_secret_it_was_not_pointed_at() {
    let w = world();
    let sa =
        w.op.log_text()
            .lines()
            .any(|l| l.contains("forbidden") && l.contains("secrets"));
    assert!(
        !sa,
        "the chart's RBAC covered every Secret read:\n{}",
        w.op.log_text()
    );
    // The chart's RBAC lets the operator neither list nor watch Secrets outside its namespace.
    let can = |verb: &str| {
        let out = support::kubectl(&[
            "auth",
            "can-i",
            verb,
            "secrets",
            "-n",
            &w.b.ns,
            &format!("--as={}", w.operator_user),
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    assert!(
        !can("list") && !can("watch"),
        "no list or watch of Secret data"
    );
    assert!(can("get"), "targeted reads");
}
