//! Stage 4, apply: make the plan true, in the order that lets a crash or a failed login at
//! any point resume cleanly. The Secret first, so the password exists before the role does;
//! then the claim on the role (created and marked in one transaction, or adopted after a
//! login with its password), under an advisory lock on the server's administrative database;
//! then the role's attributes and privileges; then a login as the role.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use tokio_postgres::Client;

use super::authorize::{Claim, Facts};
use super::dereference::{Existing, RETAINED_FROM, Refs};
use super::plan::Plan;
use super::report::publish;
use super::{Failed, at};
use crate::api::DatabaseConnection;
use crate::operator::status::{AUTHORIZED, GRANTS_APPLIED, ROLE_READY, SECRET_READY};
use crate::operator::{Context, Error};
use crate::postgres::privileges;
use crate::postgres::quote::Ident;
use crate::postgres::role::{self, RoleState};
use crate::postgres::{ConnectError, Session};

/// Field manager and `managed-by` label of everything dbconn writes.
pub const MANAGER: &str = "dbconn";

/// Writes the connection's Secret when its data differs (created, updated with the
/// resourceVersion it was read at, or taken over from a Retain deletion). Never touches a
/// Secret that is not the connection's own.
pub async fn secret(
    ctx: &Context,
    conn: &DatabaseConnection,
    refs: &Refs,
    plan: &Plan,
) -> Result<(), Failed> {
    let api = Api::<Secret>::namespaced(ctx.client.clone(), &refs.namespace);
    let data: BTreeMap<String, ByteString> = plan
        .secret
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
        .collect();
    let result = match &refs.secret {
        Existing::Owned(s) if s.data.as_ref() == Some(&data) => return Ok(()),
        Existing::Absent => {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(refs.secret_name.clone()),
                    namespace: Some(refs.namespace.clone()),
                    ..ObjectMeta::default()
                },
                type_: Some("Opaque".to_owned()),
                ..Secret::default()
            };
            api.create(&params(), &owned(conn, secret, data)).await
        }
        Existing::Owned(s) | Existing::Retained(s) => {
            let mut s = s.clone();
            s.annotations_mut().remove(RETAINED_FROM);
            api.replace(&refs.secret_name, &params(), &owned(conn, s, data))
                .await
        }
    };
    result.map_err(at(SECRET_READY))?;
    Ok(())
}

fn params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGER.to_owned()),
        ..PostParams::default()
    }
}

/// `secret` with dbconn's labels, the connection as its controller owner, and `data`.
fn owned(conn: &DatabaseConnection, mut s: Secret, data: BTreeMap<String, ByteString>) -> Secret {
    let labels = s.labels_mut();
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        MANAGER.to_owned(),
    );
    labels.insert("dbconn.io/connection".to_owned(), conn.name_any());
    s.metadata.owner_references = Some(conn.controller_owner_ref(&()).into_iter().collect());
    s.data = Some(data);
    s.string_data = None;
    s
}

/// Makes the claim, then brings an owned role's attributes to the plan. Nothing is sent to
/// a role before it is this connection's.
pub async fn role(
    ctx: &Context,
    refs: &Refs,
    facts: &Facts,
    plan: &Plan,
    admin: &Client,
) -> Result<(), Failed> {
    let current = facts.role.as_ref();
    match &facts.claim {
        Claim::Create => {
            let sql = role::create_sql(
                &plan.role,
                plan.connection_limit,
                &role::verifier(&plan.password),
                &plan.marker.comment(""),
            );
            claimed(ctx, refs, &plan.role_name, None, &sql).await?;
            return alternate(ctx, refs, plan, admin).await;
        }
        Claim::Adopt { previous } | Claim::Reclaim { previous, .. } => {
            // authorize proved the password by logging in as the role.
            let sql = role::comment_sql(&plan.role, Some(&plan.marker.comment(previous)));
            claimed(ctx, refs, &plan.role_name, current, &sql).await?;
        }
        Claim::Owned { remark: true, .. } => {
            // A marker in the older form: the same owner, written as today.
            let sql = role::comment_sql(&plan.role, Some(&plan.marker.comment("")));
            admin
                .batch_execute(&sql)
                .await
                .map_err(|e| at(ROLE_READY)(Error::sql("marking the role", e)))?;
        }
        Claim::Owned { .. } => {}
    }
    if let Some(sql) =
        current.and_then(|s| role::attributes_sql(&plan.role, plan.connection_limit, s))
    {
        ensure_owner(admin, &plan.role_name, &plan.marker.uid)
            .await
            .map_err(at(AUTHORIZED))?;
        admin
            .batch_execute(&sql)
            .await
            .map_err(|e| at(ROLE_READY)(Error::sql("setting the role's attributes", e)))?;
    }
    alternate(ctx, refs, plan, admin).await
}

