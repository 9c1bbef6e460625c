//! The DatabaseConnection reconcile as named stages, one file each:
//!
//! 1. `dereference` (Kubernetes reads): the server, its credentials and policy, the Secrets;
//! 2. `authorize`: the policy (pure, before any SQL), then the claim on the role (reads only);
//! 3. `plan` (pure): the role, its privileges and the Secret, as data;
//! 4. `apply`: the Secret, then the role, its attributes and privileges;
//! 5. `prove`: log in as the role and check each privilege;
//! 6. `report`: status and Events.
//!
//! `cleanup` runs the same stages when a connection is deleted.

mod apply;
mod authorize;
pub use apply::MANAGER;
pub mod cleanup;
mod dereference;
mod plan;
mod prove;
mod report;

use std::sync::Arc;

use kube::runtime::controller::Action;

use super::resolve::Purpose;
use super::status::{AUTHORIZED, Cond, GRANTS_APPLIED, ROLE_READY, SECRET_READY, SERVER_REACHABLE};
use super::{Context, Error};
use crate::api::DatabaseConnection;
use crate::postgres::privileges;

use report::Report;

/// A stage failed: which condition it belongs to, and why.
pub struct Failed {
    step: &'static str,
    error: Box<Error>,
}

fn at<E: Into<Error>>(step: &'static str) -> impl FnOnce(E) -> Failed {
    move |e| Failed {
        step,
        error: Box::new(e.into()),
    }
}

/// The longest one reconcile (or cleanup) may take: a server that accepts a connection and
/// then stops answering (a tenant's tarpit) must not hold a reconcile slot for ever.
pub const RECONCILE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// Reconciles one DatabaseConnection.
pub async fn reconcile(conn: Arc<DatabaseConnection>, ctx: Arc<Context>) -> Result<Action, Error> {
    let mut report = Report::default();
    let outcome = tokio::time::timeout(RECONCILE_TIMEOUT, run(&conn, &ctx, &mut report))
        .await
        .unwrap_or_else(|_| Err(at(SERVER_REACHABLE)(Error::Stalled(RECONCILE_TIMEOUT))));
    report::finish(&conn, &ctx, report, outcome).await
}

async fn run(conn: &DatabaseConnection, ctx: &Context, r: &mut Report) -> Result<Cond, Failed> {
    // Until this run reaches a server, status keeps the one it had.
    r.server = conn.status.as_ref().and_then(|s| s.server.clone());
    let refs = dereference::refs(ctx, conn, Purpose::Reconcile).await?;
    let mut switched = rotation(conn, &refs, r);
    authorize::same_server(conn, &refs)?;
    r.server = Some(refs.server.label.clone());
    authorize::policy(&refs, &conn.spec)?;
    let Some((user, password)) = refs.server.admin.clone() else {
        return validate_only(conn, ctx, &refs, r).await;
    };
    let mut admin = ctx
        .guarded(
            &refs.server.label,
            ctx.sessions.get(refs.server.admin_endpoint(
                &refs.server.base.database,
                &user,
                &password,
            )),
        )
        .await
        .map_err(at(SERVER_REACHABLE))?;
    r.connected(&refs.server, &admin).await;
    let facts = authorize::claim(ctx, conn, &refs, &admin.client).await?;
    r.done
        .push(Cond::ok(AUTHORIZED, "Allowed", allowed(&refs, &facts)));
    // Only a connection allowed to act gets the finalizer that makes deletion act too.
    super::set_finalizer(ctx, conn, true)
        .await
        .map_err(at(AUTHORIZED))?;

    let plan = plan::plan(conn, &refs, &facts)?;
    apply::secret(ctx, conn, &refs, &plan).await?;
    if let Some(switched) = switched.take() {
        // The Secret names the new login now: the rotation happened (a failure after this
        // is repaired by the next run's login, never by another switch).
        r.rotation = Some(switched);
    }
    r.secret_name = Some(refs.secret_name.clone());
    r.done.push(secret_ready(&refs));
    apply::role(ctx, &refs, &facts, &plan, &admin.client).await?;
    let grants = apply::grants(ctx, conn, &mut admin.client, &plan).await?;
    r.done.push(Cond::ok(
        GRANTS_APPLIED,
        "Converged",
        format!(
            "{} privileges wanted, {grants} GRANT/REVOKE statements sent",
            plan.privileges.privileges.len()
        ),
    ));
    let app = apply::login(&refs, &plan, &admin.client).await?;
    r.done.push(logged_in(&plan));
    let ready = prove::prove(&app.client, &plan, r).await?;
    // Every statement on it succeeded: the next reconcile may use it.
    ctx.sessions.put_back(admin);
    if plan.alternate.is_some() && refs.password.rotation == super::rotation::Step::Switch {
        rollout(conn, ctx, &refs.namespace).await;
    }
    Ok(ready)
}

