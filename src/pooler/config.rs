//! The pooler's configuration, parsed once into typed structs: the upstream server and its
//! credentials (from the files of the mounted connection Secret and/or flags), and the pool's
//! settings. A bad value is one line naming the setting; `main` exits before binding a port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::api::SslMode;
use crate::pgwire::scram::Verifier;
use crate::postgres::TlsMaterial;

/// How a transaction's server connection is shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Bound at a transaction's first message, released at ReadyForQuery 'I'.
    Transaction,
    /// Bound for the client's life; reset with DISCARD ALL before reuse.
    Session,
}

/// When a server connection is reset (RESET ALL and the rest) before another client's
/// transaction in transaction mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerReset {
    /// When a transaction on it ran anything but plain queries (a function call, DML, CALL,
    /// DO, SET…): select-only work pays nothing.
    Auto,
    /// On every change of client, also after plain queries: for functions that a view or a
    /// row-level-security policy calls and that change settings.
    Always,
}

/// How clients prove who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    Scram,
    Md5,
    Trust,
}

/// Where the server is and who to log in as. Replaced as a whole when the Secret changes.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    /// The role's password on the server (`server-password`, else `password`).
    pub password: String,
    /// A rotation's next server password (`server-password-next`): tried when the server
    /// refuses `password`, for the moment between the switch on the server and the kubelet
    /// bringing the new Secret.
    pub password_next: Option<String>,
    /// What clients authenticate with (`password`): theirs to the sidecar, which a rotation
    /// of the role's password does not change.
    pub client_password: String,
    pub sslmode: SslMode,
    pub tls: TlsMaterial,
}

/// Everything the pooler runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub http: SocketAddr,
    pub mode: Mode,
    pub client_auth: ClientAuth,
    /// PBKDF2 iterations of the clients' SCRAM verifier (each login makes the client compute
    /// them): 4096 as PostgreSQL by default; the injected sidecar of a generated password
    /// uses 16, which lose nothing against guessing a 32-character random password.
    pub client_scram_iterations: u32,
    pub pool_size: usize,
    pub min_idle: usize,
    pub max_clients: usize,
    pub server_idle_timeout: Duration,
    pub server_lifetime: Duration,
    pub query_wait_timeout: Duration,
    pub connect_timeout: Duration,
    pub shutdown_grace: Duration,
    pub application_name: String,
    pub max_message_bytes: usize,
    /// Named statements kept prepared per server connection in transaction mode; 0 passes
    /// statement names through untouched.
    pub max_prepared_statements: usize,
    /// When a server connection is reset before another client's transaction.
    pub server_reset: ServerReset,
    /// The mounted Secret, watched for changes.
    pub secret_dir: Option<PathBuf>,
}

/// A setting that cannot be used, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    pub setting: String,
    pub problem: String,
}

fn bad(setting: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.to_owned(),
        problem: problem.into(),
    }
}

/// Values given as flags or environment variables; each wins over the Secret's file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub sslmode: Option<SslMode>,
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub server_name: Option<String>,
}

/// The Secret keys the pooler reads. The server's address is `direct-host`, `direct-port`
/// and `direct-sslmode` (with the pooler on, `host`, `port` and `sslmode` name the sidecar
/// itself, docs/secret.md); a Secret without them (written before they existed, or by hand)
/// gives `host`, `port` and `sslmode`.
pub const SECRET_KEYS: [&str; 14] = [
    "direct-host",
    "direct-port",
    "direct-sslmode",
    "host",
    "port",
    "dbname",
    "username",
    "password",
    "server-password",
    "server-password-next",
    "sslmode",
    "ca.crt",
    "tls.crt",
    "tls.key",
];

/// Reads the Secret's files that exist (a missing directory is an error; a missing key is not).
pub fn read_secret_dir(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, ConfigError> {
    if !dir.is_dir() {
        return Err(bad(
            "--secret-dir",
            format!("{} is not a directory", dir.display()),
        ));
    }
    let mut files = BTreeMap::new();
    for key in SECRET_KEYS {
        match std::fs::read(dir.join(key)) {
            Ok(b) => {
                files.insert(key.to_owned(), b);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(bad(
                    key,
                    format!("reading {}: {e}", dir.join(key).display()),
                ));
            }
        }
    }
    Ok(files)
}

/// The upstream from the Secret's files and the overrides. Pure.
pub fn upstream(files: &BTreeMap<String, Vec<u8>>, o: &Overrides) -> Result<Upstream, ConfigError> {
    let text = |key: &str| -> Result<Option<String>, ConfigError> {
        files
            .get(key)
            .map(|b| {
                String::from_utf8(b.clone())
                    .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                    .map_err(|_| bad(key, "not UTF-8 text"))
            })
            .transpose()
    };
    let required = |value: Option<String>, key: &str, flag: &str| {
        value.filter(|v| !v.is_empty()).ok_or_else(|| {
            bad(
                flag,
                format!("missing: give {flag} or a Secret with key {key}"),
            )
        })
    };
    // The server's own key when the Secret has it, else the plain one.
    let server = |key: &str| -> Result<Option<String>, ConfigError> {
        Ok(text(&format!("direct-{key}"))?.or(text(key)?))
    };
    let host = required(o.host.clone().or(server("host")?), "host", "--host")?;
    let port = match o.port {
        Some(p) => p,
        None => match server("port")? {
            Some(p) => p
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("port", format!("{p:?} is not a port number 1-65535")))?,
            None => 5432,
        },
    };
    let dbname = required(o.dbname.clone().or(text("dbname")?), "dbname", "--dbname")?;
    let user = required(o.user.clone().or(text("username")?), "username", "--user")?;
    let client_password = o.password.clone().or(text("password")?).unwrap_or_default();
    let password = match &o.password {
        Some(p) => p.clone(),
        None => text("server-password")?.unwrap_or_else(|| client_password.clone()),
    };
    let password_next = text("server-password-next")?.filter(|p| !p.is_empty());
    let sslmode = match o.sslmode {
        Some(m) => m,
        None => match server("sslmode")? {
            Some(m) => m.trim().parse().map_err(|e: String| bad("sslmode", e))?,
            None => SslMode::VerifyFull,
        },
    };
    let file =
        |flag: &str, path: &Option<PathBuf>, key: &str| -> Result<Option<Vec<u8>>, ConfigError> {
            match path {
                Some(p) => std::fs::read(p)
                    .map(Some)
                    .map_err(|e| bad(flag, format!("reading {}: {e}", p.display()))),
                None => Ok(files.get(key).cloned()),
            }
        };
    let tls = TlsMaterial {
        ca_pem: file("--sslrootcert", &o.sslrootcert, "ca.crt")?,
        client_cert_pem: file("--sslcert", &o.sslcert, "tls.crt")?,
        client_key_pem: file("--sslkey", &o.sslkey, "tls.key")?,
        server_name: o.server_name.clone(),
    };
    if tls.client_cert_pem.is_some() != tls.client_key_pem.is_some() {
        return Err(bad(
            "tls.crt/tls.key",
            "a client certificate needs its key, and a key its certificate",
        ));
    }
    // Build the TLS configuration once now, so a bad CA or key is reported at start.
    crate::postgres::tls::client_config(sslmode, &tls).map_err(|e| bad("TLS", e.to_string()))?;
    Ok(Upstream {
        host,
        port,
        dbname,
        user,
        password,
        password_next,
        client_password,
        sslmode,
        tls,
    })
}

