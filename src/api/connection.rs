//! `DatabaseConnection`: the connection an application needs, in the application's namespace.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Conditions, CredentialsSecretRef, SecretKeyRef, TlsSpec};
use crate::pooler::limits::{
    MAX_CLIENTS, MAX_PREPARED_STATEMENTS, POOL_SIZE, QUERY_WAIT_TIMEOUT_SECONDS,
    SERVER_IDLE_TIMEOUT_SECONDS, SERVER_LIFETIME_SECONDS,
};

/// A least-privilege PostgreSQL role for an application, with its connection details
/// materialized into a Secret in the same namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "dbconn.io",
    version = "v1alpha1",
    kind = "DatabaseConnection",
    plural = "databaseconnections",
    shortname = "dbconn",
    namespaced,
    status = "DatabaseConnectionStatus",
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "Server", "type": "string", "jsonPath": ".status.server"}"#,
    printcolumn = r#"{"name": "Role", "type": "string", "jsonPath": ".spec.role.name"}"#,
    printcolumn = r#"{"name": "Secret", "type": "string", "jsonPath": ".status.secretName"}"#,
    printcolumn = r#"{"name": "Reason", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name": "Message", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].message"}"#,
    doc = "A PostgreSQL connection for the applications of one namespace: a least-privilege role \
           on a server (spec.serverRef names a cluster-scoped DatabaseServer, or spec.server gives \
           one inline), the privileges it is granted (spec.access, spec.schemas, spec.grants), \
           and the Secret (spec.secret) that holds what a client needs to connect. dbconn creates \
           the role, grants exactly what is asked, logs in as the role to prove it, and writes \
           the Secret; pods labelled dbconn.io/inject=true that name the connection in the \
           dbconn.io/connections annotation get a pooling sidecar (spec.pooler). status.conditions \
           say what holds (ServerReachable, Authorized, RoleReady, GrantsApplied, SecretReady, \
           Ready) and, when something does not, what to fix."
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.serverRef) ? 1 : 0) + (has(self.server) && has(self.server.url) ? 1 : 0) + (has(self.server) && has(self.server.urlSecretRef) ? 1 : 0) + (has(self.server) && has(self.server.host) ? 1 : 0) == 1"
).message("set exactly one server source: serverRef, server.url, server.urlSecretRef or server.host"))]
#[x_kube(validation = Rule::new(
    "has(oldSelf.serverRef) == has(self.serverRef) && (!has(self.serverRef) || self.serverRef == oldSelf.serverRef)"
).message("serverRef is immutable: create a new DatabaseConnection to use another server"))]
#[x_kube(validation = Rule::new(
    "has(oldSelf.server) == has(self.server) && (!has(self.server) || (\
     (has(self.server.url) ? self.server.url : '') == (has(oldSelf.server.url) ? oldSelf.server.url : '') && \
     (has(self.server.host) ? self.server.host : '') == (has(oldSelf.server.host) ? oldSelf.server.host : '') && \
     (has(self.server.port) ? self.server.port : 0) == (has(oldSelf.server.port) ? oldSelf.server.port : 0) && \
     has(self.server.urlSecretRef) == has(oldSelf.server.urlSecretRef) && \
     (!has(self.server.urlSecretRef) || (self.server.urlSecretRef.name == oldSelf.server.urlSecretRef.name && \
       (has(self.server.urlSecretRef.key) ? self.server.urlSecretRef.key : '') == (has(oldSelf.server.urlSecretRef.key) ? oldSelf.server.urlSecretRef.key : '')))))"
).message("the inline server's address (server.url, server.urlSecretRef, server.host, server.port) is immutable: create a new DatabaseConnection to use another server"))]
#[x_kube(validation = Rule::new("self.database == oldSelf.database").message(
    "database is immutable: create a new DatabaseConnection to use another database"
))]
#[x_kube(validation = Rule::new(
    "!has(self.role.rotation) || !has(self.role.passwordSecretRef)"
).message("role.rotation needs no role.passwordSecretRef: dbconn rotates only passwords it generates"))]
#[x_kube(validation = Rule::new(
    "!has(self.role.rotation) || (has(self.pooler) && has(self.pooler.enabled) && self.pooler.enabled) || size(bytes(self.role.name)) <= 59"
).message("role.rotation without the pooler alternates between role.name and role.name + '_alt': role.name must be at most 59 bytes"))]
#[x_kube(validation = Rule::new("self.role.name == oldSelf.role.name").message(
    "role.name is immutable: create a new DatabaseConnection for another role"
))]
pub struct DatabaseConnectionSpec {
    /// Name of a cluster-scoped DatabaseServer to connect through. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_ref: Option<String>,
    /// The server, given inline instead of through a DatabaseServer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<InlineServer>,
    /// The application's database, where privileges are granted and checked. Immutable.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("size(bytes(self)) <= 63 && !self.contains('\\u0000')").message(
        "database must be 1 to 63 bytes without NUL (PostgreSQL would silently truncate a longer name)"
    ))]
    pub database: String,
    /// The application's role.
    pub role: RoleSpec,
    /// Preset privileges on `schemas`: readOnly (CONNECT, USAGE, SELECT on tables and
    /// sequences), readWrite (plus INSERT, UPDATE, DELETE, TRUNCATE, sequence USAGE/UPDATE,
    /// EXECUTE on functions), owner (plus CREATE on the schemas) or none.
    #[serde(default)]
    pub access: Access,
    /// Schemas that `access` applies to.
    #[serde(default = "default_schemas")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    #[x_kube(validation = Rule::new("self.all(s, size(bytes(s)) <= 63 && !s.contains('\\u0000'))").message(
        "schema names are 1 to 63 bytes without NUL (PostgreSQL would silently truncate longer names)"
    ))]
    #[x_kube(validation = Rule::new(SYSTEM_SCHEMAS_RULE).message(SYSTEM_SCHEMAS_MESSAGE))]
    pub schemas: Vec<String>,
    /// Privileges in addition to `access`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub grants: Vec<Grant>,
    /// Roles whose future tables, sequences and functions in `schemas` (and in `*` grants)
    /// this role gets its privileges on, through ALTER DEFAULT PRIVILEGES FOR ROLE (PostgreSQL
    /// docs, "ALTER DEFAULT PRIVILEGES"): typically the migration role that creates the tables.
    /// Unset: the owner of each schema. On a DatabaseServer each must own one of the schemas
    /// or match the policy's roleNames.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 63)))]
    #[x_kube(validation = Rule::new("self.all(r, size(bytes(r)) <= 63 && !r.contains('\\u0000'))").message(
        "role names are 1 to 63 bytes without NUL"
    ))]
    pub default_privileges_for: Vec<String>,
    /// The Secret that receives the connection details.
    #[serde(default)]
    pub secret: SecretSpec,
    /// The pooling sidecar injected into pods that ask for this connection.
    #[serde(default)]
    pub pooler: PoolerSpec,
    /// Server connections the applications open at most when they connect without the
    /// pooler (1 to 100000): the demand the connection budget (status.budget) checks against
    /// the role's CONNECTION LIMIT and the server's max_connections. With the pooler the
    /// demand is counted: pods with the sidecar × pooler.poolSize.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_connections: Option<i32>,
    /// What happens to the role when this resource is deleted: Retain (keep role and
    /// grants), Revoke (revoke what dbconn granted) or Delete (drop the role).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

