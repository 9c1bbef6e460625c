//! Stage 6, report: status (conditions merged so lastTransitionTime moves only on a change)
//! and Events (on transitions of Ready, not on every reconcile).

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use tokio_postgres::Client;

use super::Failed;
use super::apply::MANAGER;
use crate::api::{
    ConnectionBudget, DatabaseConnection, DatabaseConnectionStatus, PrivilegeSummary,
    RotationStatus,
};
use crate::operator::budget::{self, CONNECTION_BUDGET, ServerLimits};
use crate::operator::resolve::Resolved;
use crate::operator::status::{self, Cond, READY, SERVER_REACHABLE};
use crate::operator::{Context, Error};
use crate::postgres::Session;

/// How long to wait before checking again when privileges are missing.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// What one run learned, for status.
#[derive(Default)]
pub struct Report {
    pub done: Vec<Cond>,
    pub server: Option<String>,
    pub version: Option<String>,
    pub secret_name: Option<String>,
    pub privileges: Option<PrivilegeSummary>,
    /// max_connections and the reserved slots, read at the admin login.
    pub server_limits: Option<ServerLimits>,
    /// Password rotation, when spec.role.rotation is set.
    pub rotation: Option<RotationStatus>,
    /// Look again this soon (a staged password to switch, a rotation period due).
    pub requeue: Option<std::time::Duration>,
}

impl Report {
    /// Records the server reached: its version, and how (TLS or not, sslmode).
    pub async fn connected(&mut self, resolved: &Resolved, s: &Session) {
        self.version = server_version(&s.client).await;
        self.server_limits = server_limits(&s.client).await;
        self.done.push(Cond::ok(
            SERVER_REACHABLE,
            "Connected",
            format!(
                "PostgreSQL {} at {} over {} (sslmode {})",
                self.version.as_deref().unwrap_or("?"),
                resolved.label,
                if s.tls { "TLS" } else { "plain TCP" },
                resolved.base.sslmode.as_str()
            ),
        ));
    }
}

async fn server_version(client: &Client) -> Option<String> {
    client
        .query_one("SHOW server_version", &[])
        .await
        .ok()
        .map(|r| r.get::<_, String>(0))
}

/// max_connections and the slots reserved for superusers and pg_use_reserved_connections
/// (PostgreSQL 16+; absent before), PostgreSQL docs 19.3.1.
async fn server_limits(client: &Client) -> Option<ServerLimits> {
    let row = client
        .query_one(
            "SELECT pg_catalog.current_setting('max_connections')::pg_catalog.int8, \
             pg_catalog.current_setting('superuser_reserved_connections')::pg_catalog.int8 \
             + coalesce(pg_catalog.current_setting('reserved_connections', true)::pg_catalog.int8, 0)",
            &[],
        )
        .await
        .ok()?;
    Some(ServerLimits {
        max_connections: row.get(0),
        reserved: row.get(1),
    })
}