/// What clients authenticate against: the Secret's `password` (the apps' own).
pub fn client_verifier(u: &Upstream, s: &Settings) -> Result<Option<Verifier>, ConfigError> {
    match s.client_auth {
        ClientAuth::Scram => {
            Verifier::with_iterations(&u.client_password, s.client_scram_iterations)
                .map(Some)
                .map_err(|e| bad("password", e.to_string()))
        }
        ClientAuth::Md5 | ClientAuth::Trust => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn the_operators_secret_is_enough() {
        let f = files(&[
            ("host", "db.internal"),
            ("port", "5433\n"),
            ("dbname", "orders"),
            ("username", "app"),
            ("password", "p@ss word"),
            ("sslmode", "require"),
        ]);
        let u = upstream(&f, &Overrides::default()).unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.dbname.as_str(), u.user.as_str()),
            ("db.internal", 5433, "orders", "app")
        );
        assert_eq!(u.password, "p@ss word");
        assert_eq!(u.sslmode, SslMode::Require);
    }

    #[test]
    fn with_the_pooler_on_the_server_is_the_direct_keys_not_the_sidecar() {
        let f = files(&[
            ("host", "127.0.0.1"),
            ("port", "6432"),
            ("sslmode", "disable"),
            ("direct-host", "db.internal"),
            ("direct-port", "5433"),
            ("direct-sslmode", "verify-full"),
            ("dbname", "orders"),
            ("username", "app"),
        ]);
        let u = upstream(&f, &Overrides::default()).unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.sslmode),
            ("db.internal", 5433, SslMode::VerifyFull)
        );
    }

    #[test]
    fn clients_use_password_the_server_gets_server_password_and_the_staged_next() {
        let f = files(&[
            ("host", "db"),
            ("dbname", "d"),
            ("username", "u"),
            ("password", "client"),
            ("server-password", "role"),
            ("server-password-next", "next"),
        ]);
        let u = upstream(&f, &Overrides::default()).unwrap();
        assert_eq!(
            (
                u.client_password.as_str(),
                u.password.as_str(),
                u.password_next.as_deref()
            ),
            ("client", "role", Some("next"))
        );
        // A Secret from before: one password for both.
        let old = files(&[
            ("host", "db"),
            ("dbname", "d"),
            ("username", "u"),
            ("password", "pw"),
        ]);
        let u = upstream(&old, &Overrides::default()).unwrap();
        assert_eq!(
            (u.client_password.as_str(), u.password.as_str()),
            ("pw", "pw")
        );
        assert_eq!(u.password_next, None);
    }

    #[test]
    fn flags_win_and_bad_values_name_their_setting() {
        let f = files(&[("host", "a"), ("dbname", "d"), ("username", "u")]);
        let o = Overrides {
            host: Some("b".into()),
            sslmode: Some(SslMode::Disable),
            ..Overrides::default()
        };
        assert_eq!(upstream(&f, &o).unwrap().host, "b");
        let e = upstream(
            &files(&[("dbname", "d"), ("username", "u")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(e.setting, "--host", "{e}");
        let mut f2 = f.clone();
        f2.insert("port".into(), b"70000".to_vec());
        assert_eq!(upstream(&f2, &o).unwrap_err().setting, "port");
        let mut f3 = f.clone();
        f3.insert("sslmode".into(), b"sometimes".to_vec());
        let e = upstream(&f3, &Overrides::default()).unwrap_err();
        assert!(e.to_string().starts_with("sslmode: unknown sslmode"), "{e}");
        let mut f4 = f;
        f4.insert("tls.crt".into(), b"x".to_vec());
        assert_eq!(upstream(&f4, &o).unwrap_err().setting, "tls.crt/tls.key");
    }

    #[test]
    fn a_garbage_ca_is_reported_at_start() {
        let f = files(&[
            ("host", "a"),
            ("dbname", "d"),
            ("username", "u"),
            ("ca.crt", "not a certificate"),
        ]);
        assert_eq!(
            upstream(&f, &Overrides::default()).unwrap_err().setting,
            "TLS"
        );
    }
}