fn default_schemas() -> Vec<String> {
    vec!["public".into()]
}

/// CEL: no system schema in a list of schema names (PostgreSQL reserves `pg_*`).
const SYSTEM_SCHEMAS_RULE: &str = "self.all(s, !s.startsWith('pg_') && s != 'information_schema')";
const SYSTEM_SCHEMAS_MESSAGE: &str = "system schemas (pg_catalog, information_schema, pg_toast, pg_temp_*) cannot be granted on: name an application schema";

/// Whether `schema` is one of PostgreSQL's own (`pg_*` is reserved for them) or the SQL
/// standard's information_schema: dbconn never grants on those. Pure.
pub fn is_system_schema(schema: &str) -> bool {
    schema.starts_with("pg_") || schema == "information_schema"
}

/// A server given inline: a URL, a URL in a Secret, or host/port/database.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "self.tls.sslmode != 'verify-full' || (has(self.host) && size(self.host) > 0) || has(self.url) || has(self.urlSecretRef) || has(self.tls.serverName)"
).message("sslmode verify-full checks the server's name: set host (or a url) or tls.serverName"))]
pub struct InlineServer {
    /// `postgres://user@host:port/db?sslmode=...`, without a password: put a URL with a
    /// password into a Secret and use urlSecretRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(
        "!self.matches('^[A-Za-z][A-Za-z0-9+.-]*://[^/?#@]*:[^/?#@]*@') && !self.matches('[?&]password=')"
    ).message("server.url must not contain a password: put the URL in a Secret and use server.urlSecretRef, or use server.adminSecretRef"))]
    #[x_kube(validation = Rule::new("self.startsWith('postgres://') || self.startsWith('postgresql://')").message(
        "server.url must start with postgres:// or postgresql://"
    ))]
    pub url: Option<String>,
    /// A Secret key holding a URL (the "environment variable" form); key defaults to `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
    /// Host name or IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub host: Option<String>,
    /// TCP port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Database for administrative sessions (default `postgres`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub database: Option<String>,
    /// TLS settings; verify-full unless set otherwise.
    #[serde(default)]
    pub tls: TlsSpec,
    /// Admin credentials in this namespace. Without them (and without a user in the URL
    /// Secret) dbconn only validates: the role must exist and its password comes from
    /// role.passwordSecretRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_secret_ref: Option<CredentialsSecretRef>,
}

