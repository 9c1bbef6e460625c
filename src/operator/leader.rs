//! Leader election on a coordination.k8s.io Lease (kube-lease-manager): replicas campaign,
//! one runs the controllers, and another takes over within a Lease duration when it dies.
//! A graceful shutdown releases the Lease so a successor starts at once.

use std::time::Duration;

use anyhow::Context as _;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

/// Which Lease, who we are, and how long a silent leader keeps it.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    /// At least 2 seconds; the leader renews it a third of the way before expiry.
    pub duration_seconds: u64,
}

/// Campaigns for the Lease. While held, runs `work()`; when lost, stops it and campaigns
/// again. Returns when `shutdown` resolves, after releasing the Lease.
pub async fn lead<W, Fut>(
    client: &Client,
    namespace: &str,
    identity: &str,
    lease: &LeaseSettings,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
    mut work: W,
    on_change: impl Fn(bool),
) -> anyhow::Result<()>
where
    W: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let duration = lease.duration_seconds.max(2);
    let manager = LeaseManagerBuilder::new(client.clone(), &lease.name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(duration)
        .with_grace((duration / 3).max(1))
        .build()
        .await
        .with_context(|| format!("using Lease {namespace}/{}", lease.name))?;
    let (mut leading, task) = manager.watch().await;
    tracing::info!(lease = %lease.name, identity = %identity, "campaigning for the leader Lease");
    let outcome = loop {
        // Standby until this replica holds the Lease.
        let gained = tokio::select! {
            gained = gained(&mut leading) => gained,
            () = &mut *shutdown => break Ok(()),
        };
        if gained.is_err() {
            break Err(anyhow::anyhow!("the Lease manager stopped"));
        }
        tracing::info!(identity = %identity, "became the leader");
        on_change(true);
        tokio::select! {
            () = work() => break Ok(()),
            () = lost(&mut leading) => {
                tracing::warn!(identity = %identity, "lost the leader Lease; stopping the controllers");
                on_change(false);
                if leading.has_changed().is_err() {
                    // The Lease manager itself stopped: campaigning again would spin.
                    break Err(anyhow::anyhow!("the Lease manager stopped"));
                }
            }
            () = &mut *shutdown => break Ok(()),
        }
    };
    on_change(false);
    drop(leading);
    // Closing the channel makes the manager release the Lease.
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Ok(_))) => tracing::info!("released the leader Lease"),
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "releasing the leader Lease"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the Lease task failed"),
        Err(_) => tracing::warn!("releasing the leader Lease timed out"),
    }
    outcome
}

/// Resolves when the Lease is ours; an error when its manager stopped.
async fn gained(leading: &mut watch::Receiver<bool>) -> Result<(), watch::error::RecvError> {
    while !*leading.borrow_and_update() {
        leading.changed().await?;
    }
    Ok(())
}

/// Resolves when the Lease is no longer ours (or its manager stopped).
async fn lost(leading: &mut watch::Receiver<bool>) {
    loop {
        if leading.changed().await.is_err() || !*leading.borrow() {
            return;
        }
    }
}
