//! The connection Secret as data: every key an application reads, rendered from the
//! connection's fields, plus user templates. Pure; the apply step lives in reconcile.rs.

use std::collections::BTreeMap;

use super::template::{TemplateError, render_all};
use crate::api::SslMode;
use crate::postgres::url::encode;

/// Where the chart mounts the Secret's `ca.crt` in the pod (PGSSLROOTCERT points here).
pub const CA_MOUNT_PATH: &str = "/var/run/dbconn/ca.crt";
/// Where the chart mounts the client certificate and key (PGSSLCERT, PGSSLKEY).
pub const CERT_MOUNT_PATH: &str = "/var/run/dbconn/tls.crt";
pub const KEY_MOUNT_PATH: &str = "/var/run/dbconn/tls.key";

/// What a client needs to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fields {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub username: String,
    pub password: String,
    pub sslmode: SslMode,
    /// PEM of the CA that verifies the server, when one is used.
    pub ca_pem: Option<String>,
    /// Client certificate and key PEM for mutual TLS, when the connection uses them.
    pub client_cert: Option<(String, String)>,
    /// Loopback port of the pooling sidecar, when enabled.
    pub pooler_port: Option<u16>,
}

fn host_in_url(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// The TLS file parameters of a URL going straight to the server.
fn tls_params(f: &Fields) -> String {
    let mut s = String::new();
    if f.ca_pem.is_some() {
        s.push_str(&format!("&sslrootcert={}", encode(CA_MOUNT_PATH)));
    }
    if f.client_cert.is_some() {
        s.push_str(&format!(
            "&sslcert={}&sslkey={}",
            encode(CERT_MOUNT_PATH),
            encode(KEY_MOUNT_PATH)
        ));
    }
    s
}

fn uri(f: &Fields, host: &str, port: u16, sslmode: SslMode, direct: bool) -> String {
    let mut s = format!(
        "postgresql://{}:{}@{}:{port}/{}?sslmode={}",
        encode(&f.username),
        encode(&f.password),
        host_in_url(host),
        encode(&f.dbname),
        sslmode.as_str()
    );
    if direct {
        s.push_str(&tls_params(f));
    }
    s
}

fn jdbc_uri(f: &Fields) -> String {
    let mut s = format!(
        "jdbc:postgresql://{}:{}/{}?user={}&password={}&sslmode={}",
        host_in_url(&f.host),
        f.port,
        encode(&f.dbname),
        encode(&f.username),
        encode(&f.password),
        f.sslmode.as_str()
    );
    s.push_str(&tls_params(f));
    s
}

/// A .pgpass line: `:` and `\` escaped with a backslash.
fn pgpass(host: &str, port: u16, f: &Fields) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    format!(
        "{}:{port}:{}:{}:{}\n",
        esc(host),
        esc(&f.dbname),
        esc(&f.username),
        esc(&f.password)
    )
}