/// The connection budget of `conn` from what this run read and the operator's caches.
fn budget(conn: &DatabaseConnection, ctx: &Context, r: &Report) -> (ConnectionBudget, Cond) {
    let spec = &conn.spec;
    let (ns, name, uid) = (conn.namespace(), conn.name_any(), conn.uid());
    let sidecar = crate::inject::container_name(&name);
    let pods = ctx
        .pods
        .state()
        .iter()
        .filter(|p| p.namespace() == ns && p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .filter(|p| {
            p.spec
                .iter()
                .flat_map(|s| s.init_containers.iter().flatten())
                .any(|c| c.name == sidecar)
        })
        .count();
    let others = match &r.server {
        Some(server) => ctx
            .connections
            .state()
            .iter()
            .filter(|c| c.uid() != uid)
            .filter_map(|c| c.status.as_ref())
            .filter(|s| s.server.as_ref() == Some(server))
            .filter_map(|s| s.budget.as_ref())
            .map(budget::share)
            .sum(),
        None => 0,
    };
    budget::assess(&budget::Inputs {
        pods: i64::try_from(pods).unwrap_or(i64::MAX),
        pool_size: spec
            .pooler
            .enabled
            .then_some(i64::from(spec.pooler.pool_size)),
        declared: spec.max_connections.map(i64::from),
        role_limit: spec
            .role
            .connection_limit
            .filter(|l| *l >= 0)
            .map(i64::from),
        server: r.server_limits,
        others,
    })
}

/// Publishes the run's status and the Event of a Ready transition, and says when to look
/// again.
pub async fn finish(
    conn: &DatabaseConnection,
    ctx: &Context,
    mut report: Report,
    outcome: Result<Cond, Failed>,
) -> Result<Action, Error> {
    let (failure, ready) = match &outcome {
        Ok(ready) => (None, ready.clone()),
        Err(f) => (
            Some(Cond::failed(f.step, f.error.reason(), f.error.to_string())),
            Cond::unknown(READY, ""),
        ),
    };
    let mut wanted = status::pipeline(std::mem::take(&mut report.done), failure, ready);
    let ready_now = wanted.iter().find(|c| c.type_ == READY).cloned();
    ctx.metrics.connection_ready(
        conn.metadata.namespace.as_deref().unwrap_or_default(),
        conn.metadata.name.as_deref().unwrap_or_default(),
        Some(ready_now.as_ref().is_some_and(|c| c.ok == Some(true))),
    );
    let (budget, budget_cond) = budget(conn, ctx, &report);
    let soon = report.requeue;
    wanted.push(budget_cond.clone());
    publish_status(conn, ctx, report, budget, &wanted).await?;
    if let Some(ready) = ready_now {
        announce(conn, ctx, &ready).await;
    }
    warn_budget(conn, ctx, &budget_cond).await;
    match outcome {
        // ±10 %: connections created together do not all re-validate in the same second.
        Ok(ready) if ready.ok == Some(true) => {
            let revalidate = crate::operator::backoff::spread(ctx.settings.revalidate);
            Ok(Action::requeue(soon.map_or(revalidate, |s| {
                revalidate.min(s + std::time::Duration::from_secs(1))
            })))
        }
        Ok(_) => Ok(Action::requeue(RECHECK)),
        Err(f) => Err(*f.error),
    }
}

/// A Warning Event when the budget condition turns NearLimit or BudgetExceeded.
async fn warn_budget(conn: &DatabaseConnection, ctx: &Context, cond: &Cond) {
    if !matches!(cond.reason.as_str(), "NearLimit" | "BudgetExceeded") {
        return;
    }
    let before = conn
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == CONNECTION_BUDGET))
        .map(|c| c.reason.as_str());
    if before != Some(cond.reason.as_str()) {
        publish(
            conn,
            ctx,
            EventType::Warning,
            &cond.reason,
            cond.message.clone(),
        )
        .await;
    }
}

async fn publish_status(
    conn: &DatabaseConnection,
    ctx: &Context,
    r: Report,
    budget: ConnectionBudget,
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
        budget: Some(budget),
        rotation: r.rotation,
    };
    if conn.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let before = conn
        .status
        .as_ref()
        .map(|s| s.uninjected_pods.as_slice())
        .unwrap_or_default();
    let new: Vec<&str> = status
        .uninjected_pods
        .iter()
        .filter(|p| !before.contains(p))
        .map(String::as_str)
        .collect();
    if !new.is_empty() {
        publish(
            conn,
            ctx,
            EventType::Warning,
            "PodsNotInjected",
            format!(
                "pods {} ask for this connection but run without its dbconn sidecar (created while the webhook was unavailable?): delete them to have them injected",
                new.join(", ")
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
pub async fn deletion_blocked(
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

/// Publishes an Event about the connection; a failure to publish is logged, not fatal.
pub async fn publish(
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
pub async fn announce(conn: &DatabaseConnection, ctx: &Context, ready: &Cond) {
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