/// The application's role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleSpec {
    /// Role name: 1 to 63 bytes, no NUL. Quotes, spaces, capitals and unicode are fine.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("size(bytes(self)) <= 63 && !self.contains('\\u0000')").message(
        "role.name must be 1 to 63 bytes without NUL (PostgreSQL would silently truncate a longer name)"
    ))]
    pub name: String,
    /// Create the role when it does not exist.
    #[serde(default = "default_true")]
    pub create: bool,
    /// CONNECTION LIMIT of the role; -1 for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1, max = 100000))]
    pub connection_limit: Option<i32>,
    /// The role's password, from a Secret in this namespace (key defaults to `password`).
    /// Without it dbconn generates one once and keeps it in the connection's Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Rotate the role's generated password without downtime (not with `passwordSecretRef`).
    /// Rotate now by setting the annotation `dbconn.io/rotate` to a new value.
    ///
    /// With `pooler.enabled` the apps' password to the sidecar stays; the sidecar takes the
    /// new server password from the mounted Secret. Without the pooler the role gets an
    /// alternate login role, `<role.name>_alt` (a member of the role whose sessions run as
    /// it), and each rotation gives the login the Secret does not name a new password and
    /// names it: pods started before keep working until the next rotation. Annotate a
    /// Deployment `dbconn.io/rollout-on-rotation: <connection>` to restart it after each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationSpec>,
}

/// When and how the role's password rotates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationSpec {
    /// Rotate every this many seconds (60 to 31536000, a year); without it, only on request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 31_536_000))]
    pub period_seconds: Option<i64>,
    /// With the pooler, seconds between putting the next password in the Secret and setting
    /// it on the server: the time kubelets take to update the Secret mounted in every pod (5
    /// to 3600, default 120; kubelet's syncFrequency plus its Secret cache TTL). Unused
    /// without the pooler, whose old login stays valid until the next rotation.
    #[serde(default = "default_propagation_seconds")]
    #[schemars(range(min = 5, max = 3600))]
    pub propagation_seconds: i64,
}

fn default_propagation_seconds() -> i64 {
    120
}

fn default_true() -> bool {
    true
}

/// Preset privileges.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Access {
    /// CONNECT; USAGE on the schemas; SELECT on their tables and sequences.
    #[default]
    ReadOnly,
    /// readOnly plus INSERT, UPDATE, DELETE, TRUNCATE; USAGE, UPDATE on sequences;
    /// EXECUTE on functions.
    ReadWrite,
    /// readWrite plus CREATE on the schemas.
    Owner,
    /// No preset: only `grants`.
    None,
}

