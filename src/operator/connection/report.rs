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
use crate::api::{DatabaseConnection, DatabaseConnectionStatus, PrivilegeSummary};
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
}

impl Report {
    /// Records the server reached: its version, and how (TLS or not, sslmode).
    pub async fn connected(&mut self, resolved: &Resolved, s: &Session) {
        self.version = server_version(&s.client).await;
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
    let wanted = status::pipeline(std::mem::take(&mut report.done), failure, ready);
    let ready_now = wanted.iter().find(|c| c.type_ == READY).cloned();
    publish_status(conn, ctx, report, &wanted).await?;
    if let Some(ready) = ready_now {
        announce(conn, ctx, &ready).await;
    }
    match outcome {
        // ±10 %: connections created together do not all re-validate in the same second.
        Ok(ready) if ready.ok == Some(true) => Ok(Action::requeue(
            crate::operator::backoff::spread(ctx.settings.revalidate),
        )),
        Ok(_) => Ok(Action::requeue(RECHECK)),
        Err(f) => Err(*f.error),
    }
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
