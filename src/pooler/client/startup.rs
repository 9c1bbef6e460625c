//! A client's startup: SSLRequest and GSSENCRequest answered 'N', a CancelRequest passed to
//! the pool, NegotiateProtocolVersion where the client asks for more than 3.0, the user and
//! database checked, authentication against the Secret's password (SCRAM-SHA-256, md5 or
//! trust), then ParameterStatus, BackendKeyData and ReadyForQuery as PostgreSQL sends them.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{ClientError, fatal, fill};
use crate::pgwire::frame::{self, Startup, body};
use crate::pgwire::messages::{self, IDLE, auth};
use crate::pgwire::sqlstate::{
    CANNOT_CONNECT_NOW, CONNECTION_FAILURE, INVALID_AUTHORIZATION, INVALID_CATALOG_NAME,
    INVALID_PARAMETER_VALUE, INVALID_PASSWORD, PROTOCOL_VIOLATION, SYSTEM_ERROR,
};
use crate::pgwire::{WireError, scram};
use crate::pooler::config::ClientAuth;
use crate::pooler::pool::{Lease, Pool};
use crate::pooler::server::ServerError;
use crate::postgres::quote::literal;

/// Startup parameters that are not session settings.
const NOT_SETTINGS: [&str; 4] = ["user", "database", "replication", "options"];

