//! Stage 2, authorize: may this connection do what it asks? First the server's policy for
//! the namespace (pure, before any SQL), then the claim on the role, read from the server with
//! no statement that changes anything: a role is managed only by the connection whose UID its
//! marker holds, adopted only where the policy allows and only after a login with its
//! password, and never touched before that.

use kube::{Api, ResourceExt};
use tokio_postgres::Client;

use super::dereference::{PasswordSource, Refs};
use super::{Failed, at};
use crate::api::{Access, DatabaseConnection, DatabaseConnectionSpec, is_system_schema};
use crate::operator::policy::Refusal;
use crate::operator::status::AUTHORIZED;
use crate::operator::{Context, Error};
use crate::postgres::ConnectError;
use crate::postgres::privileges::{self, Catalog};
use crate::postgres::role::{self, Marker, Origin, RoleState};

/// What authorization found on the server.
pub struct Facts {
    /// The role as it is now; `None` when it does not exist.
    pub role: Option<RoleState>,
    pub claim: Claim,
    /// The application database's objects, read as the admin.
    pub catalog: Catalog,
}

/// How this connection stands to its role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// It does not exist: create it, marked, in one transaction.
    Create,
    /// Its marker names this connection. `remark`: the marker is in an older form.
    Owned { origin: Origin, remark: bool },
    /// It exists without dbconn's marker: adopt it once a login with the password works.
    Adopt { previous: String },
    /// It was managed by a deleted connection of this namespace: take it over once a login
    /// with the password works, keeping how it came to be.
    Reclaim { origin: Origin, previous: String },
}

impl Claim {
    /// The origin the role's marker records once this claim is made.
    pub fn origin(&self) -> Origin {
        match self {
            Claim::Create => Origin::Created,
            Claim::Adopt { .. } => Origin::Adopted,
            Claim::Owned { origin, .. } | Claim::Reclaim { origin, .. } => *origin,
        }
    }
}

/// The policy's answer for the names the connection asks for (pure, no SQL): its database,
/// role name and schemas on a DatabaseServer; no system schema on any server.
pub fn policy(refs: &Refs, spec: &DatabaseConnectionSpec) -> Result<(), Failed> {
    let preset = (spec.access != Access::None).then_some(spec.schemas.iter());
    if let Some(schema) = preset
        .into_iter()
        .flatten()
        .chain(spec.grants.iter().filter_map(|g| g.schema.as_ref()))
        .find(|s| is_system_schema(s))
    {
        return Err(at(AUTHORIZED)(Error::SystemSchema(schema.clone())));
    }
    let Some(rules) = &refs.server.rules else {
        return Ok(());
    };
    rules
        .check(spec)
        .and_then(|()| match &refs.password.alternate {
            Some(alt) => rules.check_alternate(alt),
            None => Ok(()),
        })
        .map_err(|r| at(AUTHORIZED)(Error::NotAllowed(r)))
}

/// An inline server's address is immutable, also where it comes from a URL Secret the tenant
/// can edit: once the connection acted on a server (its finalizer is on), a different
/// `host:port` is refused. Pure.
pub fn same_server(conn: &DatabaseConnection, refs: &Refs) -> Result<(), Failed> {
    let acted = conn
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == super::cleanup::FINALIZER);
    let before = conn.status.as_ref().and_then(|s| s.server.as_deref());
    match before {
        Some(before) if acted && conn.spec.server_ref.is_none() && before != refs.server.label => {
            Err(at(AUTHORIZED)(Error::ServerChanged {
                before: before.to_owned(),
                now: refs.server.label.clone(),
            }))
        }
        _ => Ok(()),
    }
}

/// Reads the role and the catalog as the admin, and decides the claim. Reads only.
pub async fn claim(
    ctx: &Context,
    conn: &DatabaseConnection,
    refs: &Refs,
    admin: &Client,
) -> Result<Facts, Failed> {
    let spec = &conn.spec;
    let state = role::inspect(admin, &spec.role.name)
        .await
        .map_err(|e| at(AUTHORIZED)(Error::sql("reading the role", e)))?;
    let me = me(conn);
    let marker = state.as_ref().and_then(|s| Marker::parse(&s.comment));
    let other_alive = match &marker {
        Some(m) if m.uid != me.uid => alive(ctx, m).await.map_err(at(AUTHORIZED))?,
        _ => false,
    };
    let adoption = match &refs.server.rules {
        Some(rules) => rules.check_adoption(&spec.role.name),
        // An inline server is the tenant's own, with its own admin credentials.
        None => Ok(()),
    };
    let (admin_user, _) = refs.server.admin.clone().unwrap_or_default();
    let claim = decide(&Situation {
        name: &spec.role.name,
        admin: &admin_user,
        state: state.as_ref(),
        me: &me,
        other_alive,
        create: spec.role.create,
        adoption,
        password: refs.password.source,
    })
    .map_err(at(AUTHORIZED))?;
    if matches!(claim, Claim::Adopt { .. } | Claim::Reclaim { .. }) {
        login_proves_password(refs, &spec.role.name).await?;
    }
    let catalog = privileges::catalog(admin, &privileges::named_schemas(spec))
        .await
        .map_err(at(AUTHORIZED))?;
    creators(refs, spec, &catalog).map_err(at(AUTHORIZED))?;
    Ok(Facts {
        role: state,
        claim,
        catalog,
    })
}

