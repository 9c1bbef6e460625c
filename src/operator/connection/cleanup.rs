//! Deleting a DatabaseConnection by its deletionPolicy, through the same stages as the
//! reconcile: dereference the server; authorize (is the role this connection's, by its
//! marker?); plan what to undo (pure); apply it; report an Event.
//!
//! Only a role whose marker names this connection is touched. Retain keeps the role, its
//! grants and the generated password (the Secret is left, without its owner, for a new
//! connection of the same name to take over); Revoke takes back every privilege; Delete drops
//! a role this connection created (ending its sessions, dropping what it owns with it)
//! and releases an adopted one (revoked, marker removed, its old comment restored). Until
//! the server has done its part the finalizer stays and Ready says why.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tokio_postgres::Client;

use super::authorize::me;
use super::dereference::{Existing, RETAINED_FROM, existing, secret_name};
use super::report::{deletion_blocked, publish};
use crate::api::{DatabaseConnection, DeletionPolicy};
use crate::operator::resolve::{Purpose, Resolved, resolve};
use crate::operator::{Context, Error};
use crate::postgres::privileges::{self, Change};
use crate::postgres::quote::{Ident, ident};
use crate::postgres::role::{self, Marker, Origin};

/// The finalizer dbconn puts on every DatabaseConnection it acts for.
pub const FINALIZER: &str = "dbconn.io/cleanup";
/// `"true"` on a DatabaseConnection: delete it without touching the server (for when the
/// server or its credentials are gone for good).
pub const SKIP_CLEANUP: &str = "dbconn.io/skip-cleanup";

/// What deletion does on the server. Pure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Undo {
    /// Nothing: Retain, validate-only, or a role that is not this connection's.
    Nothing(String),
    /// Revoke every privilege; with `release`, also remove the marker (and put back the
    /// comment it replaced).
    Revoke { release: Option<String> },
    /// Drop the role.
    Drop,
}

/// What to undo for `policy`, given whose the role is (`None`: missing or not ours).
pub fn undo(policy: DeletionPolicy, ours: Option<(Origin, String)>, role: &Ident) -> Undo {
    match (policy, ours) {
        (DeletionPolicy::Retain, _) => Undo::Nothing(format!(
            "role {role} and its privileges kept (deletionPolicy Retain)"
        )),
        (_, None) => Undo::Nothing(format!(
            "role {role} left as it is: it does not exist or is not managed by this DatabaseConnection"
        )),
        (DeletionPolicy::Revoke, Some(_)) => Undo::Revoke { release: None },
        (DeletionPolicy::Delete, Some((Origin::Adopted, previous))) => Undo::Revoke {
            release: Some(previous),
        },
        (DeletionPolicy::Delete, Some((Origin::Created, _))) => Undo::Drop,
    }
}

pub async fn cleanup(conn: Arc<DatabaseConnection>, ctx: Arc<Context>) -> Result<Action, Error> {
    let policy = conn.spec.deletion_policy;
    let skip = conn
        .annotations()
        .get(SKIP_CLEANUP)
        .is_some_and(|v| v == "true");
    let done = match policy {
        _ if skip => Ok(format!(
            "role {:?} left as it is ({SKIP_CLEANUP} is true)",
            conn.spec.role.name
        )),
        DeletionPolicy::Retain => Ok(format!(
            "role {:?} and its privileges kept (deletionPolicy Retain)",
            conn.spec.role.name
        )),
        DeletionPolicy::Revoke | DeletionPolicy::Delete => {
            tokio::time::timeout(super::RECONCILE_TIMEOUT, on_server(&conn, &ctx, policy))
                .await
                .unwrap_or(Err(Error::Stalled(super::RECONCILE_TIMEOUT)))
        }
    };
    let note = match done {
        Ok(note) => note,
        Err(e) => {
            let message = format!(
                "deletionPolicy {policy:?} cannot finish yet: {e} (retrying; to delete without touching the server, annotate {SKIP_CLEANUP}=true)"
            );
            if let Err(status) = deletion_blocked(&conn, &ctx, "DeletionBlocked", message).await {
                tracing::warn!(error = %status, "reporting a blocked deletion");
            }
            return Err(e);
        }
    };
    // Retain keeps the password even when the server is skipped: the role may still exist.
    let kept = release_secret(&conn, &ctx, policy == DeletionPolicy::Retain).await?;
    let note = match kept {
        Some(name) => format!(
            "{note}; Secret {name} kept with its password, for a new DatabaseConnection that names it"
        ),
        None => note,
    };
    ctx.metrics.connection_ready(
        &conn.namespace().unwrap_or_default(),
        &conn.name_any(),
        None,
    );
    tracing::info!(connection = %conn.name_any(), namespace = ?conn.namespace(), "{note}");
    publish(&conn, &ctx, EventType::Normal, "Deleted", note).await;
    Ok(Action::await_change())
}