/// Keeps the alternate login of rotation without the pooler, when the plan has one: created
/// under the claim lock with this connection's marker, then kept a member of the role that
/// starts as it, with the role's connection limit. A role of that name that is not this
/// connection's is never touched.
async fn alternate(ctx: &Context, refs: &Refs, plan: &Plan, admin: &Client) -> Result<(), Failed> {
    let Some((name, alt)) = &plan.alternate else {
        return Ok(());
    };
    let state = role::inspect(admin, name)
        .await
        .map_err(|e| at(AUTHORIZED)(Error::sql("reading the alternate login role", e)))?;
    let marker = role::Marker {
        origin: role::Origin::Created,
        ..plan.marker.clone()
    };
    let Some(state) = state else {
        let sql = role::alternate_create_sql(
            alt,
            &plan.role,
            &plan.role_name,
            plan.connection_limit,
            &marker.comment(&format!(
                "alternate login of role {} for password rotation",
                plan.role
            )),
        );
        return claimed(ctx, refs, name, None, &sql).await;
    };
    let ours = role::Marker::parse(&state.comment).is_some_and(|m| m.uid == marker.uid);
    if !ours || state.privileged {
        return Err(at(AUTHORIZED)(Error::RoleClaimed {
            role: name.clone(),
            owner: "someone else (rotation without the pooler needs role.name + \"_alt\" as its alternate login: drop or rename that role)".into(),
        }));
    }
    let joined: bool = admin
        .query_one(role::ALTERNATE_JOINED, &[name, &plan.role_name])
        .await
        .map_err(|e| at(ROLE_READY)(Error::sql("reading the alternate login role", e)))?
        .get(0);
    let sql: Vec<String> = role::attributes_sql(alt, plan.connection_limit, &state)
        .into_iter()
        .chain((!joined).then(|| role::alternate_join_sql(alt, &plan.role, &plan.role_name)))
        .collect();
    if sql.is_empty() {
        return Ok(());
    }
    ensure_owner(admin, name, &marker.uid)
        .await
        .map_err(at(AUTHORIZED))?;
    admin
        .batch_execute(&sql.join("; "))
        .await
        .map_err(|e| at(ROLE_READY)(Error::sql("setting the alternate login role", e)))
}

/// Runs `sql` (the claim) in one transaction on the administrative database, under the
/// claim lock and only if the role is still as authorize saw it (`expected`); otherwise
/// another connection got there first and the next reconcile decides again.
async fn claimed(
    ctx: &Context,
    refs: &Refs,
    role_name: &str,
    expected: Option<&RoleState>,
    sql: &str,
) -> Result<(), Failed> {
    let fail = |step: &'static str| move |e| at(AUTHORIZED)(Error::sql(step, e));
    let (user, password) = refs.server.admin.clone().unwrap_or_default();
    let mut session = ctx
        .sessions
        .get(
            refs.server
                .admin_endpoint(&refs.server.admin_database, &user, &password),
        )
        .await
        .map_err(at(AUTHORIZED))?;
    let tx = session
        .client
        .transaction()
        .await
        .map_err(fail("starting the claim"))?;
    tx.execute(role::CLAIM_LOCK, &[&role_name])
        .await
        .map_err(fail("taking the claim lock"))?;
    let now = role::inspect(&tx, role_name)
        .await
        .map_err(fail("reading the role"))?;
    if now.as_ref().map(|s| &s.comment) != expected.map(|s| &s.comment) {
        return Err(at(AUTHORIZED)(Error::RoleClaimed {
            role: role_name.to_owned(),
            owner: "another DatabaseConnection, which claimed it at the same moment (retrying)"
                .into(),
        }));
    }
    tx.batch_execute(sql)
        .await
        .map_err(fail("claiming the role"))?;
    tx.commit().await.map_err(fail("committing the claim"))?;
    ctx.sessions.put_back(session);
    tracing::info!(role = %role_name, "role claimed");
    Ok(())
}

/// Converges the role's privileges to the plan; an Event when they had drifted.
pub async fn grants(
    ctx: &Context,
    conn: &DatabaseConnection,
    admin: &mut Client,
    plan: &Plan,
) -> Result<usize, Failed> {
    let changes = set_privileges(
        admin,
        &plan.role_name,
        &plan.role,
        &plan.marker.uid,
        &plan.privileges.privileges,
    )
    .await
    .map_err(at(GRANTS_APPLIED))?;
    let fingerprint = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        plan.privileges.privileges.hash(&mut h);
        h.finish()
    };
    if ctx.converged_again(conn, fingerprint) && changes > 0 {
        // Nothing in the spec changed since the last successful reconcile: someone changed
        // the role's privileges by hand, and they were put back.
        ctx.metrics.drift_repairs.inc();
        let note = format!(
            "privileges of role {} were changed outside dbconn; {changes} GRANT/REVOKE statements restored them",
            plan.role
        );
        publish(conn, ctx, EventType::Warning, "DriftRepaired", note).await;
    }
    Ok(changes)
}