/// Reads one typed message during authentication.
async fn read_auth_message(
    socket: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<(u8, BytesMut), ClientError> {
    loop {
        if let Some((tag, n)) = frame::frame(buf, 64 * 1024)? {
            return Ok((tag, buf.split_to(n)));
        }
        fill(socket, buf).await?;
    }
}

/// The admin console's database names (PgBouncer's, and dbconn's own).
pub const ADMIN_DATABASES: [&str; 2] = ["pgbouncer", "dbconn"];

/// What a client logged in to.
pub(super) enum Started {
    /// A session: its settings and cancel key.
    Session(BTreeMap<String, String>, (i32, i32)),
    /// The admin console.
    Admin,
}

/// The startup exchange; returns the client's session settings.
pub(super) async fn startup(
    socket: &mut TcpStream,
    buf: &mut BytesMut,
    pool: &Arc<Pool>,
) -> Result<Started, ClientError> {
    let params = loop {
        match frame::startup(buf)? {
            None => fill(socket, buf).await?,
            Some((packet, n)) => {
                buf.advance(n);
                match packet {
                    // TLS for clients is off: loopback never leaves the pod.
                    Startup::Ssl | Startup::GssEnc => socket.write_all(b"N").await?,
                    Startup::Cancel { pid, key } => {
                        pool.cancel((pid, key)).await;
                        return Err(ClientError::Gone);
                    }
                    Startup::Params { minor, params } => {
                        // A newer minor version or protocol options: say what is spoken, as
                        // PostgreSQL does, before authentication.
                        let options: Vec<&str> = params
                            .iter()
                            .map(|(k, _)| k.as_str())
                            .filter(|k| k.starts_with("_pq_."))
                            .collect();
                        if minor > 0 || !options.is_empty() {
                            let mut out = Vec::new();
                            messages::negotiate_protocol_version(
                                &mut out,
                                frame::PROTOCOL_3_0,
                                &options,
                            );
                            socket.write_all(&out).await?;
                        }
                        break params;
                    }
                }
            }
        }
    };
    let creds = pool.credentials();
    let want = &creds.upstream;
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let user = get("user")
        .ok_or_else(|| fatal(INVALID_AUTHORIZATION, "no user in the startup message"))?;
    let database = get("database").unwrap_or(user);
    if user != want.user {
        return Err(fatal(
            INVALID_AUTHORIZATION,
            format!("this pooler serves user {:?}, not {user:?}", want.user),
        ));
    }
    let admin = ADMIN_DATABASES.contains(&database);
    if database != want.dbname && !admin {
        return Err(fatal(
            INVALID_CATALOG_NAME,
            format!(
                "this pooler serves database {:?}, not {database:?}",
                want.dbname
            ),
        ));
    }
    if get("replication").is_some_and(|r| r != "false" && r != "0") {
        return Err(fatal(
            PROTOCOL_VIOLATION,
            "replication connections are not pooled",
        ));
    }
    authenticate(socket, buf, pool, user).await?;
    if admin {
        let mut out = Vec::with_capacity(256);
        messages::authentication(&mut out, auth::OK, &[]);
        for (k, v) in [
            ("server_version", "16.0 (dbconn pooler)"),
            ("client_encoding", "UTF8"),
            ("server_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("standard_conforming_strings", "on"),
            ("integer_datetimes", "on"),
        ] {
            messages::parameter_status(&mut out, k, v);
        }
        messages::backend_key_data(&mut out, 0, 0);
        messages::ready_for_query(&mut out, IDLE);
        socket.write_all(&out).await?;
        return Ok(Started::Admin);
    }

    let mut settings: BTreeMap<String, String> = params
        .iter()
        .filter(|(k, _)| !NOT_SETTINGS.contains(&k.as_str()) && !k.starts_with("_pq_."))
        .cloned()
        .collect();
    if let Some(options) = get("options") {
        settings.extend(parse_options(options).map_err(|m| fatal(INVALID_PARAMETER_VALUE, m))?);
    }
    // The first client before any server login: learn the server's parameters now, so the
    // client is told server_version, standard_conforming_strings and the rest.
    if pool.with_server_params(BTreeMap::is_empty) {
        login_lease(pool).await?.release();
    }
    // The client's own value of each setting the server reports (ParameterStatus; a setting's
    // name matches whatever its case, as libpq's PGTZ sends `timezone`), spelled as the server
    // spells it.
    let (theirs, server_version) = pool.with_server_params(|server| {
        let theirs: Vec<(String, &String)> = settings
            .iter()
            .filter_map(|(k, v)| {
                let (name, value) = server.iter().find(|(s, _)| s.eq_ignore_ascii_case(k))?;
                (value != v).then(|| (name.clone(), v))
            })
            .collect();
        (theirs, server.get("server_version").cloned())
    });
    let mut own = BTreeMap::new();
    for (name, v) in theirs {
        let shown = if name == "application_name" {
            clean_ascii(v, server_version.as_deref()).into_owned()
        } else if let Some(s) = pool.spelling(&name, v) {
            s
        } else {
            let s = server_spelling(pool, &name, v).await?;
            pool.remember_spelling(&name, v, s.clone());
            s
        };
        own.insert(name, shown);
    }
    let mut out = Vec::with_capacity(512);
    messages::authentication(&mut out, auth::OK, &[]);
    pool.with_server_params(|server| {
        for (k, v) in server {
            messages::parameter_status(&mut out, k, own.get(k).unwrap_or(v));
        }
        // Always reported, if only empty.
        if !server.contains_key("application_name") {
            messages::parameter_status(&mut out, "application_name", "");
        }
    });
    let mut key = [0u8; 8];
    getrandom::fill(&mut key).map_err(|e| fatal(SYSTEM_ERROR, format!("random: {e}")))?;
    let pid = i32::from_be_bytes([key[0], key[1], key[2], key[3]]) & i32::MAX;
    let secret = i32::from_be_bytes([key[4], key[5], key[6], key[7]]);
    messages::backend_key_data(&mut out, pid, secret);
    messages::ready_for_query(&mut out, IDLE);
    socket.write_all(&out).await?;
    pool.serving((pid, secret), None);
    Ok(Started::Session(settings, (pid, secret)))
}

async fn authenticate(
    socket: &mut TcpStream,
    buf: &mut BytesMut,
    pool: &Pool,
    user: &str,
) -> Result<(), ClientError> {
    let failed = || {
        fatal(
            INVALID_PASSWORD,
            format!("password authentication failed for user {user:?}"),
        )
    };
    let creds = pool.credentials();
    let mut out = Vec::with_capacity(256);
    match pool.settings.client_auth {
        ClientAuth::Trust => Ok(()),
        ClientAuth::Md5 => {
            let mut salt = [0u8; 4];
            getrandom::fill(&mut salt).map_err(|e| fatal(SYSTEM_ERROR, format!("random: {e}")))?;
            messages::authentication(&mut out, auth::MD5, &salt);
            socket.write_all(&out).await?;
            let (tag, msg) = read_auth_message(socket, buf).await?;
            if tag != b'p' {
                return Err(WireError::Malformed("expected a password message").into());
            }
            let (given, _) = frame::cstr(body(&msg))?;
            let expected = postgres_protocol::authentication::md5_hash(
                user.as_bytes(),
                creds.upstream.client_password.as_bytes(),
                salt,
            );
            if given == expected {
                Ok(())
            } else {
                Err(failed())
            }
        }
        ClientAuth::Scram => {
            let verifier = creds.verifier.as_ref().ok_or_else(failed)?;
            messages::auth_sasl(&mut out);
            socket.write_all(&out).await?;
            let (tag, msg) = read_auth_message(socket, buf).await?;
            if tag != b'p' {
                return Err(WireError::Malformed("expected SASLInitialResponse").into());
            }
            let (mechanism, data) = messages::parse_sasl_initial(body(&msg))?;
            if mechanism != "SCRAM-SHA-256" {
                return Err(fatal(
                    INVALID_AUTHORIZATION,
                    format!("SASL mechanism {mechanism:?} is not supported"),
                ));
            }
            let mut nonce = [0u8; 18];
            getrandom::fill(&mut nonce).map_err(|e| fatal(SYSTEM_ERROR, format!("random: {e}")))?;
            let nonce = base64::engine::general_purpose::STANDARD.encode(nonce);
            let (exchange, first) =
                scram::server_first(verifier, data, &nonce).map_err(|e| match e {
                    scram::ScramError::ChannelBinding => {
                        fatal(INVALID_AUTHORIZATION, e.to_string())
                    }
                    _ => failed(),
                })?;
            out.clear();
            messages::authentication(&mut out, auth::SASL_CONTINUE, first.as_bytes());
            socket.write_all(&out).await?;
            let (tag, msg) = read_auth_message(socket, buf).await?;
            if tag != b'p' {
                return Err(WireError::Malformed("expected SASLResponse").into());
            }
            let last =
                scram::server_final(verifier, &exchange, body(&msg)).map_err(|_| failed())?;
            out.clear();
            messages::authentication(&mut out, auth::SASL_FINAL, last.as_bytes());
            socket.write_all(&out).await?;
            Ok(())
        }
    }
}

/// The `-c name=value` (or `--name=value`) settings of the startup `options` parameter,
/// with libpq's backslash escapes. Pure.
fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().ok_or("options: -c without a setting")?
        } else if let Some(s) = w.strip_prefix("-c").or_else(|| w.strip_prefix("--")) {
            s.to_owned()
        } else {
            return Err(format!(
                "options: {w:?} is not supported; use -c name=value"
            ));
        };
        let (k, v) = setting
            .split_once('=')
            .ok_or_else(|| format!("options: {setting:?} is not name=value"))?;
        out.push((k.replace('-', "_"), v.to_owned()));
    }
    Ok(out)
}

