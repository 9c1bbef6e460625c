//! The DatabaseConnection reconcile, as a pipeline: resolve references → connect → ensure
//! the role → converge grants → prove by logging in as the role → apply the Secret →
//! report status. Planning steps are pure functions in src/postgres and secret.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use tokio_postgres::Client;

use super::resolve::{Resolved, resolve, secret_key};
use super::secret::{Fields, generate_password, render};
use super::status::{
    self, Cond, GRANTS_APPLIED, READY, ROLE_READY, SECRET_READY, SERVER_REACHABLE,
};
use super::{Context, Error};
use crate::api::{DatabaseConnection, DatabaseConnectionStatus, PrivilegeSummary};
use crate::postgres::privileges::{self, Desired};
use crate::postgres::quote::{Ident, ident};
use crate::postgres::{ConnectError, Session, role};

/// Field manager for everything dbconn applies.
pub const MANAGER: &str = "dbconn";
/// How long to wait before checking again when privileges are missing.
const RECHECK: Duration = Duration::from_secs(30);

/// What one run learned, for status.
#[derive(Default)]
struct Report {
    done: Vec<Cond>,
    server: Option<String>,
    version: Option<String>,
    secret_name: Option<String>,
    privileges: Option<PrivilegeSummary>,
}

/// A step failed: which condition it belongs to, and why.
struct Failed {
    step: &'static str,
    error: Error,
}

fn at<E: Into<Error>>(step: &'static str) -> impl FnOnce(E) -> Failed {
    move |e| Failed {
        step,
        error: e.into(),
    }
}

/// Reconciles one DatabaseConnection.
pub async fn reconcile(conn: Arc<DatabaseConnection>, ctx: Arc<Context>) -> Result<Action, Error> {
    let mut report = Report::default();
    let outcome = run(&conn, &ctx, &mut report).await;
    let (failure, ready) = match &outcome {
        Ok(ready) => (None, ready.clone()),
        Err(f) => (
            Some(Cond::failed(f.step, f.error.reason(), f.error.to_string())),
            Cond::unknown(READY, ""),
        ),
    };
    let wanted = status::pipeline(std::mem::take(&mut report.done), failure, ready);
    let ready_now = wanted.last().cloned();
    publish_status(&conn, &ctx, report, &wanted).await?;
    if let Some(ready) = ready_now {
        announce(&conn, &ctx, &ready).await;
    }
    match outcome {
        // ±10 %: connections created together do not all re-validate in the same second.
        Ok(ready) if ready.ok == Some(true) => Ok(Action::requeue(super::backoff::spread(
            ctx.settings.revalidate,
        ))),
        Ok(_) => Ok(Action::requeue(RECHECK)),
        Err(f) => Err(f.error),
    }
}

