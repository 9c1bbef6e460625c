//! Stage 1, dereference (Kubernetes reads only): the connection's server with its TLS
//! material, admin credentials and tenancy rules; the connection's own Secret; and the
//! role's password (given, kept from before, or new).

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::{Failed, at};
use crate::api::DatabaseConnection;
use crate::operator::resolve::{Purpose, Resolved, resolve, secret_key};
use crate::operator::secret::generate_password;
use crate::operator::status::{AUTHORIZED, ROLE_READY, SECRET_READY, SERVER_REACHABLE};
use crate::operator::{Context, Error};

/// Annotation on a Secret that a deleted connection with deletionPolicy Retain left behind:
/// the UID of that connection. A new connection in the namespace naming the Secret takes it
/// over, with the password it holds.
pub const RETAINED_FROM: &str = "dbconn.io/retained-from";

/// What the connection refers to.
pub struct Refs {
    pub namespace: String,
    pub server: Resolved,
    /// The name of the connection's Secret.
    pub secret_name: String,
    pub secret: Existing,
    pub password: Password,
}

/// The connection's Secret as found.
pub enum Existing {
    Absent,
    /// Owned by this connection.
    Owned(Secret),
    /// Left by a deleted connection with deletionPolicy Retain, to be taken over.
    Retained(Secret),
}

impl Existing {
    pub fn secret(&self) -> Option<&Secret> {
        match self {
            Existing::Absent => None,
            Existing::Owned(s) | Existing::Retained(s) => Some(s),
        }
    }
}

/// The role's password and where it came from.
pub struct Password {
    pub value: String,
    pub source: PasswordSource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordSource {
    /// role.passwordSecretRef.
    Given,
    /// Generated earlier and kept in the connection's Secret.
    Stored,
    /// Generated now; stored in the Secret before the role exists.
    New,
    /// None: a certificate-only login in validate-only mode.
    None,
}

/// Reads everything the reconcile (or the cleanup) needs from Kubernetes.
pub async fn refs(
    ctx: &Context,
    conn: &DatabaseConnection,
    purpose: Purpose,
) -> Result<Refs, Failed> {
    let namespace = conn.namespace().unwrap_or_default();
    let server = resolve(&ctx.client, conn, &ctx.settings, purpose)
        .await
        .map_err(|e| match e {
            Error::ServerDenied { .. } => at(AUTHORIZED)(e),
            e => at(SERVER_REACHABLE)(e),
        })?;
    let secret_name = secret_name(conn);
    let secret = existing(ctx, conn, &namespace, &secret_name)
        .await
        .map_err(at(SECRET_READY))?;
    let stored = secret
        .secret()
        .and_then(|s| s.data.as_ref()?.get("password"))
        .filter(|b| !b.0.is_empty())
        .map(|b| String::from_utf8_lossy(&b.0).into_owned());
    let password = match (&conn.spec.role.password_secret_ref, stored) {
        (Some(p), _) => Password {
            value: secret_key(&ctx.client, &namespace, &p.name, p.key_or("password"))
                .await
                .map_err(at(ROLE_READY))?,
            source: PasswordSource::Given,
        },
        // A certificate-only role in validate-only mode has no password.
        (None, _) if server.admin.is_none() => Password {
            value: String::new(),
            source: PasswordSource::None,
        },
        // Generated once and kept: rewriting it would restart every pod that reads it.
        (None, Some(value)) => Password {
            value,
            source: PasswordSource::Stored,
        },
        (None, None) => Password {
            value: generate_password().map_err(|e| at(ROLE_READY)(Error::Random(e.to_string())))?,
            source: PasswordSource::New,
        },
    };
    Ok(Refs {
        namespace,
        server,
        secret_name,
        secret,
        password,
    })
}

/// The name of the connection's Secret: spec.secret.name, else the connection's.
pub fn secret_name(conn: &DatabaseConnection) -> String {
    conn.spec
        .secret
        .name
        .clone()
        .unwrap_or_else(|| conn.name_any())
}

/// The connection's Secret: its own, one a Retain deletion left for it, or none. A Secret of
/// that name that belongs to something else is an error (dbconn never overwrites it).
pub async fn existing(
    ctx: &Context,
    conn: &DatabaseConnection,
    ns: &str,
    name: &str,
) -> Result<Existing, Error> {
    let Some(secret) = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await?
    else {
        return Ok(Existing::Absent);
    };
    let uid = conn.uid().unwrap_or_default();
    if secret.owner_references().iter().any(|o| o.uid == uid) {
        return Ok(Existing::Owned(secret));
    }
    if secret.owner_references().is_empty() && secret.annotations().contains_key(RETAINED_FROM) {
        if conn.spec.role.password_secret_ref.is_some() {
            // Taking it over would overwrite the only copy of a retained role's password.
            return Err(Error::SecretConflict(format!(
                "{ns}/{name} (it keeps the generated password of a role a deleted connection retained; without role.passwordSecretRef this connection takes it over)"
            )));
        }
        return Ok(Existing::Retained(secret));
    }
    Err(Error::SecretConflict(format!("{ns}/{name}")))
}
