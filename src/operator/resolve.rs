//! Resolving references (I/O, reads only): the server a connection uses, its TLS material
//! and admin credentials, from Secrets in the connection's namespace or, for a
//! DatabaseServer, the operator's namespace.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{Api, Client, ResourceExt};

use super::Error;
use crate::api::{CredentialsSecretRef, DatabaseConnection, DatabaseServer, SecretKeyRef, TlsSpec};
use crate::postgres::{ConnectError, Endpoint, Session, TlsMaterial, connect, url};

/// The server a connection uses, ready to connect to (user and password still to set).
#[derive(Clone, Debug)]
pub struct Resolved {
    /// `host:port`, for status.
    pub label: String,
    /// Host, port, the application database and TLS; no user yet.
    pub base: Endpoint,
    /// Admin user and password, when dbconn may administer the server.
    pub admin: Option<(String, String)>,
    /// The CA PEM, copied into the connection's Secret for clients.
    pub ca_pem: Option<String>,
    /// Client certificate and key PEM for the application, from the connection's own
    /// namespace (a DatabaseServer's client certificate is the admin's and never copied).
    pub client_cert: Option<(String, String)>,
    /// Where administrative sessions connect (the server's `database`): claims on role names
    /// serialize on an advisory lock there.
    pub admin_database: String,
    /// What the namespace may use on a DatabaseServer; `None` for an inline server, which
    /// belongs to the tenant that names it.
    pub rules: Option<super::policy::Rules>,
    /// The TLS material of administrative logins: `base.tls` plus, on a DatabaseServer, the
    /// admin's client certificate (which a role's login never presents).
    pub admin_tls: TlsMaterial,
}

impl Resolved {
    /// Logs in to the connection's database as the role `user` (an empty password sends
    /// none: a certificate-only login).
    pub async fn login(&self, user: &str, password: &str) -> Result<Session, ConnectError> {
        connect(&self.endpoint(&self.base.database, user, password)).await
    }

    /// Logs in as the role only if the server asks for its password: the login proves the
    /// password (adoption), not merely that pg_hba.conf trusts the role.
    pub async fn prove(&self, user: &str, password: &str) -> Result<Session, ConnectError> {
        let mut ep = self.endpoint(&self.base.database, user, password);
        ep.guard.require_password = true;
        connect(&ep).await
    }

    /// Logs in as the admin to `database`.
    pub async fn admin_to(
        &self,
        database: &str,
        user: &str,
        password: &str,
    ) -> Result<Session, ConnectError> {
        connect(&self.admin_endpoint(database, user, password)).await
    }

    /// Where the admin logs in to `database` (for a kept session: `Sessions::get`).
    pub fn admin_endpoint(&self, database: &str, user: &str, password: &str) -> Endpoint {
        let mut ep = self.endpoint(database, user, password);
        ep.tls = self.admin_tls.clone();
        ep
    }

    fn endpoint(&self, database: &str, user: &str, password: &str) -> Endpoint {
        Endpoint {
            database: database.to_owned(),
            user: user.to_owned(),
            password: Some(password.to_owned()).filter(|p| !p.is_empty()),
            ..self.base.clone()
        }
    }
}

/// Reads one key of a Secret as text.
pub async fn secret_key(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String, Error> {
    SecretReader::new(client, namespace).key(name, key).await
}

/// Reads the Secrets of one namespace for one reconcile, each at most once: a Secret holding
/// several keys (username and password, tls.crt and tls.key) costs one GET.
pub struct SecretReader<'a> {
    client: &'a Client,
    namespace: &'a str,
    read: BTreeMap<String, Option<Secret>>,
}

impl<'a> SecretReader<'a> {
    pub fn new(client: &'a Client, namespace: &'a str) -> Self {
        Self {
            client,
            namespace,
            read: BTreeMap::new(),
        }
    }