async fn run(conn: &DatabaseConnection, ctx: &Context, r: &mut Report) -> Result<Cond, Failed> {
    let spec = &conn.spec;
    let ns = conn.namespace().unwrap_or_default();
    let resolved = resolve(&ctx.client, conn, &ctx.settings)
        .await
        .map_err(at(SERVER_REACHABLE))?;
    r.server = Some(resolved.label.clone());
    let role_name = spec.role.name.clone();
    let role_ident = ident(&role_name).map_err(at(ROLE_READY))?;
    let secret_name = spec.secret.name.clone().unwrap_or_else(|| conn.name_any());
    let existing = owned_secret(conn, ctx, &ns, &secret_name)
        .await
        .map_err(at(SECRET_READY))?;
    let stored_password = existing
        .as_ref()
        .and_then(|s| s.data.as_ref()?.get("password"))
        .is_some_and(|b| !b.0.is_empty());
    let password = match &spec.role.password_secret_ref {
        Some(p) => secret_key(&ctx.client, &ns, &p.name, p.key_or("password"))
            .await
            .map_err(at(ROLE_READY))?,
        // A certificate-only role in validate-only mode has no password.
        None if resolved.admin.is_none() => String::new(),
        // Generated once and kept: rewriting it would restart every pod that reads it.
        None => match existing
            .as_ref()
            .and_then(|s| s.data.as_ref()?.get("password").cloned())
            .filter(|b| !b.0.is_empty())
        {
            Some(b) => String::from_utf8(b.0).unwrap_or_default(),
            None => generate_password().map_err(|e| Failed {
                step: ROLE_READY,
                error: Error::Random(e.to_string()),
            })?,
        },
    };

    let (app, desired) = match &resolved.admin {
        Some((user, admin_password)) => {
            let mut admin = ctx
                .guarded(&resolved.label, resolved.login(user, admin_password))
                .await
                .map_err(at(SERVER_REACHABLE))?;
            r.version = server_version(&admin.client).await;
            r.done.push(Cond::ok(
                SERVER_REACHABLE,
                "Connected",
                connected_message(&resolved, &admin, r.version.as_deref()),
            ));

            let state = role::inspect(&admin.client, &role_name)
                .await
                .map_err(|e| at(ROLE_READY)(Error::sql("reading the role", e)))?;
            if state.is_none() && !spec.role.create {
                return Err(at(ROLE_READY)(Error::RoleMissing(role_name)));
            }
            let marker = role::marker(&conn.uid().unwrap_or_default());
            let claim = RoleClaim {
                state: state.as_ref(),
                marker: &marker,
                admin: user,
                password_given: spec.role.password_secret_ref.is_some(),
                stored_password,
            };
            let ours = claim.check(&role_name).map_err(at(ROLE_READY))?;
            let limit = spec.role.connection_limit.unwrap_or(-1);
            if let Some(sql) = role::ensure_sql(
                &role_ident,
                limit,
                state.as_ref(),
                &role::verifier(&password),
            ) {
                admin
                    .client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| at(ROLE_READY)(Error::sql("creating the role", e)))?;
            }
            let app = match resolved.login(&role_name, &password).await {
                // Only a role dbconn created for this connection gets its password reset.
                Err(ConnectError::PasswordRejected(_)) if ours => {
                    let sql = role::password_sql(&role_ident, &role::verifier(&password));
                    admin
                        .client
                        .batch_execute(&sql)
                        .await
                        .map_err(|e| at(ROLE_READY)(Error::sql("setting the password", e)))?;
                    resolved
                        .login(&role_name, &password)
                        .await
                        .map_err(at(ROLE_READY))?
                }
                other => other.map_err(at(ROLE_READY))?,
            };
            let marked = state.as_ref().is_some_and(|s| s.comment == marker);
            if ours && !marked {
                admin
                    .client
                    .batch_execute(&role::mark_sql(&role_ident, &marker))
                    .await
                    .map_err(|e| at(ROLE_READY)(Error::sql("marking the role", e)))?;
            }
            r.done.push(Cond::ok(
                ROLE_READY,
                "LoggedIn",
                format!("role {role_ident} logs in"),
            ));

            let (desired, changes) = converge(&mut admin.client, spec, &role_name, &role_ident)
                .await
                .map_err(at(GRANTS_APPLIED))?;
            let fingerprint = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                desired.privileges.hash(&mut h);
                h.finish()
            };
            if ctx.converged_again(conn, fingerprint) && changes > 0 {
                // Nothing in the spec changed since the last successful reconcile: someone
                // changed the role's privileges by hand, and they were put back.
                ctx.metrics.drift_repairs.inc();
                let note = format!(
                    "privileges of role {role_ident} were changed outside dbconn; {changes} GRANT/REVOKE statements restored them"
                );
                publish(conn, ctx, EventType::Warning, "DriftRepaired", note).await;
            }
            r.done.push(Cond::ok(
                GRANTS_APPLIED,
                "Converged",
                format!("{} privileges wanted", desired.privileges.len()),
            ));
            (app, desired)
        }
        None => {
            // Validate-only: log in as the role with its own password (or only its client
            // certificate); grant nothing.
            if spec.role.password_secret_ref.is_none() && resolved.client_cert.is_none() {
                return Err(at(ROLE_READY)(Error::NoCredentials));
            }
            let app = resolved
                .login(&role_name, &password)
                .await
                .map_err(at(SERVER_REACHABLE))?;
            r.version = server_version(&app.client).await;
            r.done.push(Cond::ok(
                SERVER_REACHABLE,
                "Connected",
                connected_message(&resolved, &app, r.version.as_deref()),
            ));
            r.done.push(Cond::ok(
                ROLE_READY,
                "LoggedIn",
                format!("role {role_ident} logs in"),
            ));
            let catalog = privileges::catalog(&app.client)
                .await
                .map_err(|e| at(GRANTS_APPLIED)(Error::sql("reading the catalog", e)))?;
            let desired = privileges::desired(spec, &catalog).map_err(at(GRANTS_APPLIED))?;
            r.done.push(Cond::ok(
                GRANTS_APPLIED,
                "ValidateOnly",
                "no admin credentials: nothing granted, privileges checked only",
            ));
            (app, desired)
        }
    };

    let proof = privileges::prove(&app.client, &desired.privileges)
        .await
        .map_err(|e| at(GRANTS_APPLIED)(Error::sql("checking privileges as the role", e)))?;
    r.privileges = Some(PrivilegeSummary {
        granted: proof.granted as i64,
        missing: proof.missing.len() as i64,
        missing_examples: proof
            .missing
            .iter()
            .take(5)
            .map(|p| p.to_string())
            .chain(
                desired
                    .absent
                    .iter()
                    .take(5)
                    .map(|a| format!("{a} does not exist")),
            )
            .collect(),
    });

    let fields = Fields {
        host: resolved.base.host.clone(),
        port: resolved.base.port,
        dbname: spec.database.clone(),
        username: role_name.clone(),
        password,
        sslmode: resolved.base.sslmode,
        ca_pem: resolved.ca_pem.clone(),
        client_cert: resolved.client_cert.clone(),
        pooler_port: spec
            .pooler
            .enabled
            .then(|| u16::try_from(spec.pooler.port).unwrap_or(6432)),
    };
    let data = render(&fields, &spec.secret.template).map_err(at(SECRET_READY))?;
    // Applied only when it differs: every apply costs the apiserver, also when a no-op.
    let current = existing.as_ref().and_then(|s| s.data.as_ref());
    let same = current.is_some_and(|c| {
        c.len() == data.len()
            && data
                .iter()
                .all(|(k, v)| c.get(k).is_some_and(|b| b.0 == v.as_bytes()))
    });
    if !same {
        apply_secret(conn, ctx, &ns, &secret_name, data)
            .await
            .map_err(at(SECRET_READY))?;
    }
    r.secret_name = Some(secret_name.clone());
    r.done.push(Cond::ok(
        SECRET_READY,
        "Applied",
        format!("secret {secret_name} holds the connection details"),
    ));

    if proof.missing.is_empty() && desired.absent.is_empty() {
        return Ok(Cond::ok(
            READY,
            "Ready",
            format!(
                "role {role_ident} has all {} privileges asked for",
                proof.granted
            ),
        ));
    }
    let mut gaps: Vec<String> = proof
        .missing
        .iter()
        .take(3)
        .map(|p| p.to_string())
        .collect();
    gaps.extend(
        desired
            .absent
            .iter()
            .take(3)
            .map(|a| format!("{a} does not exist")),
    );
    Ok(Cond::failed(
        READY,
        "PrivilegesMissing",
        format!(
            "role {role_ident} lacks {} of {} privileges: {}",
            proof.missing.len(),
            proof.missing.len() + proof.granted,
            gaps.join("; ")
        ),
    ))
}

