//! The bounds of the pooler's settings, in one place: the `dbconn pooler` flags and the
//! DatabaseConnection's `spec.pooler` fields (checked by the apiserver through the CRD's
//! schema) both use them, so a value the CRD accepts is one the sidecar starts with.

/// Server connections per sidecar (`--pool-size`, `spec.pooler.poolSize`).
pub const POOL_SIZE: (i64, i64) = (1, 1000);
/// Client connections the sidecar accepts at once (`--max-clients`).
pub const MAX_CLIENTS: (i64, i64) = (1, 100_000);
/// Seconds a client may wait for a server connection (`--query-wait-timeout-seconds`).
pub const QUERY_WAIT_TIMEOUT_SECONDS: (i64, i64) = (1, 3600);
/// Seconds an idle server connection is kept (`--server-idle-timeout-seconds`).
pub const SERVER_IDLE_TIMEOUT_SECONDS: (i64, i64) = (1, 86_400);
/// Seconds a server connection lives at most (`--server-lifetime-seconds`).
pub const SERVER_LIFETIME_SECONDS: (i64, i64) = (1, 604_800);
/// Named prepared statements kept per server connection (`--max-prepared-statements`).
pub const MAX_PREPARED_STATEMENTS: (i64, i64) = (0, 100_000);

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    /// The CRD's schema for spec.pooler holds these bounds (the flags' side is tested in
    /// main.rs).
    #[test]
    fn the_crd_schema_has_the_same_bounds() {
        let crd = serde_json::to_value(crate::api::DatabaseConnection::crd()).expect("json");
        let pooler = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["pooler"]["properties"];
        for (field, (min, max)) in [
            ("poolSize", POOL_SIZE),
            ("maxClients", MAX_CLIENTS),
            ("queryWaitTimeoutSeconds", QUERY_WAIT_TIMEOUT_SECONDS),
            ("serverIdleTimeoutSeconds", SERVER_IDLE_TIMEOUT_SECONDS),
            ("serverLifetimeSeconds", SERVER_LIFETIME_SECONDS),
            ("maxPreparedStatements", MAX_PREPARED_STATEMENTS),
        ] {
            assert_eq!(
                (
                    pooler[field]["minimum"].as_f64(),
                    pooler[field]["maximum"].as_f64()
                ),
                (Some(min as f64), Some(max as f64)),
                "{field}: {}",
                pooler[field]
            );
        }
    }
}
