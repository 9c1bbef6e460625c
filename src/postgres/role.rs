//! The application role: inspect it, decide what to change (pure), and set its password as
//! a SCRAM-SHA-256 verifier computed here, so the password itself never reaches the server.

use tokio_postgres::Client;

use super::quote::{Ident, literal};

/// The attributes of an existing role that dbconn manages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleState {
    pub can_login: bool,
    pub connection_limit: i32,
    /// SUPERUSER, CREATEROLE, REPLICATION or BYPASSRLS: never managed by dbconn.
    pub privileged: bool,
    /// The role's comment; dbconn marks the roles it creates with `marker()`.
    pub comment: String,
}

/// Reads a role's attributes; `None` when it does not exist.
pub async fn inspect(
    client: &Client,
    name: &str,
) -> Result<Option<RoleState>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT rolcanlogin, rolconnlimit, rolsuper OR rolcreaterole OR rolreplication OR rolbypassrls, \
             coalesce(shobj_description(oid, 'pg_authid'), '') FROM pg_roles WHERE rolname = $1",
            &[&name],
        )
        .await?;
    Ok(row.map(|r| RoleState {
        can_login: r.get(0),
        connection_limit: r.get(1),
        privileged: r.get(2),
        comment: r.get(3),
    }))
}

/// The comment that marks a role as created by one DatabaseConnection (by its UID): only
/// such a role gets its password reset or is dropped by deletionPolicy Delete.
pub fn marker(uid: &str) -> String {
    format!("managed by dbconn for DatabaseConnection {uid}")
}

pub fn mark_sql(role: &Ident, marker: &str) -> String {
    format!("COMMENT ON ROLE {role} IS {}", literal(marker))
}

/// What to run so the role exists with LOGIN and its connection limit. Pure. A new role
/// gets its password verifier at once; an existing one keeps its password (the login proof
/// decides whether it must change).
pub fn ensure_sql(
    role: &Ident,
    connection_limit: i32,
    state: Option<&RoleState>,
    verifier: &str,
) -> Option<String> {
    match state {
        None => Some(format!(
            "CREATE ROLE {role} LOGIN CONNECTION LIMIT {connection_limit} PASSWORD {}",
            literal(verifier)
        )),
        Some(s) if !s.can_login || s.connection_limit != connection_limit => Some(format!(
            "ALTER ROLE {role} LOGIN CONNECTION LIMIT {connection_limit}"
        )),
        Some(_) => None,
    }
}

/// The SQL that sets a role's password from its verifier.
pub fn password_sql(role: &Ident, verifier: &str) -> String {
    format!("ALTER ROLE {role} PASSWORD {}", literal(verifier))
}

/// The steps that drop a role, as SQL (pure): stop new logins and end its sessions on the
/// admin connection, then in each database where it owns or holds anything hand its objects
/// to the admin and drop its privileges, then drop it.
pub struct DropPlan {
    /// Run once, on the admin connection; `$1` is the role name.
    pub stop_logins: String,
    pub terminate_sessions: &'static str,
    /// Databases (by name) where the role owns objects or holds privileges; `$1` is the role name.
    pub databases_with_objects: &'static str,
    /// Whether the admin can act as the role (`$1`); if not, `become_member` first.
    pub is_member: &'static str,
    pub become_member: String,
    /// Run in each of those databases, and in the connection's own.
    pub disown: String,
    pub drop: String,
}

pub fn drop_plan(role: &Ident) -> DropPlan {
    DropPlan {
        stop_logins: format!("ALTER ROLE {role} NOLOGIN"),
        terminate_sessions: "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                             WHERE usename = $1 AND pid <> pg_backend_pid()",
        databases_with_objects: "SELECT DISTINCT d.datname::text FROM pg_shdepend s \
                                 JOIN pg_database d ON d.oid = s.dbid \
                                 WHERE s.refclassid = 'pg_authid'::regclass \
                                 AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1) \
                                 AND d.datallowconn",
        is_member: "SELECT pg_has_role(current_user, $1, 'USAGE')",
        become_member: format!("GRANT {role} TO CURRENT_USER"),
        disown: format!("REASSIGN OWNED BY {role} TO CURRENT_USER; DROP OWNED BY {role}"),
        drop: format!("DROP ROLE IF EXISTS {role}"),
    }
}

/// SCRAM-SHA-256 verifier of `password` with a random salt, as PostgreSQL stores it.
pub fn verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::quote::ident;

    #[test]
    fn a_new_role_is_created_with_a_verifier_never_the_password() {
        let v = verifier("s3cret pass'word");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
        assert!(!v.contains("s3cret"));
        let role = ident("Shop \"Orders\"").unwrap();
        let sql = ensure_sql(&role, 20, None, &v).expect("create");
        assert!(sql.starts_with("CREATE ROLE \"Shop \"\"Orders\"\"\" LOGIN CONNECTION LIMIT 20 PASSWORD 'SCRAM-SHA-256$"), "{sql}");
        assert!(!sql.contains("s3cret"));
    }

    #[test]
    fn dropping_a_role_quotes_it_everywhere() {
        let role = ident("we\"ird role").unwrap();
        let plan = drop_plan(&role);
        assert_eq!(plan.stop_logins, "ALTER ROLE \"we\"\"ird role\" NOLOGIN");
        assert_eq!(
            plan.disown,
            "REASSIGN OWNED BY \"we\"\"ird role\" TO CURRENT_USER; DROP OWNED BY \"we\"\"ird role\""
        );
        assert_eq!(plan.drop, "DROP ROLE IF EXISTS \"we\"\"ird role\"");
        assert!(plan.terminate_sessions.contains("usename = $1"));
    }

    #[test]
    fn an_existing_role_changes_only_when_attributes_differ() {
        let role = ident("app").unwrap();
        let same = RoleState {
            can_login: true,
            connection_limit: -1,
            privileged: false,
            comment: String::new(),
        };
        assert_eq!(ensure_sql(&role, -1, Some(&same), "v"), None);
        let nologin = RoleState {
            can_login: false,
            connection_limit: -1,
            privileged: false,
            comment: String::new(),
        };
        assert_eq!(
            ensure_sql(&role, 5, Some(&nologin), "v").as_deref(),
            Some("ALTER ROLE \"app\" LOGIN CONNECTION LIMIT 5")
        );
    }
}