fn connected_message(resolved: &Resolved, s: &Session, version: Option<&str>) -> String {
    format!(
        "PostgreSQL {} at {} over {} (sslmode {})",
        version.unwrap_or("?"),
        resolved.label,
        if s.tls { "TLS" } else { "plain TCP" },
        resolved.base.sslmode.as_str()
    )
}

async fn server_version(client: &Client) -> Option<String> {
    client
        .query_one("SHOW server_version", &[])
        .await
        .ok()
        .map(|r| r.get::<_, String>(0))
}

/// Reads the catalog and makes the role's privileges exactly what the spec asks for.
/// Returns the desired set and how many GRANT/REVOKE statements that took.
async fn converge(
    admin: &mut Client,
    spec: &crate::api::DatabaseConnectionSpec,
    role_name: &str,
    role_ident: &Ident,
) -> Result<(Desired, usize), Error> {
    let catalog = privileges::catalog(admin)
        .await
        .map_err(|e| Error::sql("reading the catalog", e))?;
    let desired = privileges::desired(spec, &catalog)?;
    let changes =
        set_privileges(admin, &catalog, role_name, role_ident, &desired.privileges).await?;
    Ok((desired, changes))
}

/// Reads the role's ACLs and applies the difference to `desired` in one transaction under an
/// advisory lock keyed by the database, so two operators never interleave. Sends no statement at
/// all when nothing differs. Returns the number of GRANT/REVOKE statements run.
pub(super) async fn set_privileges(
    admin: &mut Client,
    catalog: &privileges::Catalog,
    role_name: &str,
    role_ident: &Ident,
    desired: &BTreeSet<privileges::Priv>,
) -> Result<usize, Error> {
    let read = |e: privileges::CurrentError| Error::Sql {
        step: "reading privileges",
        message: e.to_string(),
    };
    let current = privileges::current(admin, role_name, catalog)
        .await
        .map_err(read)?;
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
        "SELECT pg_advisory_xact_lock(hashtext('dbconn:grants:' || current_database()))",
        &[],
    )
    .await
    .map_err(|e| Error::sql("taking the grant lock", e))?;
    // Re-read under the lock: another replica may have converged already.
    let current = privileges::current(&tx, role_name, catalog)
        .await
        .map_err(read)?;
    let plan = privileges::plan(desired, &current);
    for change in &plan {
        tx.batch_execute(&privileges::sql(change, role_ident))
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

/// The connection's Secret if it exists and belongs to this connection; an error if a Secret
/// of that name belongs to someone else (dbconn never overwrites it).
pub(super) async fn owned_secret(
    conn: &DatabaseConnection,
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Option<Secret>, Error> {
    let Some(secret) = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await?
    else {
        return Ok(None);
    };
    let uid = conn.uid().unwrap_or_default();
    if secret.owner_references().iter().any(|o| o.uid == uid) {
        Ok(Some(secret))
    } else {
        Err(Error::SecretConflict(format!("{ns}/{name}")))
    }
}

async fn apply_secret(
    conn: &DatabaseConnection,
    ctx: &Context,
    ns: &str,
    name: &str,
    data: BTreeMap<String, String>,
) -> Result<(), Error> {
    let owner = conn.controller_owner_ref(&()).into_iter().collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.to_owned()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    MANAGER.to_owned(),
                ),
                ("dbconn.io/connection".to_owned(), conn.name_any()),
            ])),
            owner_references: Some(owner),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}