/// Retain keeps a generated password: the Secret loses its owner (so garbage collection
/// leaves it) and is marked for a new connection to take over. Otherwise it is deleted.
/// Returns the name of a kept Secret.
async fn release_secret(
    conn: &DatabaseConnection,
    ctx: &Context,
    retain: bool,
) -> Result<Option<String>, Error> {
    let ns = conn.namespace().unwrap_or_default();
    let name = secret_name(conn);
    let Ok(Existing::Owned(mut secret)) = existing(ctx, conn, &ns, &name).await else {
        return Ok(None);
    };
    let api = Api::<Secret>::namespaced(ctx.client.clone(), &ns);
    let generated = conn.spec.role.password_secret_ref.is_none()
        && secret
            .data
            .as_ref()
            .and_then(|d| d.get("password"))
            .is_some_and(|p| !p.0.is_empty());
    if retain && generated {
        secret.metadata.owner_references = None;
        secret
            .annotations_mut()
            .insert(RETAINED_FROM.to_owned(), conn.uid().unwrap_or_default());
        api.replace(&name, &PostParams::default(), &secret).await?;
        return Ok(Some(name));
    }
    let precondition = DeleteParams {
        preconditions: Some(Preconditions {
            uid: secret.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &precondition).await {
        Ok(_) | Err(kube::Error::Api(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Revoke or Delete on the server, with the admin credentials, for a role this connection
/// owns.
async fn on_server(
    conn: &DatabaseConnection,
    ctx: &Context,
    policy: DeletionPolicy,
) -> Result<String, Error> {
    let role_name = conn.spec.role.name.clone();
    let role_ident = ident(&role_name)?;
    let resolved = resolve(ctx, conn, Purpose::Cleanup).await?;
    let Some((user, password)) = resolved.admin.clone() else {
        return Ok(format!(
            "role {role_ident} left as it was: no admin credentials, dbconn changed nothing"
        ));
    };
    let mut admin = resolved
        .admin_to(&resolved.base.database, &user, &password)
        .await?;
    // Authorize: the marker decides.
    let state = role::inspect(&admin.client, &role_name)
        .await
        .map_err(|e| Error::sql("reading the role", e))?;
    let ours = state.as_ref().and_then(|s| {
        let m = Marker::parse(&s.comment)?;
        (m.uid == me(conn).uid && !s.privileged)
            .then(|| (m.origin, role::unmarked_comment(&s.comment).to_owned()))
    });
    match undo(policy, ours, &role_ident) {
        Undo::Nothing(note) => Ok(note),
        Undo::Revoke { release } => {
            let n = super::apply::set_privileges(
                &mut admin.client,
                &role_name,
                &role_ident,
                &me(conn).uid,
                &BTreeSet::new(),
            )
            .await?;
            if let Some(previous) = &release {
                let previous = Some(previous.as_str()).filter(|p| !p.is_empty());
                admin
                    .client
                    .batch_execute(&role::comment_sql(&role_ident, previous))
                    .await
                    .map_err(|e| Error::sql("releasing the role", e))?;
            }
            Ok(format!(
                "{n} privileges of role {role_ident} revoked; the role is kept (deletionPolicy {policy:?}{})",
                if release.is_some() {
                    ", and released: it was adopted, not created, by this DatabaseConnection"
                } else {
                    ""
                }
            ))
        }
        Undo::Drop => {
            // The alternate login of rotation without the pooler goes first: it is a member
            // of the role.
            let alt_name = crate::operator::rotation::alternate(&role_name);
            let alt = role::inspect(&admin.client, &alt_name)
                .await
                .map_err(|e| Error::sql("reading the alternate login role", e))?;
            let alt_ours = alt.is_some_and(|s| {
                !s.privileged && Marker::parse(&s.comment).is_some_and(|m| m.uid == me(conn).uid)
            });
            let mut notes = Vec::new();
            if alt_ours {
                let alt_ident = ident(&alt_name)?;
                let creds = (user.as_str(), password.as_str());
                notes.push(
                    drop_role(&resolved, &mut admin.client, creds, &alt_name, &alt_ident).await?,
                );
            }
            let creds = (user.as_str(), password.as_str());
            notes.insert(
                0,
                drop_role(&resolved, &mut admin.client, creds, &role_name, &role_ident).await?,
            );
            Ok(notes.join("; "))
        }
    }
}

async fn drop_role(
    resolved: &Resolved,
    admin: &mut Client,
    (user, password): (&str, &str),
    role_name: &str,
    role_ident: &Ident,
) -> Result<String, Error> {
    let plan = role::drop_plan(role_ident);
    admin
        .batch_execute(&plan.stop_logins)
        .await
        .map_err(|e| Error::sql("disabling the role's logins", e))?;
    // A CREATEROLE admin that is not a superuser needs the role's privileges to end its
    // sessions (PostgreSQL 16+) and drop what it owns.
    let member: bool = admin
        .query_one(plan.is_member, &[&role_name])
        .await
        .map_err(|e| Error::sql("checking role membership", e))?
        .get(0);
    if !member {
        admin
            .batch_execute(&plan.become_member)
            .await
            .map_err(|e| Error::sql("granting the role to the admin", e))?;
    }
    let ended: i64 = admin
        .query_one(plan.terminate_sessions, &[&role_name])
        .await
        .map_err(|e| Error::sql("ending the role's sessions", e))?
        .get(0);
    let mut databases: BTreeSet<String> = admin
        .query(plan.databases_with_objects, &[&role_name])
        .await
        .map_err(|e| Error::sql("finding the role's objects", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    databases.insert(resolved.base.database.clone());
    let mut blockers = Vec::new();
    for db in &databases {
        let mut other;
        let client: &mut Client = if *db == resolved.base.database {
            &mut *admin
        } else {
            other = resolved.admin_to(db, user, password).await?;
            &mut other.client
        };
        client
            .batch_execute(&plan.disown)
            .await
            .map_err(|e| match e.as_db_error() {
                Some(err) => Error::DropBlocked(format!(
                    "DROP OWNED BY {role_ident} in database {db} failed: {}{}",
                    err.message(),
                    err.detail().map(|d| format!(": {d}")).unwrap_or_default(),
                )),
                None => Error::sql("dropping the role's objects", e),
            })?;
        blockers.extend(revoke_as_grantors(client, role_name, role_ident, db).await?);
    }
    if !blockers.is_empty() {
        return Err(Error::DropBlocked(format!(
            "role {role_ident} still holds privileges that only their grantors can revoke, and the admin cannot act as them: {}. Revoke them as those roles (or make the admin a member of them); deletion then finishes",
            blockers.join("; ")
        )));
    }
    admin
        .batch_execute(&plan.drop)
        .await
        .map_err(|e| match e.as_db_error() {
            Some(db) => Error::DropBlocked(format!(
                "DROP ROLE {role_ident} failed: {}{}",
                db.message(),
                db.detail().map(|d| format!(": {d}")).unwrap_or_default()
            )),
            None => Error::sql("dropping the role", e),
        })?;
    Ok(format!(
        "role {role_ident} dropped (deletionPolicy Delete): {ended} sessions ended, what it owned in {} dropped with it",
        databases.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

/// Privileges other roles granted to the role outlive DROP OWNED run by a non-owner admin;
/// they are revoked as their grantor where the admin can act as it. Returns those it cannot,
/// as `SELECT on TABLE "s"."t" granted by "migrator" (database d)`.
async fn revoke_as_grantors(
    client: &mut Client,
    role_name: &str,
    role_ident: &Ident,
    database: &str,
) -> Result<Vec<String>, Error> {
    let read = |e: privileges::CurrentError| Error::Sql {
        step: "reading the role's remaining privileges",
        message: e.to_string(),
    };
    let left = privileges::entries(&*client, role_name, privileges::Scope::All)
        .await
        .map_err(read)?;
    let mut blockers = Vec::new();
    for entry in left {
        let grantor = ident(&entry.grantor)?;
        // SET ROLE needs the SET option from PostgreSQL 16 (a CREATEROLE creator holds ADMIN
        // without it), membership before.
        let can: bool = client
            .query_one(
                "SELECT pg_catalog.pg_has_role(CURRENT_USER, $1::pg_catalog.name, CASE WHEN \
                 pg_catalog.current_setting('server_version_num')::pg_catalog.int4 >= 160000 \
                 THEN 'SET' ELSE 'MEMBER' END::pg_catalog.text)",
                &[&entry.grantor],
            )
            .await
            .map_err(|e| Error::sql("checking the grantor", e))?
            .get(0);
        let revoke = privileges::sql(&Change::Revoke(entry.privilege.clone()), role_ident);
        let done = can && {
            let tx = client
                .transaction()
                .await
                .map_err(|e| Error::sql("starting a revoke", e))?;
            let ok = tx
                .batch_execute(&format!("SET LOCAL ROLE {grantor}; {revoke}"))
                .await
                .is_ok();
            if ok {
                tx.commit()
                    .await
                    .map_err(|e| Error::sql("committing a revoke", e))?;
            }
            ok
        };
        if !done {
            blockers.push(format!(
                "{} granted by {grantor} (database {database})",
                entry.privilege
            ));
        }
    }
    Ok(blockers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletion_touches_only_what_the_connection_owns() {
        let r = ident("app").unwrap();
        let created = Some((Origin::Created, String::new()));
        let adopted = Some((Origin::Adopted, "the DBA's note".to_owned()));
        assert!(matches!(
            undo(DeletionPolicy::Retain, created.clone(), &r),
            Undo::Nothing(_)
        ));
        for policy in [DeletionPolicy::Revoke, DeletionPolicy::Delete] {
            let Undo::Nothing(note) = undo(policy, None, &r) else {
                panic!("a role that is not ours is left alone");
            };
            assert!(
                note.contains("not managed by this DatabaseConnection"),
                "{note}"
            );
        }
        assert_eq!(
            undo(DeletionPolicy::Delete, created.clone(), &r),
            Undo::Drop
        );
        assert_eq!(
            undo(DeletionPolicy::Revoke, created, &r),
            Undo::Revoke { release: None }
        );
        assert_eq!(
            undo(DeletionPolicy::Delete, adopted, &r),
            Undo::Revoke {
                release: Some("the DBA's note".into())
            }
        );
    }
}