    /// One key of Secret `name`, as text.
    ///
    /// # Errors
    /// `SecretMissing`, `SecretKeyMissing`, `SecretNotText`, or the API's error.
    pub async fn key(&mut self, name: &str, key: &str) -> Result<String, Error> {
        let namespace = self.namespace;
        if !self.read.contains_key(name) {
            let secret = Api::<Secret>::namespaced(self.client.clone(), namespace)
                .get_opt(name)
                .await?;
            self.read.insert(name.to_owned(), secret);
        }
        let secret = self
            .read
            .get(name)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::SecretMissing {
                namespace: namespace.into(),
                name: name.into(),
            })?;
        let missing = || Error::SecretKeyMissing {
            namespace: namespace.into(),
            name: name.into(),
            key: key.into(),
        };
        let bytes = match (
            secret.data.as_ref().and_then(|d| d.get(key)),
            secret.string_data.as_ref().and_then(|d| d.get(key)),
        ) {
            (Some(b), _) => b.0.clone(),
            (None, Some(s)) => s.clone().into_bytes(),
            (None, None) => return Err(missing()),
        };
        String::from_utf8(bytes).map_err(|_| Error::SecretNotText {
            namespace: namespace.into(),
            name: name.into(),
            key: key.into(),
        })
    }

    fn key_ref<'k>(
        &'k mut self,
        r: &'k SecretKeyRef,
        default_key: &'k str,
    ) -> impl Future<Output = Result<String, Error>> + 'k {
        self.key(&r.name, r.key_or(default_key))
    }

    /// The username (trimmed) and password a CredentialsSecretRef names.
    pub async fn credentials(
        &mut self,
        r: &CredentialsSecretRef,
    ) -> Result<(String, String), Error> {
        let user = self.key(&r.name, &r.username_key).await?;
        let password = self.key(&r.name, &r.password_key).await?;
        Ok((user.trim().to_owned(), password))
    }
}

/// The TLS material `tls` names, read and checked (the error names the field to fix).
pub async fn tls_material(
    secrets: &mut SecretReader<'_>,
    tls: &TlsSpec,
) -> Result<TlsMaterial, Error> {
    let mut m = TlsMaterial {
        server_name: tls.server_name.clone(),
        ..TlsMaterial::default()
    };
    if let Some(r) = &tls.ca_secret_ref {
        m.ca_pem = Some(secrets.key_ref(r, "ca.crt").await?.into_bytes());
    }
    if let Some(r) = &tls.client_cert_secret_ref {
        m.client_cert_pem = Some(secrets.key_ref(r, "tls.crt").await?.into_bytes());
    }
    if let Some(r) = &tls.client_key_secret_ref {
        m.client_key_pem = Some(secrets.key_ref(r, "tls.key").await?.into_bytes());
    }
    // Fail early, with the field to fix, rather than at the first connection.
    crate::postgres::tls::client_config(tls.sslmode, &m)?;
    Ok(m)
}

/// Why the server is resolved: to reconcile (the namespace must be allowed) or to clean up
/// what the connection owns (ownership, proven on the server, is enough).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Reconcile,
    Cleanup,
}