async fn publish_status(
    conn: &DatabaseConnection,
    ctx: &Context,
    r: Report,
    wanted: &[Cond],
) -> Result<(), Error> {
    let current = conn
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let status = DatabaseConnectionStatus {
        observed_generation: conn.metadata.generation,
        conditions: status::merge(current, wanted, conn.metadata.generation, Timestamp::now()),
        server: r.server,
        server_version: r.version,
        secret_name: r.secret_name,
        privileges: r.privileges,
        uninjected_pods: uninjected(conn, ctx),
    };
    if conn.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let before = conn
        .status
        .as_ref()
        .map(|s| s.uninjected_pods.as_slice())
        .unwrap_or_default();
    let new: Vec<&String> = status
        .uninjected_pods
        .iter()
        .filter(|p| !before.contains(p))
        .collect();
    if !new.is_empty() {
        let names: Vec<&str> = new.iter().map(|s| s.as_str()).collect();
        publish(
            conn,
            ctx,
            EventType::Warning,
            "PodsNotInjected",
            format!(
                "pods {} ask for this connection but run without its dbconn sidecar (created while the webhook was unavailable?): delete them to have them injected",
                names.join(", ")
            ),
        )
        .await;
    }
    patch_status(conn, ctx, &status).await
}

/// Pods in the connection's namespace that name it for injection but lack its sidecar.
fn uninjected(conn: &DatabaseConnection, ctx: &Context) -> Vec<String> {
    let (ns, name) = (conn.namespace(), conn.name_any());
    let sidecar = crate::inject::container_name(&name);
    let mut pods: Vec<String> = ctx
        .pods
        .state()
        .iter()
        .filter(|p| p.namespace() == ns && p.metadata.deletion_timestamp.is_none())
        .filter(|p| crate::inject::requested(p).contains(&name))
        .filter(|p| {
            !p.spec
                .iter()
                .flat_map(|s| s.init_containers.iter().flatten())
                .any(|c| c.name == sidecar)
        })
        .map(|p| p.name_any())
        .collect();
    pods.sort();
    pods
}

