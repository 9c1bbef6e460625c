//! Stage 1, dereference (Kubernetes reads only): the connection's server with its TLS
//! material, admin credentials and tenancy rules; the connection's own Secret; and the
//! role's password (given, kept from before, or new).

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::{Failed, at};
use crate::api::DatabaseConnection;
use crate::operator::resolve::{Purpose, Resolved, resolve, secret_key};
use crate::operator::rotation;
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
    /// What the role's password is once this run is done.
    pub value: String,
    pub source: PasswordSource,
    /// What the apps send: with the pooler, their password to the sidecar (it stays when the
    /// role's rotates); without, the role's.
    pub client: String,
    /// A rotation's next password, staged in the Secret (`server-password-next`).
    pub next: Option<String>,
    /// What this run does about rotation.
    pub rotation: rotation::Step,
    /// The login role the Secret names once this run is done: the role, or its alternate
    /// (rotation without the pooler, rotation.rs).
    pub login: String,
    /// The alternate login role, when the connection has one (rotation without the pooler).
    pub alternate: Option<String>,
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
    let server = resolve(ctx, conn, purpose).await.map_err(|e| match e {
        Error::ServerDenied { .. } => at(AUTHORIZED)(e),
        e => at(SERVER_REACHABLE)(e),
    })?;
    let secret_name = secret_name(conn);
    let secret = existing(ctx, conn, &namespace, &secret_name)
        .await
        .map_err(at(SECRET_READY))?;
    let stored = |key: &str| {
        secret
            .secret()
            .and_then(|s| s.data.as_ref()?.get(key))
            .filter(|b| !b.0.is_empty())
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    let generate = || generate_password().map_err(|e| at(ROLE_READY)(Error::Random(e.to_string())));
    // With the pooler the role's password is `server-password` (a Secret from before it
    // existed has only `password`).
    let role = stored("server-password").or_else(|| stored("password"));
    let (value, source) = match (&conn.spec.role.password_secret_ref, role) {
        (Some(p), _) => (
            secret_key(&ctx.client, &namespace, &p.name, p.key_or("password"))
                .await
                .map_err(at(ROLE_READY))?,
            PasswordSource::Given,
        ),
        // A certificate-only role in validate-only mode has no password.
        (None, _) if server.admin.is_none() => (String::new(), PasswordSource::None),
        // Generated once and kept: rewriting it would restart every pod that reads it.
        (None, Some(value)) => (value, PasswordSource::Stored),
        (None, None) => (generate()?, PasswordSource::New),
    };
    let pooler = conn.spec.pooler.enabled;
    let staged = stored("server-password-next");
    let request = conn.annotations().get(rotation::ROTATE).map(String::as_str);
    let step = rotation::decide(&rotation::Input {
        spec: conn.spec.role.rotation.as_ref(),
        generated: source == PasswordSource::Stored,
        request,
        status: conn.status.as_ref().and_then(|s| s.rotation.as_ref()),
        staged: staged.is_some(),
        pooler,
        created: conn.metadata.creation_timestamp.as_ref().map(|t| t.0),
        now: k8s_openapi::jiff::Timestamp::now(),
    });
    // Without the pooler, a rotation of a generated password alternates two logins.
    let role_name = &conn.spec.role.name;
    let alternate = (conn.spec.role.rotation.is_some()
        && !pooler
        && conn.spec.role.password_secret_ref.is_none()
        && server.admin.is_some())
    .then(|| rotation::alternate(role_name));
    let login = match (&alternate, stored("username")) {
        (Some(alt), Some(user)) if user == *alt => alt.clone(),
        _ => role_name.clone(),
    };
    let (value, next, login) = match (&step, staged) {
        (rotation::Step::Stage(_), _) => (value, Some(generate()?), login),
        (rotation::Step::Wait(_), staged) => (value, staged, login),
        (rotation::Step::Switch, Some(staged)) if pooler => (staged, None, login),
        (rotation::Step::Switch, _) if !pooler => {
            let standby = rotation::standby(role_name, &login);
            (generate()?, None, standby)
        }
        _ => (value, None, login),
    };
    let client = match stored("password") {
        Some(client) if pooler => client,
        // A new Secret: the apps' password to the sidecar is a password of its own.
        None if pooler && source == PasswordSource::New => generate()?,
        _ => value.clone(),
    };
    let password = Password {
        value,
        source,
        client,
        next,
        rotation: step,
        login,
        alternate,
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
