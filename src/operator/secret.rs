//! The connection Secret as data: every key an application reads, rendered from the
//! connection's fields, plus user templates. Pure; the apply step lives in reconcile.rs.
//!
//! One truth: with the pooler on, every key an application reads (`uri`, `jdbc-uri`, `host`,
//! `port`, `sslmode`, the `PG*` variables, `pgpass`) points at the sidecar on loopback; the
//! `direct-*` keys always point at the server (migrations, tools that need a session).
//! docs/secret.md lists every key and template variable.

use std::collections::BTreeMap;

use super::template::{TemplateError, render_all};
use crate::api::SslMode;
use crate::postgres::url::encode;

/// The host the sidecar listens on, in the pod.
pub const POOLER_HOST: &str = "127.0.0.1";
/// pgJDBC's SSL factory that verifies with Java's trust store (a server with a public CA).
const JAVA_TRUST_STORE: &str = "org.postgresql.ssl.DefaultJavaSSLFactory";

/// Where the webhook mounts a connection's Secret, read-only, in its sidecar and in every app
/// container of the pod: the Secret's file paths (`sslrootcert`, `PGSSLROOTCERT`, …) name
/// files in this folder.
pub fn mount_dir(connection: &str) -> String {
    format!("{}/{connection}", crate::inject::MOUNT_ROOT)
}

/// What a client needs to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fields {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub username: String,
    /// What the apps send: with the pooler, their password to the sidecar.
    pub password: String,
    /// The role's password on the server (`server-password` and the `direct-*` keys).
    pub server_password: String,
    /// A rotation's next server password, staged for the sidecars (`server-password-next`).
    pub server_password_next: Option<String>,
    pub sslmode: SslMode,
    /// PEM of the CA that verifies the server, when one is given. Without it, a verifying
    /// sslmode uses the client's system trust store (a server with a public CA).
    pub ca_pem: Option<String>,
    /// Client certificate and key PEM for mutual TLS, when the connection uses them.
    pub client_cert: Option<(String, String)>,
    /// Loopback port of the pooling sidecar, when enabled.
    pub pooler_port: Option<u16>,
    /// Where pods have the Secret's files ([`mount_dir`]).
    pub mount_dir: String,
}

/// Where a client connects: the sidecar (plain, it never leaves the pod) or the server.
struct Target<'a> {
    host: &'a str,
    port: u16,
    sslmode: SslMode,
    direct: bool,
    password: &'a str,
}

impl Fields {
    fn server(&self) -> Target<'_> {
        Target {
            host: &self.host,
            port: self.port,
            sslmode: self.sslmode,
            direct: true,
            password: &self.server_password,
        }
    }

    /// What applications use: the sidecar when the pooler is on, else the server.
    fn app(&self) -> Target<'_> {
        match self.pooler_port {
            Some(port) => Target {
                host: POOLER_HOST,
                port,
                sslmode: SslMode::Disable,
                direct: false,
                password: &self.password,
            },
            None => self.server(),
        }
    }

    fn file(&self, name: &str) -> String {
        format!("{}/{name}", self.mount_dir)
    }

    /// The root certificate setting for the server: the mounted CA, `system` (libpq 16+:
    /// the system trust store) for a verifying sslmode without a CA, or none.
    fn sslrootcert(&self) -> Option<String> {
        match (&self.ca_pem, self.sslmode) {
            (Some(_), _) => Some(self.file("ca.crt")),
            (None, SslMode::VerifyCa | SslMode::VerifyFull) => Some("system".to_owned()),
            (None, _) => None,
        }
    }

    /// libpq's TLS file parameters for the server, as (name, value).
    fn tls_files(&self) -> Vec<(&'static str, String)> {
        let mut params = Vec::new();
        if let Some(root) = self.sslrootcert() {
            params.push(("sslrootcert", root));
        }
        if self.client_cert.is_some() {
            params.push(("sslcert", self.file("tls.crt")));
            params.push(("sslkey", self.file("tls.key")));
        }
        params
    }
}

