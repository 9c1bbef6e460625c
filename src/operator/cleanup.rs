//! Deleting a DatabaseConnection, by its deletionPolicy: Retain leaves the role and its
//! privileges, Revoke takes back every privilege dbconn manages for it, Delete ends its
//! sessions, hands what it owns to the admin in every database and drops it. The Secret is
//! deleted in every case. Until the server has done its part, the finalizer stays and Ready
//! says why; a connection deleted while its server is down finishes when it returns.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::DeleteParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::reconcile::{owned_secret, publish, report_deletion, set_privileges};
use super::resolve::{Resolved, resolve};
use super::{Context, Error};
use crate::api::{DatabaseConnection, DeletionPolicy};
use crate::postgres::privileges;
use crate::postgres::quote::{Ident, ident};
use crate::postgres::role;

/// The finalizer dbconn puts on every DatabaseConnection.
pub const FINALIZER: &str = "dbconn.io/cleanup";
/// `"true"` on a DatabaseConnection: delete it without touching the server (for when the
/// server or its credentials are gone for good).
pub const SKIP_CLEANUP: &str = "dbconn.io/skip-cleanup";

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
        DeletionPolicy::Revoke | DeletionPolicy::Delete => on_server(&conn, &ctx, policy).await,
    };
    let note = match done {
        Ok(note) => note,
        Err(e) => {
            let message = format!(
                "deletionPolicy {policy:?} cannot finish yet: {e} (retrying; to delete without touching the server, annotate {SKIP_CLEANUP}=true)"
            );
            if let Err(status) = report_deletion(&conn, &ctx, "DeletionBlocked", message).await {
                tracing::warn!(error = %status, "reporting a blocked deletion");
            }
            return Err(e);
        }
    };
    let ns = conn.namespace().unwrap_or_default();
    let name = conn
        .spec
        .secret
        .name
        .clone()
        .unwrap_or_else(|| conn.name_any());
    // Kubernetes' garbage collector would delete it through the owner reference too; doing
    // it here makes it immediate and independent of the collector.
    if let Ok(Some(_)) = owned_secret(&conn, &ctx, &ns, &name).await {
        match Api::<Secret>::namespaced(ctx.client.clone(), &ns)
            .delete(&name, &DeleteParams::default())
            .await
        {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!(connection = %conn.name_any(), namespace = %ns, "{note}");
    publish(&conn, &ctx, EventType::Normal, "Deleted", note).await;
    Ok(Action::await_change())
}

/// Revoke or Delete on the server, with the admin credentials.
async fn on_server(
    conn: &DatabaseConnection,
    ctx: &Context,
    policy: DeletionPolicy,
) -> Result<String, Error> {
    let role_name = conn.spec.role.name.clone();
    let role_ident = ident(&role_name)?;
    let resolved = resolve(&ctx.client, conn, &ctx.settings).await?;
    let Some((user, password)) = resolved.admin.clone() else {
        // Validate-only: dbconn never granted or created anything.
        return Ok(format!(
            "role {role_ident} left as it was: no admin credentials, dbconn changed nothing"
        ));
    };
    let mut admin = resolved.login(&user, &password).await?;
    let Some(state) = role::inspect(&admin.client, &role_name)
        .await
        .map_err(|e| Error::sql("reading the role", e))?
    else {
        return Ok(format!("role {role_ident} no longer exists"));
    };
    if state.privileged {
        return Ok(format!(
            "role {role_ident} is privileged: dbconn leaves it alone"
        ));
    }
    // Only a role this connection created is dropped; an adopted one loses its grants.
    let ours = state.comment == role::marker(&conn.uid().unwrap_or_default());
    if policy == DeletionPolicy::Revoke || !ours {
        let catalog = privileges::catalog(&admin.client)
            .await
            .map_err(|e| Error::sql("reading the catalog", e))?;
        let n = set_privileges(
            &mut admin.client,
            &catalog,
            &role_name,
            &role_ident,
            &BTreeSet::new(),
        )
        .await?;
        return Ok(format!(
            "{n} privileges of role {role_ident} revoked; the role is kept (deletionPolicy {policy:?}{})",
            if ours {
                ""
            } else {
                ", and the role was not created by this DatabaseConnection"
            }
        ));
    }
    drop_role(
        &resolved,
        &admin.client,
        (&user, &password),
        &role_name,
        &role_ident,
    )
    .await
}

async fn drop_role(
    resolved: &Resolved,
    admin: &tokio_postgres::Client,
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
    // sessions (PostgreSQL 16+), hand its objects over and drop them.
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
    for db in &databases {
        let other;
        let client = if *db == resolved.base.database {
            admin
        } else {
            other = resolved.login_to(db, user, password).await?;
            &other.client
        };
        client
            .batch_execute(&plan.disown)
            .await
            .map_err(|e| Error::sql("reassigning the role's objects", e))?;
    }
    admin
        .batch_execute(&plan.drop)
        .await
        .map_err(|e| Error::sql("dropping the role", e))?;
    Ok(format!(
        "role {role_ident} dropped (deletionPolicy Delete): {ended} sessions ended, objects in {} reassigned to {user}",
        databases.into_iter().collect::<Vec<_>>().join(", ")
    ))
}