/// Adoption and reclaim need proof that whoever asks knows the role's password: a login.
/// A refusal after the password was accepted (no CONNECT on the database) counts as proof.
async fn login_proves_password(refs: &Refs, role: &str) -> Result<(), Failed> {
    match refs.server.prove(role, &refs.password.value).await {
        Ok(_) | Err(ConnectError::RefusedAfterLogin(_)) => Ok(()),
        Err(e @ (ConnectError::Timeout(..) | ConnectError::Unreachable(..))) => {
            Err(at(AUTHORIZED)(e))
        }
        Err(e) => Err(at(AUTHORIZED)(Error::AdoptionUnproven {
            role: role.to_owned(),
            cause: e.to_string(),
        })),
    }
}

/// The marker this connection writes on its role.
pub fn me(conn: &DatabaseConnection) -> Marker {
    Marker {
        uid: conn.uid().unwrap_or_default(),
        owner: Some((conn.namespace().unwrap_or_default(), conn.name_any())),
        origin: Origin::Created,
    }
}

/// Whether the connection a marker names still exists. Asked of the apiserver by namespace
/// and name; a marker from before those were recorded is looked up by UID in the cache.
async fn alive(ctx: &Context, marker: &Marker) -> Result<bool, Error> {
    match &marker.owner {
        Some((ns, name)) => Ok(
            Api::<DatabaseConnection>::namespaced(ctx.client.clone(), ns)
                .get_opt(name)
                .await?
                .is_some_and(|c| c.uid().as_deref() == Some(marker.uid.as_str())),
        ),
        None => {
            ctx.connections.wait_until_ready().await.ok();
            Ok(ctx
                .connections
                .state()
                .iter()
                .any(|c| c.uid().as_deref() == Some(marker.uid.as_str())))
        }
    }
}

/// Everything the claim decision reads.
pub struct Situation<'a> {
    pub name: &'a str,
    /// The admin role: never managed.
    pub admin: &'a str,
    pub state: Option<&'a RoleState>,
    /// This connection, as its marker.
    pub me: &'a Marker,
    /// The connection named by the role's marker, when that is not this one, still exists.
    pub other_alive: bool,
    /// role.create.
    pub create: bool,
    /// The policy's answer to adopting an existing role.
    pub adoption: Result<(), Refusal>,
    pub password: PasswordSource,
}

/// The claim this connection can make on its role, or why it may not touch it. Pure.
pub fn decide(s: &Situation<'_>) -> Result<Claim, Error> {
    if s.name.starts_with("pg_") || s.name == s.admin {
        return Err(Error::RoleNotAllowed(format!(
            "role {:?} is reserved (pg_*) or the admin itself",
            s.name
        )));
    }
    let Some(state) = s.state else {
        return if s.create {
            Ok(Claim::Create)
        } else {
            Err(Error::RoleMissing(s.name.to_owned()))
        };
    };
    if state.privileged {
        return Err(Error::RoleNotAllowed(format!(
            "role {:?} has SUPERUSER, CREATEROLE, REPLICATION or BYPASSRLS; dbconn manages only plain login roles",
            s.name
        )));
    }
    let known_password = matches!(s.password, PasswordSource::Given | PasswordSource::Stored);
    let previous = role::unmarked_comment(&state.comment).to_owned();
    let (my_ns, _) = s.me.owner.clone().unwrap_or_default();
    match Marker::parse(&state.comment) {
        Some(m) if m.uid == s.me.uid => Ok(Claim::Owned {
            origin: m.origin,
            remark: m.owner.is_none(),
        }),
        Some(m) if s.other_alive => Err(Error::RoleClaimed {
            role: s.name.to_owned(),
            owner: match &m.owner {
                Some((ns, name)) if *ns == my_ns => format!("DatabaseConnection {ns}/{name}"),
                _ => "a DatabaseConnection in another namespace".to_owned(),
            },
        }),
        Some(m) if m.owner.as_ref().is_some_and(|(ns, _)| *ns == my_ns) => {
            if !known_password {
                return Err(Error::RoleNotManaged(s.name.to_owned()));
            }
            Ok(Claim::Reclaim {
                origin: m.origin,
                previous,
            })
        }
        // Unmarked, or left by a deleted connection of another namespace: adoption.
        _ => {
            s.adoption.clone()?;
            if !known_password {
                return Err(Error::RoleNotManaged(s.name.to_owned()));
            }
            Ok(Claim::Adopt { previous })
        }
    }
}