fn host_in_url(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// `<scheme>://user:password@host:port/dbname?`, every part percent-encoded.
fn url_base(scheme: &str, f: &Fields, t: &Target) -> String {
    format!(
        "{scheme}://{}:{}@{}:{}/{}?",
        encode(&f.username),
        encode(t.password),
        host_in_url(t.host),
        t.port,
        encode(&f.dbname)
    )
}

fn uri(f: &Fields, t: &Target) -> String {
    let mut s = format!(
        "{}sslmode={}",
        url_base("postgresql", f, t),
        t.sslmode.as_str()
    );
    if t.direct {
        for (name, value) in f.tls_files() {
            s.push_str(&format!("&{name}={}", encode(&value)));
        }
    }
    s
}

/// pgJDBC's URL (<https://jdbc.postgresql.org/documentation/use/>): a server without a CA
/// file is verified with Java's trust store.
fn jdbc_uri(f: &Fields, t: &Target) -> String {
    let mut s = format!(
        "jdbc:postgresql://{}:{}/{}?user={}&password={}&sslmode={}",
        host_in_url(t.host),
        t.port,
        encode(&f.dbname),
        encode(&f.username),
        encode(t.password),
        t.sslmode.as_str()
    );
    if t.direct {
        for (name, value) in f.tls_files() {
            if value == "system" {
                s.push_str(&format!("&sslfactory={JAVA_TRUST_STORE}"));
            } else {
                s.push_str(&format!("&{name}={}", encode(&value)));
            }
        }
    }
    s
}

/// Spring Boot's `SPRING_DATASOURCE_URL`: the JDBC URL without credentials (Spring passes
/// `SPRING_DATASOURCE_USERNAME` and `_PASSWORD` separately).
fn spring_url(f: &Fields, t: &Target) -> String {
    let full = jdbc_uri(f, t);
    let (base, query) = full.split_once('?').unwrap_or((&full, ""));
    let rest: Vec<&str> = query
        .split('&')
        .filter(|p| !p.starts_with("user=") && !p.starts_with("password="))
        .collect();
    format!("{base}?{}", rest.join("&"))
}

/// Npgsql's keyword connection string
/// (<https://www.npgsql.org/doc/connection-string-parameters.html>):
/// `Host=…;Port=…;Database=…;Username=…;Password=…;SSL Mode=…`, TLS files as
/// `Root Certificate`, `SSL Certificate` and `SSL Key`. A value other than plain letters,
/// digits and `._-/:` is double-quoted with inner double quotes doubled (the ADO.NET
/// connection string rules), so `;`, `=`, quotes and spaces survive. Without a CA file
/// Npgsql verifies with the system store.
fn npgsql(f: &Fields, t: &Target) -> String {
    let quote = |v: &str| {
        if !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c))
        {
            v.to_owned()
        } else {
            format!("\"{}\"", v.replace('"', "\"\""))
        }
    };
    let mode = match t.sslmode {
        SslMode::Disable => "Disable",
        SslMode::Allow => "Allow",
        SslMode::Prefer => "Prefer",
        SslMode::Require => "Require",
        SslMode::VerifyCa => "VerifyCA",
        SslMode::VerifyFull => "VerifyFull",
    };
    let mut s = format!(
        "Host={};Port={};Database={};Username={};Password={};SSL Mode={mode}",
        quote(t.host),
        t.port,
        quote(&f.dbname),
        quote(&f.username),
        quote(t.password)
    );
    if t.direct {
        for (name, value) in f.tls_files() {
            let keyword = match name {
                "sslrootcert" if value == "system" => continue,
                "sslrootcert" => "Root Certificate",
                "sslcert" => "SSL Certificate",
                _ => "SSL Key",
            };
            s.push_str(&format!(";{keyword}={}", quote(&value)));
        }
    }
    s
}

