//! `dbconn check`: the operator's "Test Connection" as a CLI. Logs in as the application
//! role (from a URL, or from a DatabaseConnection and its Secret in the current kube
//! context), works out what it should be able to do, proves what it can, and prints a table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::api::{Access, DatabaseConnection, DatabaseConnectionSpec, SslMode};
use crate::postgres::privileges::{self, Desired, Priv, Proof};
use crate::postgres::{Endpoint, TlsMaterial, connect, url};

/// What to check.
pub enum Target {
    /// A DatabaseConnection in the current kube context; its Secret gives the credentials.
    Connection { namespace: String, name: String },
    /// A URL (password in it or in PGPASSWORD) with a preset and schemas.
    Url {
        url: String,
        access: Access,
        schemas: Vec<String>,
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        server_name: Option<String>,
    },
}

/// The outcome: the printed table, and whether everything asked for is there.
pub struct Report {
    pub text: String,
    pub complete: bool,
}

pub async fn run(target: Target) -> anyhow::Result<Report> {
    let (mut endpoint, spec) = match target {
        Target::Connection { namespace, name } => from_cluster(&namespace, &name).await?,
        Target::Url {
            url,
            access,
            schemas,
            ca,
            cert,
            key,
            server_name,
        } => {
            let parsed = url::parse(&url).context("--url")?;
            let user = parsed.user.clone().context("--url names no user")?;
            let password = parsed
                .password
                .clone()
                .or_else(|| std::env::var("PGPASSWORD").ok());
            let read = |p: &Option<PathBuf>| -> anyhow::Result<Option<Vec<u8>>> {
                p.as_ref()
                    .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
                    .transpose()
            };
            let database = parsed.database.clone().unwrap_or_else(|| user.clone());
            let mut ep = Endpoint::new(parsed.host, parsed.port.unwrap_or(5432), &database, &user);
            ep.password = password;
            ep.sslmode = parsed.sslmode.unwrap_or(SslMode::VerifyFull);
            ep.tls = TlsMaterial {
                ca_pem: read(&ca)?,
                client_cert_pem: read(&cert)?,
                client_key_pem: read(&key)?,
                server_name,
            };
            let spec = serde_json::from_value::<DatabaseConnectionSpec>(serde_json::json!({
                "database": database,
                "role": {"name": user},
                "access": access,
                "schemas": if schemas.is_empty() { vec!["public".to_owned()] } else { schemas },
            }))?;
            (ep, spec)
        }
    };
    endpoint.application_name = "dbconn-check".into();
    let session = connect(&endpoint)
        .await
        .with_context(|| format!("logging in as {:?}", endpoint.user))?;
    let catalog = privileges::catalog(&session.client, &privileges::named_schemas(&spec))
        .await
        .context("reading the catalog")?;
    let desired = privileges::desired(&spec, &catalog)?;
    let proof = privileges::prove(&session.client, &desired.privileges)
        .await
        .context("checking privileges")?;
    let mut text = format!(
        "role {:?} logged in to {}:{}/{} over {}\n\n",
        endpoint.user,
        endpoint.host,
        endpoint.port,
        endpoint.database,
        if session.tls { "TLS" } else { "plain TCP" }
    );
    text.push_str(&table(&desired, &proof));
    Ok(Report {
        text,
        complete: proof.missing.is_empty() && desired.absent.is_empty(),
    })
}

