//! The application role: inspect it, decide what to change (pure), and set its password as
//! a SCRAM-SHA-256 verifier computed here, so the password itself never reaches the server.

use super::quote::{Ident, literal};

/// The attributes of an existing role that dbconn manages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleState {
    pub can_login: bool,
    pub connection_limit: i32,
    /// SUPERUSER, CREATEROLE, REPLICATION or BYPASSRLS: never managed by dbconn.
    pub privileged: bool,
    /// The role's comment; its first line is dbconn's marker on the roles it manages.
    pub comment: String,
}

/// Reads a role's attributes; `None` when it does not exist. Every function is
/// schema-qualified with explicit argument types, so no object a tenant can create is called.
pub async fn inspect(
    client: &impl tokio_postgres::GenericClient,
    name: &str,
) -> Result<Option<RoleState>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT rolcanlogin, rolconnlimit, rolsuper OR rolcreaterole OR rolreplication OR rolbypassrls, \
             coalesce(pg_catalog.shobj_description(oid, 'pg_authid'::pg_catalog.name), '') \
             FROM pg_catalog.pg_roles WHERE rolname = $1::pg_catalog.text",
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

/// How a role came to be managed by its DatabaseConnection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// dbconn created it: deletionPolicy Delete drops it.
    Created,
    /// It existed and was adopted after a login with its password: Delete only revokes.
    Adopted,
}

/// Which DatabaseConnection manages a role: the first line of the role's comment. Only
/// administrators (CREATEROLE, or ADMIN OPTION on the role) can comment on a role, so an
/// application role cannot forge or remove it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The DatabaseConnection's UID.
    pub uid: String,
    /// Its namespace and name; `None` in markers written before dbconn recorded them.
    pub owner: Option<(String, String)>,
    pub origin: Origin,
}

const MARKER_PREFIX: &str = "dbconn: DatabaseConnection ";
const LEGACY_PREFIX: &str = "managed by dbconn for DatabaseConnection ";

impl Marker {
    /// Reads the marker from a role's comment, if it has one. Pure.
    pub fn parse(comment: &str) -> Option<Marker> {
        let line = comment.lines().next()?;
        if let Some(uid) = line.strip_prefix(LEGACY_PREFIX) {
            return Some(Marker {
                uid: uid.trim().to_owned(),
                owner: None,
                origin: Origin::Created,
            });
        }
        let mut words = line.strip_prefix(MARKER_PREFIX)?.split(' ');
        let (ns, name) = words.next()?.split_once('/')?;
        let uid = words.next()?.strip_prefix("uid=")?;
        let origin = match words.next()? {
            "created" => Origin::Created,
            "adopted" => Origin::Adopted,
            _ => return None,
        };
        Some(Marker {
            uid: uid.to_owned(),
            owner: Some((ns.to_owned(), name.to_owned())),
            origin,
        })
    }

    /// The comment that marks the role, keeping what the comment said before (adoption
    /// keeps a DBA's comment, and releasing the role puts it back).
    pub fn comment(&self, previous: &str) -> String {
        let (ns, name) = self.owner.clone().unwrap_or_default();
        let origin = match self.origin {
            Origin::Created => "created",
            Origin::Adopted => "adopted",
        };
        let line = format!("{MARKER_PREFIX}{ns}/{name} uid={} {origin}", self.uid);
        if previous.is_empty() {
            line
        } else {
            format!("{line}\n{previous}")
        }
    }
}

/// A role's comment without dbconn's marker: what it said before dbconn managed the role.
pub fn unmarked_comment(comment: &str) -> &str {
    match Marker::parse(comment) {
        Some(_) => comment.split_once('\n').map_or("", |(_, rest)| rest),
        None => comment,
    }
}

/// The SQL that sets a role's comment (`None` removes it).
pub fn comment_sql(role: &Ident, comment: Option<&str>) -> String {
    match comment {
        Some(c) => format!("COMMENT ON ROLE {role} IS {}", literal(c)),
        None => format!("COMMENT ON ROLE {role} IS NULL"),
    }
}

/// Serializes claims on one role name: run first in the claim's transaction, on the
/// server's administrative database (advisory locks are per database; every claim on one
/// server takes it in the same one). `$1` is the role name.
pub const CLAIM_LOCK: &str = "SELECT pg_catalog.pg_advisory_xact_lock(\
     pg_catalog.hashtextextended('dbconn:role:' OPERATOR(pg_catalog.||) $1::pg_catalog.text, 0::pg_catalog.int8))";