/// Every key of the Secret. With the pooler, `uri`, `pgpass` and the PG* keys point at the
/// sidecar on loopback (plain: it never leaves the pod) and `direct-uri` at the server.
pub fn render(
    f: &Fields,
    templates: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, TemplateError> {
    let direct = uri(f, &f.host, f.port, f.sslmode, true);
    let (host, port, sslmode, to_server) = match f.pooler_port {
        Some(p) => ("127.0.0.1".to_owned(), p, SslMode::Disable, false),
        None => (f.host.clone(), f.port, f.sslmode, true),
    };
    let mut data = BTreeMap::from([
        ("uri".to_owned(), uri(f, &host, port, sslmode, to_server)),
        ("jdbc-uri".to_owned(), jdbc_uri(f)),
        ("host".to_owned(), f.host.clone()),
        ("port".to_owned(), f.port.to_string()),
        ("dbname".to_owned(), f.dbname.clone()),
        ("username".to_owned(), f.username.clone()),
        ("password".to_owned(), f.password.clone()),
        ("sslmode".to_owned(), f.sslmode.as_str().to_owned()),
        ("pgpass".to_owned(), pgpass(&host, port, f)),
        ("PGHOST".to_owned(), host.clone()),
        ("PGPORT".to_owned(), port.to_string()),
        ("PGDATABASE".to_owned(), f.dbname.clone()),
        ("PGUSER".to_owned(), f.username.clone()),
        ("PGPASSWORD".to_owned(), f.password.clone()),
        ("PGSSLMODE".to_owned(), sslmode.as_str().to_owned()),
    ]);
    if f.pooler_port.is_some() {
        data.insert("direct-uri".to_owned(), direct.clone());
    }
    if let Some(ca_pem) = &f.ca_pem {
        data.insert("ca.crt".to_owned(), ca_pem.clone());
        if to_server {
            data.insert("PGSSLROOTCERT".to_owned(), CA_MOUNT_PATH.to_owned());
        }
    }
    if let Some((cert, key)) = &f.client_cert {
        data.insert("tls.crt".to_owned(), cert.clone());
        data.insert("tls.key".to_owned(), key.clone());
        if to_server {
            data.insert("PGSSLCERT".to_owned(), CERT_MOUNT_PATH.to_owned());
            data.insert("PGSSLKEY".to_owned(), KEY_MOUNT_PATH.to_owned());
        }
    }
    if let Some(key) = templates
        .keys()
        .find(|k| data.contains_key(*k) || *k == "direct-uri")
    {
        return Err(TemplateError::ReservedKey { key: key.clone() });
    }
    if !templates.is_empty() {
        use minijinja::Value;
        let vars = BTreeMap::from([
            ("uri", Value::from(data["uri"].clone())),
            ("direct_uri", Value::from(direct)),
            ("jdbc_uri", Value::from(data["jdbc-uri"].clone())),
            ("host", Value::from(f.host.clone())),
            ("port", Value::from(f.port)),
            ("dbname", Value::from(f.dbname.clone())),
            ("database", Value::from(f.dbname.clone())),
            ("username", Value::from(f.username.clone())),
            ("password", Value::from(f.password.clone())),
            ("sslmode", Value::from(f.sslmode.as_str())),
        ]);
        data.extend(render_all(templates, &vars)?);
    }
    Ok(data)
}

/// The size of a Secret's data as Kubernetes counts it (keys and values), in bytes.
pub fn data_size(data: &BTreeMap<String, String>) -> usize {
    data.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// A new password: 32 characters from [A-Za-z0-9], from the operating system's generator.
pub fn generate_password() -> Result<String, getrandom::Error> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(32);
    let mut buf = [0u8; 64];
    while out.len() < 32 {
        getrandom::fill(&mut buf)?;
        // Rejection sampling keeps every character equally likely.
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() < 32 {
                out.push(ALPHABET[(*b % 62) as usize] as char);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::url::parse;

    fn fields(password: &str) -> Fields {
        Fields {
            host: "db.internal".into(),
            port: 5432,
            dbname: "orders".into(),
            username: "Shop User".into(),
            password: password.into(),
            sslmode: SslMode::VerifyFull,
            ca_pem: Some("-----BEGIN CERTIFICATE-----\n".into()),
            client_cert: None,
            pooler_port: None,
        }
    }

    #[test]
    fn a_hostile_password_round_trips_through_uri_jdbc_and_pgpass() {
        let pw = "p@ss:/?#%'\"\\ w0rd";
        let data = render(&fields(pw), &BTreeMap::new()).unwrap();
        let u = parse(&data["uri"]).unwrap();
        assert_eq!(u.password.as_deref(), Some(pw));
        assert_eq!(u.user.as_deref(), Some("Shop User"));
        assert_eq!(u.sslmode, Some(SslMode::VerifyFull));
        let jdbc = data["jdbc-uri"].strip_prefix("jdbc:").unwrap().replacen(
            "postgresql://",
            "postgresql://x@",
            1,
        );
        assert_eq!(parse(&jdbc).unwrap().password.as_deref(), Some(pw));
        assert_eq!(
            data["pgpass"],
            "db.internal:5432:orders:Shop User:p@ss\\:/?#%'\"\\\\ w0rd\n"
        );
        assert_eq!(data["PGSSLROOTCERT"], CA_MOUNT_PATH);
    }

    #[test]
    fn with_the_pooler_uri_points_at_the_sidecar_and_direct_uri_at_the_server() {
        let mut f = fields("pw");
        f.pooler_port = Some(6432);
        let data = render(&f, &BTreeMap::new()).unwrap();
        assert!(
            data["uri"]
                .starts_with("postgresql://Shop%20User:pw@127.0.0.1:6432/orders?sslmode=disable"),
            "{}",
            data["uri"]
        );
        assert!(data["direct-uri"].contains("@db.internal:5432/"));
        assert_eq!(data["PGHOST"], "127.0.0.1");
        assert!(!data.contains_key("PGSSLROOTCERT"));
    }

    #[test]
    fn a_client_certificate_is_carried_with_its_mount_paths() {
        let mut f = fields("pw");
        f.client_cert = Some(("CERT".into(), "KEY".into()));
        let data = render(&f, &BTreeMap::new()).unwrap();
        assert_eq!(data["tls.crt"], "CERT");
        assert_eq!(data["tls.key"], "KEY");
        assert_eq!(data["PGSSLKEY"], KEY_MOUNT_PATH);
        assert!(data["uri"].contains("&sslcert="), "{}", data["uri"]);
        assert!(
            data["jdbc-uri"].contains("&sslkey="),
            "{}",
            data["jdbc-uri"]
        );
        f.pooler_port = Some(6432);
        let data = render(&f, &BTreeMap::new()).unwrap();
        assert!(!data["uri"].contains("sslcert"), "the sidecar speaks plain");
        assert!(data["direct-uri"].contains("sslkey="));
        assert!(!data.contains_key("PGSSLCERT"));
    }

    #[test]
    fn templates_render_and_report_mistakes_by_key() {
        let t = BTreeMap::from([
            ("DATABASE_URL".to_owned(), "{{ uri }}".to_owned()),
            (
                "DSN".to_owned(),
                "host={{ host }} port={{ port }}".to_owned(),
            ),
        ]);
        let data = render(&fields("pw"), &t).unwrap();
        assert_eq!(data["DATABASE_URL"], data["uri"]);
        assert_eq!(data["DSN"], "host=db.internal port=5432");
        let bad = BTreeMap::from([("X".to_owned(), "{{ nope }}".to_owned())]);
        let err = render(&fields("pw"), &bad).unwrap_err();
        assert_eq!(err.key(), "X");
        let clash = BTreeMap::from([("password".to_owned(), "{{ uri }}".to_owned())]);
        assert_eq!(render(&fields("pw"), &clash).unwrap_err().key(), "password");
    }

    #[test]
    fn generated_passwords_are_long_and_distinct() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
