//! `DatabaseServer`: where a PostgreSQL server is and how dbconn may administer it.
//! Cluster-scoped and owned by the platform team.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Conditions, CredentialsSecretRef, TlsSpec};

/// A PostgreSQL server that DatabaseConnections may reference by name.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "dbconn.io",
    version = "v1alpha1",
    kind = "DatabaseServer",
    plural = "databaseservers",
    shortname = "dbserver",
    status = "DatabaseServerStatus",
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "Host", "type": "string", "jsonPath": ".spec.host"}"#,
    printcolumn = r#"{"name": "Version", "type": "string", "jsonPath": ".status.serverVersion"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.tls.sslmode != 'verify-full' || size(self.host) > 0 || has(self.tls.serverName)").message(
    "sslmode verify-full checks the server's name: set host or tls.serverName"
))]
pub struct DatabaseServerSpec {
    /// Host name or IP address of the server.
    #[schemars(length(max = 253))]
    pub host: String,
    /// TCP port of the server.
    #[serde(default = "super::default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Database that administrative sessions connect to.
    #[serde(default = "default_admin_database")]
    #[schemars(length(min = 1, max = 63))]
    pub database: String,
    /// TLS settings; verify-full unless set otherwise.
    #[serde(default)]
    pub tls: TlsSpec,
    /// Secret (in the operator's namespace) with the user name and password of a role that
    /// may create roles and grant privileges. Without it dbconn only validates connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_secret_ref: Option<CredentialsSecretRef>,
    /// Namespaces (by label) whose DatabaseConnections may use this server. Unset: none but
    /// the operator's own namespace; `{}`: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<LabelSelector>,
}

fn default_admin_database() -> String {
    "postgres".into()
}

/// What dbconn last observed of the server.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseServerStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Reachable, AdminReady and Ready conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
    /// The server's version as it reports it (server_version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
}