/// Creates a role with LOGIN, its connection limit, its password as a verifier and its
/// marker, as one transaction body: a crash leaves either nothing or a marked role. Pure.
pub fn create_sql(role: &Ident, connection_limit: i32, verifier: &str, marker: &str) -> String {
    format!(
        "CREATE ROLE {role} LOGIN CONNECTION LIMIT {connection_limit} PASSWORD {}; {}",
        literal(verifier),
        comment_sql(role, Some(marker))
    )
}

/// What to run so an owned role has LOGIN and its connection limit; `None` when it does.
/// Only ever sent for a role this connection owns. Pure.
pub fn attributes_sql(role: &Ident, connection_limit: i32, state: &RoleState) -> Option<String> {
    (!state.can_login || state.connection_limit != connection_limit)
        .then(|| format!("ALTER ROLE {role} LOGIN CONNECTION LIMIT {connection_limit}"))
}

/// Creates the alternate login of rotation without the pooler (operator/rotation.rs): it logs
/// in, is a member of `role`, and its sessions start as `role` (so `current_user`, privileges
/// and what it creates are the role's), with the role's connection limit and the marker, as
/// one transaction body. It has no password until the Secret names it (the login step sets
/// one). `IN ROLE` needs ADMIN OPTION on the role (PostgreSQL 16), which its creator has. Pure.
pub fn alternate_create_sql(
    alt: &Ident,
    role: &Ident,
    role_name: &str,
    connection_limit: i32,
    marker: &str,
) -> String {
    format!(
        "CREATE ROLE {alt} LOGIN CONNECTION LIMIT {connection_limit} IN ROLE {role}; {}; {}",
        starts_as_sql(alt, role_name),
        comment_sql(alt, Some(marker))
    )
}

/// The per-role setting that starts every session of `alt` with `SET ROLE role_name`.
fn starts_as_sql(alt: &Ident, role_name: &str) -> String {
    format!("ALTER ROLE {alt} SET role = {}", literal(role_name))
}

/// Whether the alternate (`$1`) is a member of the role (`$2`) and starts its sessions as it.
pub const ALTERNATE_JOINED: &str = "SELECT pg_catalog.pg_has_role($1::pg_catalog.name, $2::pg_catalog.name, 'MEMBER'::pg_catalog.text) \
     AND EXISTS (SELECT FROM pg_catalog.pg_db_role_setting s JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) s.setrole \
     WHERE r.rolname OPERATOR(pg_catalog.=) $1::pg_catalog.text AND s.setdatabase OPERATOR(pg_catalog.=) 0::pg_catalog.oid \
     AND ('role=' OPERATOR(pg_catalog.||) $2::pg_catalog.text) OPERATOR(pg_catalog.=) ANY (s.setconfig))";

/// Makes the alternate a member of the role again, starting its sessions as it. Pure.
pub fn alternate_join_sql(alt: &Ident, role: &Ident, role_name: &str) -> String {
    format!("GRANT {role} TO {alt}; {}", starts_as_sql(alt, role_name))
}

/// The SQL that sets a role's password from its verifier.
pub fn password_sql(role: &Ident, verifier: &str) -> String {
    format!("ALTER ROLE {role} PASSWORD {}", literal(verifier))
}

