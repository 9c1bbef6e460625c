//! After a rotation without the pooler, restart the workloads that opted in, so their pods
//! take the new login before the next rotation ends the old one (rotation.rs).
//!
//! A Deployment in the connection's namespace opts in with the annotation
//! `dbconn.io/rollout-on-rotation: <connection>[,<connection>…]`. Its pod template gets the
//! annotation `dbconn.io/rotated-at: <RFC 3339 time>`, which starts a rolling update as
//! `kubectl rollout restart` does. Nothing outside the connection's namespace is touched.

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};

/// The Deployment annotation that opts in: a comma-separated list of connection names.
pub const ROLLOUT_ON_ROTATION: &str = "dbconn.io/rollout-on-rotation";
/// The pod template annotation whose change restarts the Deployment.
pub const ROTATED_AT: &str = "dbconn.io/rotated-at";

/// Whether an opt-in annotation's value names `connection`. Pure.
pub fn names(value: &str, connection: &str) -> bool {
    value.split(',').any(|n| n.trim() == connection)
}

/// Restarts the Deployments of `namespace` that opted in for `connection`; their names.
pub async fn restart(
    client: &kube::Client,
    namespace: &str,
    connection: &str,
    at: &str,
) -> Result<Vec<String>, kube::Error> {
    let api = Api::<Deployment>::namespaced(client.clone(), namespace);
    let mut restarted = Vec::new();
    for d in api.list(&ListParams::default()).await? {
        let opted_in = d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ROLLOUT_ON_ROTATION))
            .is_some_and(|v| names(v, connection));
        let Some(name) = d.metadata.name.filter(|_| opted_in) else {
            continue;
        };
        let patch = serde_json::json!({
            "spec": {"template": {"metadata": {"annotations": {ROTATED_AT: at}}}}
        });
        api.patch(
            &name,
            &PatchParams {
                field_manager: Some(super::connection::MANAGER.to_owned()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await?;
        restarted.push(name);
    }
    Ok(restarted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotation_names_connections_exactly() {
        assert!(names("orders", "orders"));
        assert!(names("billing, orders", "orders"));
        assert!(!names("orders-v2", "orders"));
        assert!(!names("", "orders"));
    }
}
