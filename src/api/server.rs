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
    printcolumn = r#"{"name": "Reason", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#,
    doc = "A PostgreSQL server that a platform team registers for the cluster: where it is \
           (spec.host, spec.port), how dbconn verifies it (spec.tls: sslmode, CA, client \
           certificate) and administers it (spec.adminSecretRef, a role with CREATEROLE), which \
           namespaces may use it (spec.allowedNamespaces), and what each may ask for there \
           (spec.tenants: databases, role names, schemas). DatabaseConnections name it in \
           spec.serverRef; Secrets it references live in the operator's namespace."
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
    /// What each allowed namespace may use here: databases, role names, schemas, and whether
    /// it may adopt roles dbconn did not create. A namespace gets the union of every rule whose
    /// namespaceSelector matches it, and nothing when none does. Unset or empty: one rule for
    /// every allowed namespace, `{databases: ["{namespace}"], roleNames: ["{namespace}_*"]}`
    /// (a database named after the namespace, roles prefixed with it, no adoption).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tenants: Vec<TenantPolicy>,
}

/// One rule of a DatabaseServer's tenancy policy. Names are exact or patterns: `*` matches any
/// run of characters (also none), `{namespace}` stands for the connection's namespace; anything
/// else matches itself, case-sensitively, as PostgreSQL compares names. Namespace names cannot
/// contain `_`, so `{namespace}_*` never matches another namespace's names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantPolicy {
    /// Namespaces this rule covers (a label selector over the allowed namespaces); unset: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Databases a connection may name in spec.database.
    #[serde(default = "default_databases")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub databases: Vec<String>,
    /// Role names a connection may create, adopt or claim (spec.role.name), and name in
    /// spec.defaultPrivilegesFor.
    #[serde(default = "default_role_names")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub role_names: Vec<String>,
    /// Schemas a connection may be granted privileges on (spec.schemas, grants[].schema).
    #[serde(default = "default_schemas")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub schemas: Vec<String>,
    /// Whether a connection may take over an existing role that dbconn did not create (one
    /// without dbconn's marker). It must name the role's current password in
    /// role.passwordSecretRef, and dbconn logs in with it before it changes anything.
    #[serde(default)]
    pub adopt_existing_roles: bool,
}

impl Default for TenantPolicy {
    fn default() -> Self {
        Self {
            namespace_selector: None,
            databases: default_databases(),
            role_names: default_role_names(),
            schemas: default_schemas(),
            adopt_existing_roles: false,
        }
    }
}

fn default_databases() -> Vec<String> {
    vec!["{namespace}".into()]
}

fn default_role_names() -> Vec<String> {
    vec!["{namespace}_*".into()]
}

fn default_schemas() -> Vec<String> {
    vec!["*".into()]
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
