//! The operator's errors: each names the step that failed, maps to a condition reason users
//! read and to a metric label, and keeps its cause.

use crate::postgres::ConnectError;
use crate::postgres::quote::IdentError;
use crate::postgres::tls::TlsConfigError;
use crate::postgres::url::UrlError;

/// Why a reconcile stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("secret {namespace}/{name} not found")]
    SecretMissing { namespace: String, name: String },
    #[error("secret {namespace}/{name} has no key {key}")]
    SecretKeyMissing {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("secret {namespace}/{name} key {key} is not UTF-8 text")]
    SecretNotText {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("DatabaseServer {0:?} not found")]
    ServerMissing(String),
    #[error(
        "DatabaseServer {server:?} does not allow namespace {namespace:?} (see its spec.allowedNamespaces)"
    )]
    ServerDenied { server: String, namespace: String },
    #[error("URL in secret {secret}: {source}")]
    BadUrl { secret: String, source: UrlError },
    #[error("{0}")]
    Tls(#[from] TlsConfigError),
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error(
        "validate-only mode (no admin credentials) needs role.passwordSecretRef or a client certificate (tls.clientCertSecretRef)"
    )]
    NoCredentials,
    #[error("role {0:?} does not exist and role.create is false")]
    RoleMissing(String),
    #[error("{0}")]
    RoleNotAllowed(String),
    #[error(
        "role {0:?} exists and was not created by this DatabaseConnection: set role.passwordSecretRef to its password to adopt it"
    )]
    RoleNotManaged(String),
    #[error(
        "role {role:?} is managed by {owner}: a role has one DatabaseConnection at a time; choose another role.name"
    )]
    RoleClaimed { role: String, owner: String },
    #[error(
        "role {role:?} exists and dbconn did not create it; logging in with the password of role.passwordSecretRef failed ({cause}), so dbconn leaves the role untouched"
    )]
    AdoptionUnproven { role: String, cause: String },
    #[error("{0}")]
    NotAllowed(#[from] super::policy::Refusal),
    #[error(
        "{0} is a system schema: dbconn grants nothing on pg_catalog, information_schema, pg_toast or pg_temp_*"
    )]
    SystemSchema(String),
    #[error(
        "defaultPrivilegesFor names role {role:?}, which owns none of this connection's schemas and is not a role name {server} allows for namespace {namespace}"
    )]
    CreatorNotAllowed {
        role: String,
        server: String,
        namespace: String,
    },
    #[error("invalid name: {0}")]
    Name(#[from] IdentError),
    #[error("{step}: {message}")]
    Sql { step: &'static str, message: String },
    #[error("{0}")]
    Template(#[from] super::template::TemplateError),
    #[error(
        "the Secret would hold {size} bytes, more than Kubernetes' {limit}: shorten secret.template"
    )]
    SecretTooLarge { size: usize, limit: usize },
    #[error("{0}")]
    DropBlocked(String),
    #[error(
        "the server's address changed from {before} to {now} (server.urlSecretRef's Secret was edited): a connection's server is immutable; create a new DatabaseConnection for the new server"
    )]
    ServerChanged { before: String, now: String },
    #[error(
        "the reconcile did not finish within {0:?}: the server stopped answering (is it a PostgreSQL server, and reachable?)"
    )]
    Stalled(std::time::Duration),
    #[error("reading the catalog: {0}")]
    Catalog(#[from] crate::postgres::privileges::CatalogError),
    #[error(
        "secret {0} exists and is not managed by this DatabaseConnection: choose another spec.secret.name"
    )]
    SecretConflict(String),
    #[error("generating a password: {0}")]
    Random(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    /// A CamelCase reason for conditions, Events and the `reason` metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::SecretMissing { .. } => "SecretNotFound",
            Error::SecretKeyMissing { .. } => "SecretKeyMissing",
            Error::SecretNotText { .. } => "SecretKeyInvalid",
            Error::ServerMissing(_) => "ServerNotFound",
            Error::ServerDenied { .. } => "ServerNotAllowed",
            Error::BadUrl { .. } => "InvalidURL",
            Error::Tls(_) => "TLSConfigInvalid",
            Error::Connect(e) => e.reason(),
            Error::NoCredentials => "CredentialsMissing",
            Error::RoleMissing(_) => "RoleNotFound",
            Error::RoleNotAllowed(_) => "RoleNotAllowed",
            Error::RoleNotManaged(_) => "RoleNotManaged",
            Error::RoleClaimed { .. } => "RoleClaimed",
            Error::AdoptionUnproven { .. } => "AdoptionUnproven",
            Error::NotAllowed(r) => r.kind.reason(),
            Error::SystemSchema(_) => "SchemaNotAllowed",
            Error::CreatorNotAllowed { .. } => "RoleNameNotAllowed",
            Error::Name(_) => "InvalidName",
            Error::Sql { .. } => "SQLFailed",
            Error::Template(e) => e.reason(),
            Error::SecretTooLarge { .. } => "SecretTooLarge",
            Error::DropBlocked(_) => "DropBlocked",
            Error::ServerChanged { .. } => "ServerChanged",
            Error::Stalled(_) => "ServerStalled",
            Error::Catalog(crate::postgres::privileges::CatalogError::TooLarge { .. }) => {
                "CatalogTooLarge"
            }
            Error::Catalog(_) => "SQLFailed",
            Error::Random(_) => "PasswordGenerationFailed",
            Error::SecretConflict(_) => "SecretConflict",
            Error::Kube(_) => "KubernetesAPIError",
        }
    }

    /// Wraps a SQL failure with the step it happened in, keeping only the server's message
    /// (never the statement: it may hold a password verifier).
    pub fn sql(step: &'static str, e: tokio_postgres::Error) -> Self {
        let message = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        };
        Error::Sql { step, message }
    }
}
