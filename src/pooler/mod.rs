//! `dbconn pooler`: the per-pod sidecar. Listens on loopback, authenticates clients against
//! the connection Secret's password, and shares a few warm (TLS) server connections among
//! them per transaction or per session. Watches the mounted Secret for new credentials,
//! serves `/healthz`, `/readyz` and `/metrics`, and on SIGTERM stops accepting, lets busy
//! clients finish for a grace period, then exits.

pub mod cli;
mod client;
pub mod config;
pub mod limits;
mod metrics;
mod pool;
pub mod prepared;
mod server;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http::{Reply, Routes, serve};
pub use config::{ClientAuth, ConfigError, Mode, Overrides, Settings, Upstream};
use metrics::Metrics;
use pool::{Credentials, Pool};

/// Runs the pooler until SIGTERM/SIGINT and the grace period are over.
pub async fn run(
    settings: Settings,
    upstream: Upstream,
    overrides: Overrides,
) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let verifier = config::client_verifier(&upstream, &settings)?;
    let metrics = Arc::new(Metrics::default());
    let pool = Arc::new(Pool::new(
        settings.clone(),
        Credentials {
            upstream: Arc::new(upstream),
            verifier,
            generation: 0,
        },
        metrics.clone(),
    ));
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", settings.listen))?;
    let http = TcpListener::bind(settings.http)
        .await
        .map_err(|e| anyhow::anyhow!("--http-addr {}: {e}", settings.http))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        http = %http.local_addr()?,
        mode = ?settings.mode,
        pool_size = settings.pool_size,
        "dbconn pooler started"
    );
    let http = tokio::spawn(serve(http, routes(pool.clone())));
    let maintenance = tokio::spawn(maintain(pool.clone(), overrides));

    // Every client task holds a receiver: when all are gone, the drain is over.
    let (stop, stopping) = watch::channel(false);
    let max_clients = Arc::new(tokio::sync::Semaphore::new(settings.max_clients));
    let shutdown = crate::shutdown::signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let socket = match accepted {
                    Ok((socket, _)) => socket,
                    Err(e) => {
                        // Out of file descriptors, say: do not spin.
                        tracing::warn!(error = %e, "accepting a client");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let pool = pool.clone();
                let stopping = stopping.clone();
                match max_clients.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(async move {
                            client::serve(socket, pool, stopping).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        tokio::spawn(client::refuse(socket, pool, "53300", "too many clients: max_clients reached"));
                    }
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drop(stopping);
    let _ = stop.send(true);
    tracing::info!(grace = ?settings.shutdown_grace, "draining clients");
    let drained = tokio::time::timeout(settings.shutdown_grace, stop.closed()).await;
    if drained.is_err() {
        tracing::warn!("grace period over with clients still busy");
    }
    maintenance.abort();
    http.abort();
    tracing::info!("dbconn pooler stopped");
    Ok(())
}

fn routes(pool: Arc<Pool>) -> Routes {
    Arc::new(move |path: &str| match path {
        "/healthz" => Reply::text(200, "ok\n"),
        // Ready once a login upstream has worked: the native sidecar's startup probe, so
        // application containers start only when the server can be reached.
        "/readyz" if pool.is_ready() => Reply::text(200, "ok\n"),
        "/readyz" => Reply::text(503, "cannot log in to the server yet\n"),
        "/metrics" => {
            pool.refresh_gauges();
            pool.metrics.reply()
        }
        _ => Reply::not_found(),
    })
}

/// Every second: keep the pool within its limits and warm; every few seconds, reload the
/// Secret's files when they changed.
async fn maintain(pool: Arc<Pool>, overrides: Overrides) {
    let mut last = pool
        .settings
        .secret_dir
        .as_deref()
        .and_then(|d| config::read_secret_dir(d).ok());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        // Every second, or at once for the console's RELOAD (which reads the files even
        // when they look unchanged).
        tokio::select! {
            _ = tick.tick() => {}
            () = pool.reload.notified() => last = None,
        }
        pool.maintain().await;
        let Some(dir) = pool.settings.secret_dir.as_deref() else {
            continue;
        };
        let Ok(files) = config::read_secret_dir(dir) else {
            continue;
        };
        if last.as_ref() == Some(&files) {
            continue;
        }
        match config::upstream(&files, &overrides).and_then(|u| {
            let v = config::client_verifier(&u, &pool.settings)?;
            Ok((u, v))
        }) {
            Ok((upstream, verifier)) => {
                tracing::info!("the Secret changed: new server connections use its values");
                pool.replace_credentials(upstream, verifier);
                last = Some(files);
            }
            Err(e) => {
                tracing::error!(error = %e, "the changed Secret is unusable; keeping the previous values")
            }
        }
    }
}