/// Resolves the server of `conn`. A DatabaseServer is used only when its allowedNamespaces
/// admits the connection's namespace; its tenancy rules for that namespace come along.
pub async fn resolve(
    ctx: &super::Context,
    conn: &DatabaseConnection,
    purpose: Purpose,
) -> Result<Resolved, Error> {
    let (client, settings) = (&ctx.client, &ctx.settings);
    let operator_namespace = settings.namespace.as_str();
    let ns = conn.namespace().unwrap_or_default();
    let spec = &conn.spec;
    let mut rules = None;
    // A DatabaseServer's Secrets are in the operator's namespace, an inline server's in the
    // connection's.
    let mut secrets = SecretReader::new(
        client,
        if spec.server_ref.is_some() {
            operator_namespace
        } else {
            &ns
        },
    );
    let (host, port, tls, admin, admin_database) = if let Some(name) = &spec.server_ref {
        // From the cache; read once when it lacks the server (not yet synced, or created a
        // moment ago).
        let cached = ctx
            .servers
            .get(&kube::runtime::reflector::ObjectRef::new(name));
        let server = match cached {
            Some(server) => server,
            None => Api::<DatabaseServer>::all(client.clone())
                .get_opt(name)
                .await?
                .map(std::sync::Arc::new)
                .ok_or_else(|| Error::ServerMissing(name.clone()))?,
        };
        let labels = namespace_labels(client, &ns).await?;
        let allowed = match server.spec.allowed_namespaces.as_ref() {
            None => ns == operator_namespace,
            Some(selector) => selector_matches(selector, &labels),
        };
        if !allowed && purpose == Purpose::Reconcile {
            return Err(Error::ServerDenied {
                server: name.clone(),
                namespace: ns,
            });
        }
        rules = Some(super::policy::Rules::for_namespace(&server, &ns, &labels));
        let admin = match &server.spec.admin_secret_ref {
            Some(r) => Some(secrets.credentials(r).await?),
            None => None,
        };
        (
            server.spec.host.clone(),
            server.spec.port,
            server.spec.tls.clone(),
            admin,
            server.spec.database.clone(),
        )
    } else {
        let inline = spec.server.clone().unwrap_or_default();
        let mut admin = match &inline.admin_secret_ref {
            Some(r) => Some(secrets.credentials(r).await?),
            None => None,
        };
        let (host, port, url_database) = if let Some(u) = inline.url.as_deref() {
            let parsed = url::parse(u).map_err(|source| Error::BadUrl {
                secret: "spec.server.url".into(),
                source,
            })?;
            (parsed.host, parsed.port.map(i32::from), parsed.database)
        } else if let Some(r) = &inline.url_secret_ref {
            let text = secrets.key_ref(r, "url").await?;
            let parsed = url::parse(text.trim()).map_err(|source| Error::BadUrl {
                secret: format!("{ns}/{}", r.name),
                source,
            })?;
            if let (None, Some(u), Some(p)) = (&admin, parsed.user, parsed.password) {
                admin = Some((u, p));
            }
            (parsed.host, parsed.port.map(i32::from), parsed.database)
        } else {
            (inline.host.clone().unwrap_or_default(), None, None)
        };
        (
            host,
            inline.port.or(port).unwrap_or(5432),
            inline.tls.clone(),
            admin,
            inline
                .database
                .clone()
                .or(url_database)
                .unwrap_or_else(|| "postgres".into()),
        )
    };
    let material = tls_material(&mut secrets, &tls).await?;
    let port = u16::try_from(port).unwrap_or(5432);
    let mut base = Endpoint::new(host.clone(), port, spec.database.clone(), String::new());
    base.sslmode = tls.sslmode;
    // A server the tenant names (host and CA alike) gets passwords only through SCRAM.
    base.guard.refuse_insecure = spec.server_ref.is_none();
    // Which replica did what shows in pg_stat_activity and the server log.
    base.application_name = format!("dbconn-operator {}", settings.identity);
    let text = |p: &Option<Vec<u8>>| p.as_ref().map(|p| String::from_utf8_lossy(p).into_owned());
    let ca_pem = text(&material.ca_pem);
    let client_cert = match (
        text(&material.client_cert_pem),
        text(&material.client_key_pem),
    ) {
        (Some(cert), Some(key)) if spec.server_ref.is_none() => Some((cert, key)),
        _ => None,
    };
    let admin_tls = material.clone();
    base.tls = material;
    if spec.server_ref.is_some() {
        // A DatabaseServer's client certificate is the admin's.
        base.tls.client_cert_pem = None;
        base.tls.client_key_pem = None;
    }
    Ok(Resolved {
        label: format!("{host}:{port}"),
        base,
        admin,
        ca_pem,
        client_cert,
        admin_database,
        rules,
        admin_tls,
    })
}

async fn namespace_labels(
    client: &Client,
    namespace: &str,
) -> Result<BTreeMap<String, String>, Error> {
    Ok(Api::<Namespace>::all(client.clone())
        .get_opt(namespace)
        .await?
        .map(|n| n.labels().clone())
        .unwrap_or_default())
}

/// Whether a label selector matches a label set (matchLabels and matchExpressions). Pure.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expr = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    by_label && by_expr
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selectors_match_as_kubernetes_does() {
        let labels = BTreeMap::from([("team".to_owned(), "shop".to_owned())]);
        let empty = LabelSelector::default();
        assert!(
            selector_matches(&empty, &labels),
            "{{}} selects every namespace"
        );
        let shop = LabelSelector {
            match_labels: Some(BTreeMap::from([("team".into(), "shop".into())])),
            ..Default::default()
        };
        assert!(selector_matches(&shop, &labels));
        assert!(!selector_matches(&shop, &BTreeMap::new()));
        let not_in = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: "NotIn".into(),
                values: Some(vec!["shop".into()]),
            }]),
            ..Default::default()
        };
        assert!(!selector_matches(&not_in, &labels));
        assert!(selector_matches(&not_in, &BTreeMap::new()));
    }
}