async fn patch_status(
    conn: &DatabaseConnection,
    ctx: &Context,
    status: &DatabaseConnectionStatus,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": "dbconn.io/v1alpha1",
        "kind": "DatabaseConnection",
        "status": status,
    });
    Api::<DatabaseConnection>::namespaced(
        ctx.client.clone(),
        &conn.namespace().unwrap_or_default(),
    )
    .patch_status(
        &conn.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Deletion cannot finish yet: Ready becomes False with `reason` and the message (other
/// conditions stay), with an Event when that is news.
pub(super) async fn report_deletion(
    conn: &DatabaseConnection,
    ctx: &Context,
    reason: &str,
    message: String,
) -> Result<(), Error> {
    let ready = Cond::failed(READY, reason, message);
    let mut status = conn.status.clone().unwrap_or_default();
    let merged = status::merge(
        &status.conditions,
        std::slice::from_ref(&ready),
        conn.metadata.generation,
        Timestamp::now(),
    );
    status.conditions.retain(|c| c.type_ != READY);
    status.conditions.extend(merged);
    patch_status(conn, ctx, &status).await?;
    announce(conn, ctx, &ready).await;
    Ok(())
}

/// Whether this connection may manage an existing role.
struct RoleClaim<'a> {
    state: Option<&'a role::RoleState>,
    marker: &'a str,
    admin: &'a str,
    /// role.passwordSecretRef is set: whoever wrote it knows the role's password.
    password_given: bool,
    /// This connection's own Secret already holds a generated password.
    stored_password: bool,
}

impl RoleClaim<'_> {
    /// Ok(true) when the role is (or will be) this connection's own: created by it, or
    /// created before with the password its Secret holds. Ok(false) for a role adopted
    /// through passwordSecretRef. An error for roles dbconn must not touch. Pure.
    fn check(&self, name: &str) -> Result<bool, Error> {
        if name.starts_with("pg_") || name == self.admin {
            return Err(Error::RoleNotAllowed(format!(
                "role {name:?} is reserved (pg_*) or the admin itself"
            )));
        }
        let Some(state) = self.state else {
            return Ok(true);
        };
        if state.privileged {
            return Err(Error::RoleNotAllowed(format!(
                "role {name:?} has SUPERUSER, CREATEROLE, REPLICATION or BYPASSRLS; dbconn manages only plain login roles"
            )));
        }
        if state.comment == self.marker || self.stored_password {
            return Ok(state.comment == self.marker || !self.password_given);
        }
        if self.password_given {
            return Ok(false);
        }
        Err(Error::RoleNotManaged(name.to_owned()))
    }
}

/// Publishes an Event about the connection; a failure to publish is logged, not fatal.
pub(super) async fn publish(
    conn: &DatabaseConnection,
    ctx: &Context,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &conn.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing an event failed");
    }
}

/// An Event when Ready changes (status or reason), not on every reconcile.
pub(super) async fn announce(conn: &DatabaseConnection, ctx: &Context, ready: &Cond) {
    let before = conn
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY));
    let status = ready.status();
    if before.is_some_and(|b| b.status == status && b.reason == ready.reason) {
        return;
    }
    let type_ = if ready.ok == Some(true) {
        EventType::Normal
    } else {
        EventType::Warning
    };
    publish(conn, ctx, type_, &ready.reason, ready.message.clone()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(privileged: bool, comment: &str) -> role::RoleState {
        role::RoleState {
            can_login: true,
            connection_limit: -1,
            privileged,
            comment: comment.to_owned(),
        }
    }

    fn claim<'a>(s: Option<&'a role::RoleState>, given: bool, stored: bool) -> RoleClaim<'a> {
        RoleClaim {
            state: s,
            marker: "mine",
            admin: "postgres",
            password_given: given,
            stored_password: stored,
        }
    }

    #[test]
    fn only_roles_this_connection_made_are_its_own() {
        assert!(claim(None, false, false).check("app").unwrap());
        let mine = state(false, "mine");
        assert!(claim(Some(&mine), false, false).check("app").unwrap());
        // Someone else's role: refused, unless its password is given (then adopted, not owned).
        let theirs = state(false, "managed by dbconn for DatabaseConnection other");
        assert!(matches!(
            claim(Some(&theirs), false, false).check("app"),
            Err(Error::RoleNotManaged(_))
        ));
        assert!(!claim(Some(&theirs), true, false).check("app").unwrap());
        // Made before roles were marked, with the password this connection's Secret holds.
        let unmarked = state(false, "");
        assert!(claim(Some(&unmarked), false, true).check("app").unwrap());
    }

    #[test]
    fn privileged_reserved_and_admin_roles_are_never_managed() {
        let su = state(true, "mine");
        for (name, s) in [("app", Some(&su)), ("pg_monitor", None), ("postgres", None)] {
            assert!(matches!(
                claim(s, true, true).check(name),
                Err(Error::RoleNotAllowed(_))
            ));
        }
    }
}