/// After a rotation without the pooler, restarts the Deployments that opted in (rollout.rs);
/// an Event says which, or why not.
async fn rollout(conn: &DatabaseConnection, ctx: &Context, namespace: &str) {
    use kube::runtime::events::EventType;
    let name = conn.metadata.name.as_deref().unwrap_or_default();
    let at = k8s_openapi::jiff::Timestamp::now().to_string();
    match super::rollout::restart(&ctx.client, namespace, name, &at).await {
        Ok(restarted) if restarted.is_empty() => {}
        Ok(restarted) => {
            let note = format!(
                "password rotated; restarted Deployments {} ({} annotation)",
                restarted.join(", "),
                super::rollout::ROLLOUT_ON_ROTATION
            );
            report::publish(conn, ctx, EventType::Normal, "RolledOut", note).await;
        }
        Err(e) => {
            let note = format!(
                "password rotated, but restarting the Deployments annotated {} failed: {e}; pods started before keep the old login until the next rotation",
                super::rollout::ROLLOUT_ON_ROTATION
            );
            report::publish(conn, ctx, EventType::Warning, "RolloutFailed", note).await;
        }
    }
}

/// What this run does about password rotation, for status and the next look. A switch
/// without the pooler is returned instead, to be recorded once the Secret names the new
/// login: recorded before, a run that fails first would lose the rotation.
fn rotation(
    conn: &DatabaseConnection,
    refs: &dereference::Refs,
    r: &mut Report,
) -> Option<crate::api::RotationStatus> {
    use super::rotation::{ROTATE, Step, status_after};
    conn.spec.role.rotation.as_ref()?;
    let step = &refs.password.rotation;
    let before = conn.status.as_ref().and_then(|s| s.rotation.clone());
    let after = Some(status_after(
        step,
        conn.status.as_ref().and_then(|s| s.rotation.as_ref()),
        conn.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ROTATE))
            .map(String::as_str),
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let deferred = refs.password.alternate.is_some() && *step == Step::Switch;
    r.rotation = if deferred { before } else { after.clone() };
    r.requeue = match step {
        Step::Stage(d) | Step::Wait(d) | Step::Keep(Some(d)) => Some(*d),
        Step::Keep(None) | Step::Switch => None,
    };
    if matches!(step, Step::Stage(_) | Step::Switch) {
        tracing::info!(
            connection = %conn.metadata.name.as_deref().unwrap_or_default(),
            ?step,
            "password rotation"
        );
    }
    after.filter(|_| deferred)
}

/// Without admin credentials dbconn only validates: it logs in as the role with its own
/// password (or only its client certificate) and checks its privileges; it grants nothing.
async fn validate_only(
    conn: &DatabaseConnection,
    ctx: &Context,
    refs: &dereference::Refs,
    r: &mut Report,
) -> Result<Cond, Failed> {
    if conn.spec.role.password_secret_ref.is_none() && refs.server.client_cert.is_none() {
        return Err(at(ROLE_READY)(Error::NoCredentials));
    }
    let app = ctx
        .guarded(
            &refs.server.label,
            refs.server
                .login(&conn.spec.role.name, &refs.password.value),
        )
        .await
        .map_err(at(SERVER_REACHABLE))?;
    r.connected(&refs.server, &app).await;
    r.done.push(Cond::ok(
        AUTHORIZED,
        "ValidateOnly",
        "no admin credentials: dbconn changes nothing on the server",
    ));
    let catalog = privileges::catalog(&app.client, &privileges::named_schemas(&conn.spec))
        .await
        .map_err(at(GRANTS_APPLIED))?;
    let plan = plan::validate_only(conn, refs, &catalog)?;
    r.done.push(logged_in(&plan));
    r.done.push(Cond::ok(
        GRANTS_APPLIED,
        "ValidateOnly",
        "no admin credentials: nothing granted, privileges checked only",
    ));
    apply::secret(ctx, conn, refs, &plan).await?;
    r.secret_name = Some(refs.secret_name.clone());
    r.done.push(secret_ready(refs));
    prove::prove(&app.client, &plan, r).await
}

fn allowed(refs: &dereference::Refs, facts: &authorize::Facts) -> String {
    let how = match &facts.claim {
        authorize::Claim::Create => "to be created by this connection",
        authorize::Claim::Owned { .. } => "managed by this connection",
        authorize::Claim::Adopt { .. } => "to be adopted (its password logs in)",
        authorize::Claim::Reclaim { .. } => "left by a deleted connection of this namespace",
    };
    match &refs.server.rules {
        Some(rules) => format!(
            "DatabaseServer {:?} allows namespace {:?} these names; the role is {how}",
            rules.server, rules.namespace
        ),
        None => format!("inline server of this namespace; the role is {how}"),
    }
}

fn secret_ready(refs: &dereference::Refs) -> Cond {
    Cond::ok(
        SECRET_READY,
        "Applied",
        format!("secret {} holds the connection details", refs.secret_name),
    )
}

fn logged_in(plan: &plan::Plan) -> Cond {
    Cond::ok(
        ROLE_READY,
        "LoggedIn",
        if plan.login_name == plan.role_name {
            format!("role {} logs in", plan.role)
        } else {
            format!(
                "role {} logs in through its alternate login {}",
                plan.role, plan.login
            )
        },
    )
}