/// GRANT/REVOKE statements sent in one simple Query (a few KiB of text).
const GRANTS_PER_BATCH: usize = 64;

/// Reads the role's ACLs and applies the difference to `desired` in one transaction under an
/// advisory lock keyed by the database, so two operators never interleave. Sends no statement at
/// all when nothing differs. Returns the number of GRANT/REVOKE statements run.
pub async fn set_privileges(
    admin: &mut Client,
    role_name: &str,
    role_ident: &Ident,
    owner_uid: &str,
    desired: &BTreeSet<privileges::Priv>,
) -> Result<usize, Error> {
    let read = |e: privileges::CurrentError| Error::Sql {
        step: "reading privileges",
        message: e.to_string(),
    };
    let current = privileges::current(admin, role_name).await.map_err(read)?;
    if privileges::plan(desired, &current).is_empty() {
        return Ok(0);
    }
    let tx = admin
        .transaction()
        .await
        .map_err(|e| Error::sql("starting the grant transaction", e))?;
    // One lock per database, not per role: GRANTs for different roles on the same schema
    // or default ACL rewrite the same catalog row, and PostgreSQL fails the second with
    // "tuple concurrently updated". The same lock keeps two replicas from interleaving.
    tx.execute(
        "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext(\
         'dbconn:grants:' OPERATOR(pg_catalog.||) pg_catalog.current_database()::pg_catalog.text))",
        &[],
    )
    .await
    .map_err(|e| Error::sql("taking the grant lock", e))?;
    // Under the lock, the role must still be this connection's: nothing is granted to or
    // revoked from a role another connection claimed meanwhile.
    ensure_owner(&tx, role_name, owner_uid).await?;
    // Re-read under the lock: another replica may have converged already.
    let current = privileges::current(&tx, role_name).await.map_err(read)?;
    let plan = privileges::plan(desired, &current);
    // A round trip per batch, not per statement: the lock is held meanwhile.
    for batch in plan.chunks(GRANTS_PER_BATCH) {
        let sql: Vec<String> = batch
            .iter()
            .map(|change| privileges::sql(change, role_ident))
            .collect();
        tx.batch_execute(&sql.join(";\n"))
            .await
            .map_err(|e| Error::sql("applying grants", e))?;
    }
    tx.commit()
        .await
        .map_err(|e| Error::sql("committing grants", e))?;
    tracing::info!(
        role = role_name,
        statements = plan.len(),
        "privileges converged"
    );
    Ok(plan.len())
}

/// Fails unless the role's marker names the connection with UID `uid`.
pub async fn ensure_owner(
    client: &impl tokio_postgres::GenericClient,
    role_name: &str,
    uid: &str,
) -> Result<(), Error> {
    let state = role::inspect(client, role_name)
        .await
        .map_err(|e| Error::sql("reading the role", e))?;
    let marker = state.and_then(|s| role::Marker::parse(&s.comment));
    if marker.is_some_and(|m| m.uid == uid) {
        return Ok(());
    }
    Err(Error::RoleClaimed {
        role: role_name.to_owned(),
        owner: "another DatabaseConnection, which claimed it meanwhile".into(),
    })
}

/// Logs in as the login role the Secret names (the role, or its alternate). It is this
/// connection's by now, so a refused password (a rotation's new one, one generated after its
/// Secret was deleted, or a changed passwordSecretRef) is set, as a verifier, and the login
/// tried again.
pub async fn login(refs: &Refs, plan: &Plan, admin: &Client) -> Result<Session, Failed> {
    match refs.server.login(&plan.login_name, &plan.password).await {
        Err(ConnectError::PasswordRejected(_)) => {
            ensure_owner(admin, &plan.login_name, &plan.marker.uid)
                .await
                .map_err(at(AUTHORIZED))?;
            let sql = role::password_sql(&plan.login, &role::verifier(&plan.password));
            admin
                .batch_execute(&sql)
                .await
                .map_err(|e| at(ROLE_READY)(Error::sql("setting the password", e)))?;
            refs.server
                .login(&plan.login_name, &plan.password)
                .await
                .map_err(at(ROLE_READY))
        }
        other => other.map_err(at(ROLE_READY)),
    }
}