/// Privileges on one database, schema, or set of objects in a schema. Without `schema`
/// the privileges are on the database; with `schema` and none of tables/sequences/functions,
/// on the schema.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.tables) ? 1 : 0) + (has(self.sequences) ? 1 : 0) + (has(self.functions) ? 1 : 0) <= 1").message(
    "a grant names one kind of object: tables, sequences or functions (use one grant each)"
))]
#[x_kube(validation = Rule::new("has(self.schema) || !(has(self.tables) || has(self.sequences) || has(self.functions))").message(
    "tables, sequences and functions live in a schema: set grants[].schema"
))]
#[x_kube(validation = Rule::new(
    "has(self.tables) ? self.privileges.all(p, p in ['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER', 'ALL']) : has(self.sequences) ? self.privileges.all(p, p in ['USAGE', 'SELECT', 'UPDATE', 'ALL']) : has(self.functions) ? self.privileges.all(p, p in ['EXECUTE', 'ALL']) : has(self.schema) ? self.privileges.all(p, p in ['USAGE', 'CREATE', 'ALL']) : self.privileges.all(p, p in ['CONNECT', 'CREATE', 'TEMPORARY', 'ALL'])"
).message(
    "privilege does not apply to this object: tables take SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER; sequences USAGE, SELECT, UPDATE; functions EXECUTE; schemas USAGE, CREATE; the database CONNECT, CREATE, TEMPORARY; any of them ALL"
))]
pub struct Grant {
    /// Schema of the objects (or the schema itself when no objects are named). Not a system
    /// schema (pg_catalog, information_schema, pg_toast, pg_temp_*).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("!self.startsWith('pg_') && self != 'information_schema'").message(SYSTEM_SCHEMAS_MESSAGE))]
    pub schema: Option<String>,
    /// Table (and view) names, or `*` for every table in the schema, now and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 63)))]
    pub tables: Option<Vec<String>>,
    /// Sequence names, or `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 63)))]
    pub sequences: Option<Vec<String>>,
    /// Function names (all overloads), or `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 63)))]
    pub functions: Option<Vec<String>>,
    /// The privileges, in PostgreSQL's spelling.
    #[schemars(length(min = 1, max = 16))]
    pub privileges: Vec<Privilege>,
}

/// A PostgreSQL privilege.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Privilege {
    Select,
    Insert,
    Update,
    Delete,
    Truncate,
    References,
    Trigger,
    Usage,
    Create,
    Connect,
    Temporary,
    Execute,
    All,
}

/// The Secret dbconn writes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretSpec {
    /// Name of the Secret; defaults to the DatabaseConnection's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// Extra keys rendered from templates over the connection fields, for example
    /// `DATABASE_URL: "{{ uri }}"`: at most 32 keys of Secret-key characters, each template at
    /// most 4 KiB. Templates are a bounded subset of Jinja (minijinja): `{{ variable | filter }}`,
    /// `{% if %}`, literals, comparisons; no loops, assignments, macros or string arithmetic.
    /// A rendered value may be at most 64 KiB and the whole Secret 1 MiB.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("size(self) <= 32").message("secret.template holds at most 32 keys"))]
    #[x_kube(validation = Rule::new("self.all(k, size(k) <= 253 && k.matches('^[-._a-zA-Z0-9]+$'))").message(
        "secret.template keys are Secret keys: 1 to 253 of the characters -._a-zA-Z0-9"
    ))]
    #[x_kube(validation = Rule::new("self.all(k, size(self[k]) <= 4096)").message(
        "a secret.template value is at most 4096 characters"
    ))]
    pub template: BTreeMap<String, String>,
}