/// The steps that drop a role, as SQL (pure): stop new logins and end its sessions on the
/// admin connection, then in each database where it owns or holds anything drop what it owns
/// and its privileges (DROP OWNED), then drop it.
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
        terminate_sessions: "SELECT pg_catalog.count(pg_catalog.pg_terminate_backend(pid, 0::pg_catalog.int8)) \
                             FROM pg_catalog.pg_stat_activity \
                             WHERE usename = $1::pg_catalog.text AND pid <> pg_catalog.pg_backend_pid()",
        databases_with_objects: "SELECT DISTINCT d.datname::pg_catalog.text FROM pg_catalog.pg_shdepend s \
                                 JOIN pg_catalog.pg_database d ON d.oid = s.dbid \
                                 WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass \
                                 AND s.refobjid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1::pg_catalog.text) \
                                 AND d.datallowconn",
        is_member: "SELECT pg_catalog.pg_has_role(CURRENT_USER, $1::pg_catalog.name, 'USAGE'::pg_catalog.text)",
        become_member: format!("GRANT {role} TO CURRENT_USER"),
        // Never REASSIGN to the admin: the role's SECURITY DEFINER functions, views and rules
        // would then run with the admin's privileges (docs/security.md, rule 8).
        disown: format!("DROP OWNED BY {role}"),
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
    fn the_alternate_login_is_a_member_that_starts_as_the_role_with_no_password() {
        let (alt, role) = (
            ident("Shop \"Orders\"_alt").unwrap(),
            ident("Shop \"Orders\"").unwrap(),
        );
        let sql = alternate_create_sql(&alt, &role, "Shop \"Orders\"", 7, "dbconn: x");
        assert_eq!(
            sql,
            "CREATE ROLE \"Shop \"\"Orders\"\"_alt\" LOGIN CONNECTION LIMIT 7 IN ROLE \"Shop \"\"Orders\"\"\"; \
             ALTER ROLE \"Shop \"\"Orders\"\"_alt\" SET role = 'Shop \"Orders\"'; \
             COMMENT ON ROLE \"Shop \"\"Orders\"\"_alt\" IS 'dbconn: x'"
        );
        assert!(!sql.contains("PASSWORD"));
        assert_eq!(
            alternate_join_sql(&alt, &ident("o'k").unwrap(), "o'k"),
            "GRANT \"o'k\" TO \"Shop \"\"Orders\"\"_alt\"; ALTER ROLE \"Shop \"\"Orders\"\"_alt\" SET role = 'o''k'"
        );
    }

    #[test]
    fn a_new_role_is_created_with_a_verifier_and_its_marker_never_the_password() {
        let v = verifier("s3cret pass'word");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
        assert!(!v.contains("s3cret"));
        let role = ident("Shop \"Orders\"").unwrap();
        let sql = create_sql(
            &role,
            20,
            &v,
            "dbconn: DatabaseConnection a/b uid=1 created",
        );
        assert!(sql.starts_with("CREATE ROLE \"Shop \"\"Orders\"\"\" LOGIN CONNECTION LIMIT 20 PASSWORD 'SCRAM-SHA-256$"), "{sql}");
        assert!(sql.ends_with("; COMMENT ON ROLE \"Shop \"\"Orders\"\"\" IS 'dbconn: DatabaseConnection a/b uid=1 created'"), "{sql}");
        assert!(!sql.contains("s3cret"));
    }

    #[test]
    fn markers_round_trip_keep_the_previous_comment_and_read_the_old_form() {
        let m = Marker {
            uid: "6f1c-2".into(),
            owner: Some(("team-a".into(), "orders".into())),
            origin: Origin::Adopted,
        };
        let comment = m.comment("owned by the billing team\nsecond line");
        assert_eq!(
            comment,
            "dbconn: DatabaseConnection team-a/orders uid=6f1c-2 adopted\nowned by the billing team\nsecond line"
        );
        assert_eq!(Marker::parse(&comment), Some(m.clone()));
        assert_eq!(
            unmarked_comment(&comment),
            "owned by the billing team\nsecond line"
        );
        assert_eq!(unmarked_comment(&m.comment("")), "");
        assert_eq!(unmarked_comment("a DBA's note"), "a DBA's note");
        assert_eq!(
            Marker::parse("managed by dbconn for DatabaseConnection 1234"),
            Some(Marker {
                uid: "1234".into(),
                owner: None,
                origin: Origin::Created
            })
        );
        for not_a_marker in [
            "",
            "a DBA's note",
            "dbconn: DatabaseConnection team-a uid=1 created",
            "dbconn: DatabaseConnection a/b uid=1 stolen",
            "note\ndbconn: DatabaseConnection a/b uid=1 created",
        ] {
            assert_eq!(Marker::parse(not_a_marker), None, "{not_a_marker:?}");
        }
    }

    #[test]
    fn dropping_a_role_quotes_it_everywhere() {
        let role = ident("we\"ird role").unwrap();
        let plan = drop_plan(&role);
        assert_eq!(plan.stop_logins, "ALTER ROLE \"we\"\"ird role\" NOLOGIN");
        assert_eq!(plan.disown, "DROP OWNED BY \"we\"\"ird role\"");
        assert_eq!(plan.drop, "DROP ROLE IF EXISTS \"we\"\"ird role\"");
        assert!(plan.terminate_sessions.contains("usename = $1"));
    }

    #[test]
    fn an_owned_role_changes_only_when_attributes_differ() {
        let role = ident("app").unwrap();
        let same = RoleState {
            can_login: true,
            connection_limit: -1,
            privileged: false,
            comment: String::new(),
        };
        assert_eq!(attributes_sql(&role, -1, &same), None);
        let nologin = RoleState {
            can_login: false,
            ..same
        };
        assert_eq!(
            attributes_sql(&role, 5, &nologin).as_deref(),
            Some("ALTER ROLE \"app\" LOGIN CONNECTION LIMIT 5")
        );
    }
}