/// SQLAlchemy with asyncpg (`postgresql+asyncpg://`): asyncpg takes `ssl=<sslmode>`, not
/// `sslmode=`, and reads the CA file from PGSSLROOTCERT.
fn sqlalchemy_asyncpg(f: &Fields, t: &Target) -> String {
    format!(
        "{}ssl={}",
        url_base("postgresql+asyncpg", f, t),
        t.sslmode.as_str()
    )
}

/// Prisma's URL for the server (its `directUrl`, for migrations). Prisma's engine knows only
/// `sslmode` disable, prefer and require, and treats verify-full as prefer; verification is
/// `sslaccept=strict`, with `sslcert` naming the CA file (Prisma's meaning of it). So no
/// verifying sslmode is silently weakened.
fn prisma_direct(f: &Fields) -> String {
    let tls = match f.sslmode {
        SslMode::Disable => "sslmode=disable".to_owned(),
        SslMode::Allow | SslMode::Prefer => "sslmode=prefer".to_owned(),
        SslMode::Require => "sslmode=require&sslaccept=accept_invalid_certs".to_owned(),
        SslMode::VerifyCa | SslMode::VerifyFull => match &f.ca_pem {
            Some(_) => format!(
                "sslmode=require&sslaccept=strict&sslcert={}",
                encode(&f.file("ca.crt"))
            ),
            None => "sslmode=require&sslaccept=strict".to_owned(),
        },
    };
    format!("{}{tls}", url_base("postgresql", f, &f.server()))
}

/// A .pgpass line: `:` and `\` escaped with a backslash.
fn pgpass(f: &Fields, t: &Target) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    format!(
        "{}:{}:{}:{}:{}\n",
        esc(t.host),
        t.port,
        esc(&f.dbname),
        esc(&f.username),
        esc(t.password)
    )
}