/// On a DatabaseServer, each role in defaultPrivilegesFor creates one of the connection's
/// schemas' objects (its owner) or is a role name the namespace may use.
fn creators(refs: &Refs, spec: &DatabaseConnectionSpec, catalog: &Catalog) -> Result<(), Error> {
    let Some(rules) = &refs.server.rules else {
        return Ok(());
    };
    // The schemas the policy checked: access none names no preset schema.
    let schemas = privileges::named_schemas(spec);
    for role in &spec.default_privileges_for {
        let creates = schemas
            .iter()
            .any(|s| catalog.creators.get(s) == Some(role));
        if !creates && rules.check_creator(role).is_err() {
            return Err(Error::CreatorNotAllowed {
                role: role.clone(),
                server: rules.server.clone(),
                namespace: rules.namespace.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::policy::RefusalKind;

    fn state(comment: &str) -> RoleState {
        RoleState {
            can_login: true,
            connection_limit: -1,
            privileged: false,
            comment: comment.to_owned(),
        }
    }

    fn me() -> Marker {
        Marker {
            uid: "me".into(),
            owner: Some(("team-a".into(), "app".into())),
            origin: Origin::Created,
        }
    }

    fn refused() -> Result<(), Refusal> {
        Err(Refusal {
            kind: RefusalKind::Adoption,
            server: "shared".into(),
            namespace: "team-a".into(),
            what: "adopt the existing role",
            name: "r".into(),
            rules: "no rule sets adoptExistingRoles".into(),
        })
    }

    fn situation<'a>(me: &'a Marker, state: Option<&'a RoleState>) -> Situation<'a> {
        Situation {
            name: "team-a_app",
            admin: "postgres",
            state,
            me,
            other_alive: false,
            create: true,
            adoption: Ok(()),
            password: PasswordSource::New,
        }
    }

    fn marker(uid: &str, ns: &str, origin: Origin) -> String {
        Marker {
            uid: uid.into(),
            owner: Some((ns.into(), "x".into())),
            origin,
        }
        .comment("")
    }

    #[test]
    fn a_missing_role_is_created_and_a_marked_one_is_owned() {
        let me = me();
        assert_eq!(decide(&situation(&me, None)).unwrap(), Claim::Create);
        let mut no_create = situation(&me, None);
        no_create.create = false;
        assert!(matches!(decide(&no_create), Err(Error::RoleMissing(_))));
        let mine = state(&me.comment(""));
        assert_eq!(
            decide(&situation(&me, Some(&mine))).unwrap(),
            Claim::Owned {
                origin: Origin::Created,
                remark: false
            }
        );
        let legacy = state("managed by dbconn for DatabaseConnection me");
        assert_eq!(
            decide(&situation(&me, Some(&legacy))).unwrap(),
            Claim::Owned {
                origin: Origin::Created,
                remark: true
            }
        );
    }

    #[test]
    fn another_live_connections_role_is_refused_whatever_the_password() {
        let me = me();
        let theirs = state(&marker("other", "team-b", Origin::Created));
        for password in [
            PasswordSource::Given,
            PasswordSource::Stored,
            PasswordSource::New,
        ] {
            let mut s = situation(&me, Some(&theirs));
            s.other_alive = true;
            s.password = password;
            let err = decide(&s).unwrap_err();
            assert!(matches!(err, Error::RoleClaimed { .. }), "{err}");
            assert!(err.to_string().contains("another namespace"), "{err}");
        }
    }

    #[test]
    fn a_deleted_connections_role_is_reclaimed_in_its_namespace_only() {
        let me = me();
        let left = state(&marker("gone", "team-a", Origin::Created));
        let mut s = situation(&me, Some(&left));
        s.password = PasswordSource::Stored;
        assert_eq!(
            decide(&s).unwrap(),
            Claim::Reclaim {
                origin: Origin::Created,
                previous: String::new()
            }
        );
        s.password = PasswordSource::New;
        assert!(matches!(decide(&s), Err(Error::RoleNotManaged(_))));
        // From another namespace it is adoption, under the policy.
        let elsewhere = state(&marker("gone", "team-b", Origin::Created));
        let mut s = situation(&me, Some(&elsewhere));
        s.password = PasswordSource::Given;
        s.adoption = refused();
        assert!(matches!(decide(&s), Err(Error::NotAllowed(_))));
    }

    #[test]
    fn an_unmarked_role_is_adopted_only_when_allowed_and_with_its_password() {
        let me = me();
        let dba = state("made by the DBA");
        let mut s = situation(&me, Some(&dba));
        s.adoption = refused();
        s.password = PasswordSource::Given;
        let err = decide(&s).unwrap_err();
        assert_eq!(err.reason(), "AdoptionNotAllowed");
        s.adoption = Ok(());
        s.password = PasswordSource::New;
        assert!(matches!(decide(&s), Err(Error::RoleNotManaged(_))));
        s.password = PasswordSource::Given;
        assert_eq!(
            decide(&s).unwrap(),
            Claim::Adopt {
                previous: "made by the DBA".into()
            }
        );
    }

    #[test]
    fn privileged_reserved_and_admin_roles_are_never_claimed() {
        let me = me();
        let su = RoleState {
            privileged: true,
            ..state(&me.comment(""))
        };
        for (name, st) in [
            ("team-a_app", Some(&su)),
            ("pg_monitor", None),
            ("postgres", None),
        ] {
            let mut s = situation(&me, st);
            s.name = name;
            assert!(
                matches!(decide(&s), Err(Error::RoleNotAllowed(_))),
                "{name}"
            );
        }
    }
}