/// Endpoint and spec for a DatabaseConnection, read from the cluster.
async fn from_cluster(
    namespace: &str,
    name: &str,
) -> anyhow::Result<(Endpoint, DatabaseConnectionSpec)> {
    let client = Client::try_default()
        .await
        .context("connecting to Kubernetes (KUBECONFIG or in-cluster)")?;
    let conn = Api::<DatabaseConnection>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .with_context(|| format!("reading DatabaseConnection {namespace}/{name}"))?;
    let secret_name = conn
        .status
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .or_else(|| conn.spec.secret.name.clone())
        .unwrap_or_else(|| name.to_owned());
    let secret = Api::<Secret>::namespaced(client, namespace)
        .get(&secret_name)
        .await
        .with_context(|| format!("reading secret {namespace}/{secret_name}"))?;
    let data: BTreeMap<String, String> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| Some((k, String::from_utf8(v.0).ok()?)))
        .collect();
    let key = |k: &str| {
        data.get(k)
            .cloned()
            .with_context(|| format!("secret {namespace}/{secret_name} has no key {k}"))
    };
    // The server itself: with the pooler on, host, port, sslmode and password are the
    // sidecar's (docs/secret.md), the direct-* keys and server-password the server's.
    let server = |k: &str| key(&format!("direct-{k}")).or_else(|_| key(k));
    let port: u16 = server("port")?
        .parse()
        .with_context(|| format!("secret {namespace}/{secret_name} key port"))?;
    let mut ep = Endpoint::new(server("host")?, port, key("dbname")?, key("username")?);
    ep.password = data
        .get("server-password")
        .or(data.get("password"))
        .cloned()
        .filter(|p| !p.is_empty());
    ep.sslmode = server("sslmode")?
        .parse()
        .map_err(|e| anyhow::anyhow!("secret {namespace}/{secret_name} key sslmode: {e}"))?;
    let pem = |k: &str| data.get(k).map(|v| v.clone().into_bytes());
    ep.tls = TlsMaterial {
        ca_pem: pem("ca.crt"),
        client_cert_pem: pem("tls.crt"),
        client_key_pem: pem("tls.key"),
        server_name: conn
            .spec
            .server
            .as_ref()
            .and_then(|s| s.tls.server_name.clone()),
    };
    if matches!(ep.sslmode, SslMode::VerifyCa | SslMode::VerifyFull) && ep.tls.ca_pem.is_none() {
        tracing::debug!("no ca.crt in the Secret: the system roots verify the server");
    }
    Ok((ep, conn.spec))
}

/// One row per object: what is wanted and what is missing. Pure.
pub fn table(desired: &Desired, proof: &Proof) -> String {
    let missing: BTreeSet<&Priv> = proof.missing.iter().collect();
    let mut rows: BTreeMap<String, (Vec<&str>, Vec<&str>)> = BTreeMap::new();
    for p in &desired.privileges {
        let row = rows.entry(p.object.to_string()).or_default();
        row.0.push(p.privilege);
        if missing.contains(p) {
            row.1.push(p.privilege);
        }
    }
    let width = rows
        .keys()
        .map(|k| k.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut out = format!("{:<width$}  {:<40}  MISSING\n", "OBJECT", "WANTED");
    for (object, (wanted, gaps)) in &rows {
        let gaps = if gaps.is_empty() {
            "-".to_owned()
        } else {
            gaps.join(", ")
        };
        let _ = writeln!(out, "{object:<width$}  {:<40}  {gaps}", wanted.join(", "));
    }
    for absent in &desired.absent {
        let _ = writeln!(out, "{absent:<width$}  {:<40}  does not exist", "-");
    }
    let _ = write!(
        out,
        "\n{} of {} privileges held",
        proof.granted,
        proof.granted + proof.missing.len()
    );
    if !desired.absent.is_empty() {
        let _ = write!(out, "; {} objects do not exist", desired.absent.len());
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::privileges::Object;
    use crate::postgres::quote::ident;

    #[test]
    fn the_table_lists_wanted_and_missing_per_object() {
        let table_obj = Object::Table(ident("public").unwrap(), ident("Order Lines").unwrap());
        let select = Priv {
            object: table_obj.clone(),
            privilege: "SELECT",
        };
        let insert = Priv {
            object: table_obj,
            privilege: "INSERT",
        };
        let connect = Priv {
            object: Object::Database(ident("app").unwrap()),
            privilege: "CONNECT",
        };
        let desired = Desired {
            privileges: [select.clone(), insert.clone(), connect]
                .into_iter()
                .collect(),
            absent: vec!["TABLE \"public\".\"gone\"".into()],
        };
        let proof = Proof {
            granted: 2,
            missing: vec![insert],
        };
        let t = table(&desired, &proof);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("OBJECT"), "{t}");
        assert!(
            lines[1].starts_with("DATABASE \"app\"") && lines[1].ends_with("  -"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("TABLE \"public\".\"Order Lines\""),
            "{t}"
        );
        assert!(lines[2].contains("SELECT, INSERT") || lines[2].contains("INSERT, SELECT"));
        assert!(lines[2].ends_with("INSERT"), "{t}");
        assert!(lines[3].ends_with("does not exist"), "{t}");
        assert!(
            t.contains("2 of 3 privileges held; 1 objects do not exist"),
            "{t}"
        );
    }
}
