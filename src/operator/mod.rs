//! `dbconn operator`: controller wiring for DatabaseConnections and DatabaseServers.

mod error;
mod reconcile;
pub mod resolve;
pub mod secret;
mod server;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

pub use error::Error;

use crate::api::{DatabaseConnection, DatabaseServer};

/// Operator settings, parsed once at start.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the operator runs; DatabaseServer Secrets live here.
    pub namespace: String,
    /// How often a Ready connection is checked again (repairs drift).
    pub revalidate: Duration,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub recorder: Recorder,
}

fn error_policy<K>(_: Arc<K>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(reason = error.reason(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

/// Runs both controllers until SIGTERM/SIGINT.
pub async fn run(client: Client, settings: Settings) -> anyhow::Result<()> {
    let reporter = Reporter {
        controller: "dbconn".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        settings,
    });

    let connections = Controller::new(
        Api::<DatabaseConnection>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = connections.store();
    let by_server = store.clone();
    let connections = connections
        .owns(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default().labels("app.kubernetes.io/managed-by=dbconn"),
        )
        .watches(
            Api::<DatabaseServer>::all(client.clone()),
            watcher::Config::default(),
            move |server| {
                let name = server.name_any();
                by_server
                    .state()
                    .into_iter()
                    .filter(|c| c.spec.server_ref.as_deref() == Some(name.as_str()))
                    .map(|c| ObjectRef::from_obj(&*c))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default(),
            move |secret| {
                let (ns, name) = (secret.namespace(), secret.name_any());
                store
                    .state()
                    .into_iter()
                    .filter(|c| c.namespace() == ns && referenced_secrets(c).any(|s| s == name))
                    .map(|c| ObjectRef::from_obj(&*c))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(reconcile::reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection reconcile");
            }
        });
    let servers = Controller::new(
        Api::<DatabaseServer>::all(client.clone()),
        watcher::Config::default(),
    )
    .shutdown_on_signal()
    .run(server::reconcile, error_policy, ctx)
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "server reconcile");
        }
    });
    tracing::info!("dbconn operator started");
    futures::join!(connections, servers);
    Ok(())
}

/// Names of the Secrets a connection reads in its own namespace.
fn referenced_secrets(c: &DatabaseConnection) -> impl Iterator<Item = &str> {
    let s = c.spec.server.as_ref();
    let tls = s.map(|s| &s.tls);
    [
        s.and_then(|s| s.url_secret_ref.as_ref())
            .map(|r| r.name.as_str()),
        s.and_then(|s| s.admin_secret_ref.as_ref())
            .map(|r| r.name.as_str()),
        tls.and_then(|t| t.ca_secret_ref.as_ref())
            .map(|r| r.name.as_str()),
        tls.and_then(|t| t.client_cert_secret_ref.as_ref())
            .map(|r| r.name.as_str()),
        tls.and_then(|t| t.client_key_secret_ref.as_ref())
            .map(|r| r.name.as_str()),
        c.spec
            .role
            .password_secret_ref
            .as_ref()
            .map(|r| r.name.as_str()),
    ]
    .into_iter()
    .flatten()
}