/// Every key of the Secret (docs/secret.md), then the user's templates.
pub fn render(
    f: &Fields,
    templates: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, TemplateError> {
    let (app, server) = (f.app(), f.server());
    let mut data = BTreeMap::from([
        ("uri".to_owned(), uri(f, &app)),
        ("jdbc-uri".to_owned(), jdbc_uri(f, &app)),
        ("host".to_owned(), app.host.to_owned()),
        ("port".to_owned(), app.port.to_string()),
        ("sslmode".to_owned(), app.sslmode.as_str().to_owned()),
        ("dbname".to_owned(), f.dbname.clone()),
        ("username".to_owned(), f.username.clone()),
        ("password".to_owned(), f.password.clone()),
        ("pgpass".to_owned(), pgpass(f, &app)),
        ("PGHOST".to_owned(), app.host.to_owned()),
        ("PGPORT".to_owned(), app.port.to_string()),
        ("PGDATABASE".to_owned(), f.dbname.clone()),
        ("PGUSER".to_owned(), f.username.clone()),
        ("PGPASSWORD".to_owned(), f.password.clone()),
        ("PGSSLMODE".to_owned(), app.sslmode.as_str().to_owned()),
        ("direct-uri".to_owned(), uri(f, &server)),
        ("direct-jdbc-uri".to_owned(), jdbc_uri(f, &server)),
        ("direct-host".to_owned(), server.host.to_owned()),
        ("direct-port".to_owned(), server.port.to_string()),
        (
            "direct-sslmode".to_owned(),
            server.sslmode.as_str().to_owned(),
        ),
        ("SPRING_DATASOURCE_URL".to_owned(), spring_url(f, &app)),
        ("SPRING_DATASOURCE_USERNAME".to_owned(), f.username.clone()),
        ("SPRING_DATASOURCE_PASSWORD".to_owned(), f.password.clone()),
        ("npgsql-connection-string".to_owned(), npgsql(f, &app)),
        (
            "direct-npgsql-connection-string".to_owned(),
            npgsql(f, &server),
        ),
        (
            "sqlalchemy-asyncpg-uri".to_owned(),
            sqlalchemy_asyncpg(f, &app),
        ),
        ("prisma-direct-url".to_owned(), prisma_direct(f)),
    ]);
    if f.pooler_port.is_some() {
        // The sidecar's login to the server; the apps' `password` is theirs to the sidecar.
        data.insert("server-password".to_owned(), f.server_password.clone());
        if let Some(next) = &f.server_password_next {
            data.insert("server-password-next".to_owned(), next.clone());
        }
    }
    if let Some(root) = f.sslrootcert() {
        data.insert("direct-sslrootcert".to_owned(), root.clone());
        if app.direct {
            data.insert("PGSSLROOTCERT".to_owned(), root);
        }
    }
    if let Some(ca_pem) = &f.ca_pem {
        data.insert("ca.crt".to_owned(), ca_pem.clone());
    }
    if let Some((cert, key)) = &f.client_cert {
        data.insert("tls.crt".to_owned(), cert.clone());
        data.insert("tls.key".to_owned(), key.clone());
        if app.direct {
            data.insert("PGSSLCERT".to_owned(), f.file("tls.crt"));
            data.insert("PGSSLKEY".to_owned(), f.file("tls.key"));
        }
    }
    if let Some(key) = templates
        .keys()
        .find(|k| data.contains_key(*k) || RESERVED.contains(&k.as_str()))
    {
        return Err(TemplateError::ReservedKey { key: key.clone() });
    }
    if !templates.is_empty() {
        use minijinja::Value;
        let string = |k: &str| Value::from(data[k].clone());
        let mut vars = BTreeMap::from([
            ("uri", string("uri")),
            ("jdbc_uri", string("jdbc-uri")),
            ("host", Value::from(app.host)),
            ("port", Value::from(app.port)),
            ("sslmode", Value::from(app.sslmode.as_str())),
            ("direct_uri", string("direct-uri")),
            ("direct_jdbc_uri", string("direct-jdbc-uri")),
            ("server_host", Value::from(server.host)),
            ("server_port", Value::from(server.port)),
            ("server_sslmode", Value::from(server.sslmode.as_str())),
            ("dbname", Value::from(f.dbname.clone())),
            ("database", Value::from(f.dbname.clone())),
            ("username", Value::from(f.username.clone())),
            ("password", Value::from(f.password.clone())),
            ("server_password", Value::from(f.server_password.clone())),
        ]);
        // Undefined (an error naming the key, templates are strict) when there is none.
        if let Some(port) = f.pooler_port {
            vars.insert("pooler_host", Value::from(POOLER_HOST));
            vars.insert("pooler_port", Value::from(port));
        }
        if let Some(root) = f.sslrootcert() {
            vars.insert("sslrootcert", Value::from(root));
        }
        data.extend(render_all(templates, &vars)?);
    }
    Ok(data)
}

/// Keys dbconn may write that a template must not take, besides those of this connection.
const RESERVED: &[&str] = &[
    "server-password",
    "server-password-next",
    "ca.crt",
    "tls.crt",
    "tls.key",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "direct-sslrootcert",
];

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
            server_password: password.into(),
            server_password_next: None,
            sslmode: SslMode::VerifyFull,
            ca_pem: Some("-----BEGIN CERTIFICATE-----\n".into()),
            client_cert: None,
            pooler_port: None,
            mount_dir: mount_dir("orders"),
        }
    }

    const CA_FILE: &str = "/var/run/dbconn/orders/ca.crt";

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
        assert_eq!(data["PGSSLROOTCERT"], CA_FILE);
    }

    /// (key, value) pairs of a URL's query.
    fn query(url: &str) -> BTreeMap<String, String> {
        let (_, q) = url.split_once('?').unwrap();
        q.split('&')
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap();
                let v = percent_encoding::percent_decode_str(v)
                    .decode_utf8()
                    .unwrap();
                (k.to_owned(), v.into_owned())
            })
            .collect()
    }

    #[test]
    fn with_the_pooler_every_key_an_app_reads_names_the_sidecar_and_direct_keys_the_server() {
        let mut f = fields("pw");
        f.pooler_port = Some(6433);
        f.client_cert = Some(("CERT".into(), "KEY".into()));
        let data = render(&f, &BTreeMap::new()).unwrap();
        assert!(
            data["uri"]
                .starts_with("postgresql://Shop%20User:pw@127.0.0.1:6433/orders?sslmode=disable"),
            "{}",
            data["uri"]
        );
        assert!(
            data["jdbc-uri"].starts_with("jdbc:postgresql://127.0.0.1:6433/orders?"),
            "{}",
            data["jdbc-uri"]
        );
        assert_eq!(query(&data["jdbc-uri"])["sslmode"], "disable");
        for (key, want) in [
            ("host", "127.0.0.1"),
            ("port", "6433"),
            ("sslmode", "disable"),
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", "6433"),
            ("PGSSLMODE", "disable"),
            ("pgpass", "127.0.0.1:6433:orders:Shop User:pw\n"),
            ("direct-host", "db.internal"),
            ("direct-port", "5432"),
            ("direct-sslmode", "verify-full"),
            ("direct-sslrootcert", CA_FILE),
        ] {
            assert_eq!(data[key], want, "{key}");
        }
        // The sidecar speaks plain on loopback: no TLS file settings for it.
        for key in ["PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY"] {
            assert!(!data.contains_key(key), "{key} with the pooler on");
        }
        assert!(!data["uri"].contains("sslcert"), "{}", data["uri"]);
        let direct = query(&data["direct-uri"]);
        assert_eq!(direct["sslrootcert"], CA_FILE);
        assert_eq!(direct["sslkey"], "/var/run/dbconn/orders/tls.key");
        assert!(data["direct-uri"].contains("@db.internal:5432/orders?"));
        let direct_jdbc = query(&data["direct-jdbc-uri"]);
        assert_eq!(direct_jdbc["sslrootcert"], CA_FILE);
        assert_eq!(direct_jdbc["sslmode"], "verify-full");
    }

    #[test]
    fn with_the_pooler_apps_keep_their_password_while_the_roles_rotates() {
        let mut f = fields("client-pw");
        f.pooler_port = Some(6432);
        f.server_password = "role-pw".into();
        f.server_password_next = Some("next-pw".into());
        let data = render(&f, &BTreeMap::new()).unwrap();
        for key in ["password", "PGPASSWORD", "SPRING_DATASOURCE_PASSWORD"] {
            assert_eq!(data[key], "client-pw", "{key}");
        }
        assert!(data["uri"].contains(":client-pw@127.0.0.1:6432/"));
        assert_eq!(
            ado_net(&data["npgsql-connection-string"])["Password"],
            "client-pw"
        );
        assert_eq!(data["server-password"], "role-pw");
        assert_eq!(data["server-password-next"], "next-pw");
        assert!(data["direct-uri"].contains(":role-pw@db.internal:5432/"));
        assert!(data["direct-jdbc-uri"].contains("password=role-pw"));
        assert!(data["prisma-direct-url"].contains(":role-pw@db.internal"));
        assert_eq!(
            ado_net(&data["direct-npgsql-connection-string"])["Password"],
            "role-pw"
        );
        // Without the pooler the apps use the role's password itself.
        f.pooler_port = None;
        f.password = "role-pw".into();
        let data = render(&f, &BTreeMap::new()).unwrap();
        assert!(!data.contains_key("server-password"));
        assert!(!data.contains_key("server-password-next"));
        assert_eq!(data["password"], "role-pw");
    }

    #[test]
    fn without_the_pooler_app_and_direct_keys_agree_and_name_the_mounted_files() {
        let mut f = fields("pw");
        f.client_cert = Some(("CERT".into(), "KEY".into()));
        let data = render(&f, &BTreeMap::new()).unwrap();
        assert_eq!(data["tls.crt"], "CERT");
        assert_eq!(data["tls.key"], "KEY");
        assert_eq!(data["uri"], data["direct-uri"]);
        assert_eq!(data["jdbc-uri"], data["direct-jdbc-uri"]);
        assert_eq!(data["host"], data["direct-host"]);
        assert_eq!(data["PGSSLKEY"], "/var/run/dbconn/orders/tls.key");
        assert_eq!(data["PGSSLCERT"], "/var/run/dbconn/orders/tls.crt");
        assert_eq!(
            query(&data["jdbc-uri"])["sslkey"],
            "/var/run/dbconn/orders/tls.key"
        );
    }

    #[test]
    fn a_public_ca_server_is_verified_with_the_system_trust_store() {
        for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
            let mut f = fields("pw");
            f.ca_pem = None;
            f.sslmode = mode;
            let data = render(&f, &BTreeMap::new()).unwrap();
            assert_eq!(query(&data["uri"])["sslrootcert"], "system", "{mode:?}");
            assert_eq!(data["PGSSLROOTCERT"], "system");
            let jdbc = query(&data["jdbc-uri"]);
            assert_eq!(
                jdbc["sslfactory"],
                "org.postgresql.ssl.DefaultJavaSSLFactory"
            );
            assert!(!jdbc.contains_key("sslrootcert"));
            assert!(!data.contains_key("ca.crt"));
        }
        // Not verifying: no root certificate setting at all.
        let mut f = fields("pw");
        f.ca_pem = None;
        f.sslmode = SslMode::Require;
        let data = render(&f, &BTreeMap::new()).unwrap();
        assert!(!data["uri"].contains("sslrootcert"), "{}", data["uri"]);
        assert!(!data.contains_key("PGSSLROOTCERT"));
    }

    /// An ADO.NET connection string parsed as DbConnectionStringBuilder does: `key=value`
    /// pairs split on `;`, a value in double quotes with `""` for a quote inside.
    fn ado_net(s: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut rest = s;
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=').expect("key=value");
            let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = quoted.char_indices().peekable();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    if c == '"' {
                        if chars.peek().map(|(_, c)| *c) == Some('"') {
                            value.push('"');
                            chars.next();
                        } else {
                            end = i + 1;
                            break;
                        }
                    } else {
                        value.push(c);
                    }
                }
                (
                    value,
                    quoted[end..].strip_prefix(';').unwrap_or(&quoted[end..]),
                )
            } else {
                let (v, n) = after.split_once(';').unwrap_or((after, ""));
                (v.to_owned(), n)
            };
            out.insert(key.to_owned(), value);
            rest = next;
        }
        out
    }

    #[test]
    fn the_npgsql_string_uses_its_keywords_and_survives_hostile_values() {
        const KEYWORDS: [&str; 9] = [
            "Host",
            "Port",
            "Database",
            "Username",
            "Password",
            "SSL Mode",
            "Root Certificate",
            "SSL Certificate",
            "SSL Key",
        ];
        let pw = "p;w=\"x\" 'y' ";
        let mut f = fields(pw);
        f.dbname = "Order Lines".into();
        f.client_cert = Some(("CERT".into(), "KEY".into()));
        let data = render(&f, &BTreeMap::new()).unwrap();
        let direct = ado_net(&data["direct-npgsql-connection-string"]);
        for key in direct.keys() {
            assert!(
                KEYWORDS.contains(&key.as_str()),
                "{key} is not an Npgsql keyword"
            );
        }
        assert_eq!(direct["Password"], pw);
        assert_eq!(direct["Username"], "Shop User");
        assert_eq!(direct["Database"], "Order Lines");
        assert_eq!(direct["Host"], "db.internal");
        assert_eq!(direct["SSL Mode"], "VerifyFull");
        assert_eq!(direct["Root Certificate"], CA_FILE);
        assert_eq!(direct["SSL Key"], "/var/run/dbconn/orders/tls.key");
        f.pooler_port = Some(6432);
        let data = render(&f, &BTreeMap::new()).unwrap();
        let app = ado_net(&data["npgsql-connection-string"]);
        assert_eq!(
            (
                app["Host"].as_str(),
                app["Port"].as_str(),
                app["SSL Mode"].as_str()
            ),
            ("127.0.0.1", "6432", "Disable")
        );
        assert!(!app.contains_key("Root Certificate"));
        // A public-CA server: Npgsql's default is the system store, no keyword.
        let mut public = fields("pw");
        public.ca_pem = None;
        let data = render(&public, &BTreeMap::new()).unwrap();
        assert!(!ado_net(&data["npgsql-connection-string"]).contains_key("Root Certificate"));
    }

    #[test]
    fn framework_keys_spring_sqlalchemy_and_prisma() {
        let mut f = fields("p@ss");
        f.pooler_port = Some(6432);
        let data = render(&f, &BTreeMap::new()).unwrap();
        assert_eq!(
            data["SPRING_DATASOURCE_URL"],
            "jdbc:postgresql://127.0.0.1:6432/orders?sslmode=disable"
        );
        assert_eq!(data["SPRING_DATASOURCE_USERNAME"], "Shop User");
        assert_eq!(data["SPRING_DATASOURCE_PASSWORD"], "p@ss");
        assert_eq!(
            data["sqlalchemy-asyncpg-uri"],
            "postgresql+asyncpg://Shop%20User:p%40ss@127.0.0.1:6432/orders?ssl=disable"
        );
        // Prisma never gets a verifying sslmode it would read as prefer.
        let prisma = query(&data["prisma-direct-url"]);
        assert_eq!(prisma["sslmode"], "require");
        assert_eq!(prisma["sslaccept"], "strict");
        assert_eq!(prisma["sslcert"], CA_FILE);
        assert!(data["prisma-direct-url"].contains("@db.internal:5432/orders?"));
        let mut public = fields("pw");
        public.ca_pem = None;
        let prisma = query(&render(&public, &BTreeMap::new()).unwrap()["prisma-direct-url"]);
        assert_eq!(prisma["sslaccept"], "strict");
        assert!(!prisma.contains_key("sslcert"), "the system roots");
        let mut require = fields("pw");
        require.sslmode = SslMode::Require;
        let prisma = query(&render(&require, &BTreeMap::new()).unwrap()["prisma-direct-url"]);
        assert_eq!(prisma["sslaccept"], "accept_invalid_certs");
        let spring = render(&fields("pw"), &BTreeMap::new()).unwrap();
        assert!(!spring["SPRING_DATASOURCE_URL"].contains("password="));
        assert_eq!(
            query(&spring["SPRING_DATASOURCE_URL"])["sslrootcert"],
            CA_FILE
        );
    }

    #[test]
    fn templates_see_both_the_sidecar_and_the_server() {
        let mut f = fields("p@ss word");
        f.pooler_port = Some(6432);
        let t = BTreeMap::from([
            (
                "SQLALCHEMY_URL".to_owned(),
                "postgresql+asyncpg://{{ username|urlencode }}:{{ password|urlencode }}@{{ pooler_host }}:{{ pooler_port }}/{{ dbname|urlencode }}".to_owned(),
            ),
            (
                "MIGRATE".to_owned(),
                "{{ server_host }}:{{ server_port }} {{ server_sslmode }} {{ sslrootcert }}".to_owned(),
            ),
            ("APP".to_owned(), "{{ host }}:{{ port }} {{ sslmode }}".to_owned()),
        ]);
        let data = render(&f, &t).unwrap();
        assert_eq!(
            data["SQLALCHEMY_URL"],
            "postgresql+asyncpg://Shop%20User:p%40ss%20word@127.0.0.1:6432/orders"
        );
        assert_eq!(
            data["MIGRATE"],
            format!("db.internal:5432 verify-full {CA_FILE}")
        );
        assert_eq!(data["APP"], "127.0.0.1:6432 disable");
        // Without the pooler its variables are undefined: an error naming the key.
        let err = render(&fields("pw"), &t).unwrap_err();
        assert_eq!(err.key(), "SQLALCHEMY_URL");
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