/// A server connection for a login that must ask the server something first.
async fn login_lease(pool: &Arc<Pool>) -> Result<Lease, ClientError> {
    pool.checkout().await.map_err(|e| {
        fatal(
            CANNOT_CONNECT_NOW,
            format!("cannot reach the server yet: {e}"),
        )
    })
}

/// How the server spells `value` of the reported setting `name` (`SET LOCAL` in a
/// transaction of its own, so the server connection keeps nothing): `iso` is `ISO, MDY`. A
/// value the server refuses fails the login with the server's message, as a login straight
/// to PostgreSQL fails (runtime-config-client.html).
async fn server_spelling(pool: &Arc<Pool>, name: &str, value: &str) -> Result<String, ClientError> {
    let mut lease = login_lease(pool).await?;
    let sql = format!(
        "SELECT pg_catalog.set_config({}, {}, true)",
        literal(name),
        literal(value)
    );
    match super::transaction::run(lease.conn(), &sql, pool.settings.max_message_bytes).await {
        Ok(row) => {
            lease.release();
            Ok(row
                .and_then(|r| r.into_iter().next().flatten())
                .unwrap_or_else(|| value.to_owned()))
        }
        Err(ServerError::Refused { code, message }) => {
            lease.release();
            let code = if code == INVALID_PARAMETER_VALUE {
                INVALID_PARAMETER_VALUE
            } else {
                PROTOCOL_VIOLATION
            };
            Err(fatal(code, message))
        }
        // The lease is dropped: a connection in an unknown state closes.
        Err(e) => Err(fatal(
            CONNECTION_FAILURE,
            format!("checking {name} with the server: {e}"),
        )),
    }
}

/// `application_name` as the server stores and reports it: each byte that is not printable
/// ASCII becomes `?` before PostgreSQL 16 and a C-style `\xNN` escape from 16 on
/// (`pg_clean_ascii`; PostgreSQL's documentation, runtime-config-logging.html, the
/// application_name setting). `server_version` is the server's ParameterStatus; unknown means
/// the newer rule.
fn clean_ascii<'a>(value: &'a str, server_version: Option<&str>) -> std::borrow::Cow<'a, str> {
    if value.bytes().all(|b| (32..=126).contains(&b)) {
        return std::borrow::Cow::Borrowed(value);
    }
    let major: Option<u32> = server_version.and_then(|v| {
        let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
        v[..digits].parse().ok()
    });
    let mut out = String::with_capacity(value.len() * 4);
    for b in value.bytes() {
        match b {
            32..=126 => out.push(char::from(b)),
            _ if major.is_some_and(|m| m < 16) => out.push('?'),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_name_is_cleaned_as_the_server_version_cleans_it() {
        assert_eq!(
            clean_ascii("billing-1 (eu)", Some("15.18")),
            "billing-1 (eu)"
        );
        assert_eq!(
            clean_ascii("billing é", Some("15.18 (Debian 15.18-0+deb12u1)")),
            "billing ??"
        );
        assert_eq!(clean_ascii("tab\there", Some("9.6.24")), "tab?here");
        assert_eq!(clean_ascii("billing é", Some("16.4")), "billing \\xc3\\xa9");
        assert_eq!(clean_ascii("あ", Some("17.2")), "\\xe3\\x81\\x82");
        assert_eq!(clean_ascii("x\u{7f}", None), "x\\x7f");
    }

    #[test]
    fn startup_options_become_settings() {
        assert_eq!(
            parse_options("-c search_path=app\\,\\ public --statement-timeout=5s").unwrap(),
            vec![
                ("search_path".to_owned(), "app, public".to_owned()),
                ("statement_timeout".to_owned(), "5s".to_owned())
            ]
        );
        assert_eq!(
            parse_options("-c work_mem=4MB").unwrap(),
            vec![("work_mem".to_owned(), "4MB".to_owned())]
        );
        assert!(parse_options("-x").is_err());
        assert!(parse_options("-c novalue").is_err());
    }
}