/// The pooling sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolerSpec {
    /// Point the Secret's `uri` and PG* keys at the sidecar on 127.0.0.1.
    #[serde(default)]
    pub enabled: bool,
    /// transaction (a server connection per transaction) or session (per client).
    #[serde(default)]
    pub mode: PoolMode,
    /// Server connections the sidecar keeps at most (1 to 1000).
    #[serde(default = "default_pool_size")]
    #[schemars(range(min = POOL_SIZE.0, max = POOL_SIZE.1))]
    pub pool_size: i32,
    /// Loopback port the sidecar listens on.
    #[serde(default = "default_pooler_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Client connections the sidecar accepts at once (1 to 100000; default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MAX_CLIENTS.0, max = MAX_CLIENTS.1))]
    pub max_clients: Option<i32>,
    /// Seconds a client may wait for a server connection before SQLSTATE 53300 (1 to 3600;
    /// default 30; PgBouncer's query_wait_timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = QUERY_WAIT_TIMEOUT_SECONDS.0, max = QUERY_WAIT_TIMEOUT_SECONDS.1))]
    pub query_wait_timeout_seconds: Option<i32>,
    /// Seconds an idle server connection is kept (1 to 86400; default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = SERVER_IDLE_TIMEOUT_SECONDS.0, max = SERVER_IDLE_TIMEOUT_SECONDS.1))]
    pub server_idle_timeout_seconds: Option<i32>,
    /// Seconds a server connection lives at most (1 to 604800; default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = SERVER_LIFETIME_SECONDS.0, max = SERVER_LIFETIME_SECONDS.1))]
    pub server_lifetime_seconds: Option<i32>,
    /// Named prepared statements kept per server connection in transaction mode (0 to
    /// 100000, 0 passes names through; default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = MAX_PREPARED_STATEMENTS.0, max = MAX_PREPARED_STATEMENTS.1))]
    pub max_prepared_statements: Option<i32>,
    /// The sidecar's log level: error, warn, info (default), debug or trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevel>,
}

/// A log level, as RUST_LOG takes it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl Default for PoolerSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: PoolMode::default(),
            pool_size: default_pool_size(),
            port: default_pooler_port(),
            max_clients: None,
            query_wait_timeout_seconds: None,
            server_idle_timeout_seconds: None,
            server_lifetime_seconds: None,
            max_prepared_statements: None,
            log_level: None,
        }
    }
}

fn default_pool_size() -> i32 {
    5
}

fn default_pooler_port() -> i32 {
    6432
}

/// How the pooler shares server connections.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PoolMode {
    /// A server connection is held for one transaction.
    #[default]
    Transaction,
    /// A server connection is held for the client's whole session.
    Session,
}

/// What deleting a DatabaseConnection does to its role.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the role and its privileges.
    #[default]
    Retain,
    /// Revoke the privileges dbconn granted; keep the role.
    Revoke,
    /// Drop the role with everything it owns (its tables too) and every privilege it holds.
    Delete,
}

/// What dbconn last observed of the connection.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseConnectionStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// ServerReachable, RoleReady, GrantsApplied, SecretReady and Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Conditions,
    /// The server this connection uses, as `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The server's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// The Secret holding the connection details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// What the role can really do, checked by logging in as it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileges: Option<PrivilegeSummary>,
    /// Pods that name this connection in `dbconn.io/connections` but run without its
    /// sidecar (created while the webhook was unavailable, or admitted with a warning).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uninjected_pods: Vec<String>,
    /// What the connection's clients may open on the server, against what the role and the
    /// server allow (condition ConnectionBudget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<ConnectionBudget>,
    /// Password rotation (spec.role.rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationStatus>,
}

/// Where password rotation stands. Times are RFC 3339.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationStatus {
    /// When the role's password last changed by rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<String>,
    /// The value of the `dbconn.io/rotate` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<String>,
    /// When the next password was put in the Secret; it is set on the server once
    /// propagationSeconds have passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged_time: Option<String>,
}

/// The connection budget, in server connections.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionBudget {
    /// What the clients may open: pods with the sidecar × pooler.poolSize, or
    /// spec.maxConnections without the pooler; absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demand: Option<i64>,
    /// Pods running this connection's sidecar.
    #[serde(default)]
    pub pods: i64,
    /// The role's CONNECTION LIMIT; absent when unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_limit: Option<i64>,
    /// max_connections − superuser_reserved_connections − reserved_connections − what the
    /// other dbconn connections on this server may open; absent until the server is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_available: Option<i64>,
    /// The lower of roleLimit and serverAvailable: what the demand must fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// Counts of desired privileges the role has and lacks.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivilegeSummary {
    /// Desired privileges the role has.
    pub granted: i64,
    /// Desired privileges the role lacks.
    pub missing: i64,
    /// The first few missing privileges, as `SELECT on TABLE "s"."t"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_examples: Vec<String>,
}
