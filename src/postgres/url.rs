//! `postgres://` URLs: parsing (for urlSecretRef and `dbconn check`) and the percent-encoding
//! used when rendering them. Pure.

use crate::api::SslMode;

/// The parts of a connection URL dbconn uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PgUrl {
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub database: Option<String>,
    pub sslmode: Option<SslMode>,
}

/// What is wrong with a URL. Messages never repeat the URL: it may hold a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the URL must start with postgres:// or postgresql://")]
    Scheme,
    #[error("the URL names no host")]
    NoHost,
    #[error("the URL's port is not a number from 1 to 65535")]
    Port,
    #[error("the URL has a bad percent-encoding")]
    Encoding,
    #[error(
        "the URL's sslmode is not one of disable, allow, prefer, require, verify-ca, verify-full"
    )]
    SslMode,
}

/// Parses `postgres[ql]://[user[:password]@]host[:port][/database][?sslmode=…&…]`.
pub fn parse(url: &str) -> Result<PgUrl, UrlError> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or(UrlError::Scheme)?;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let mut out = PgUrl::default();
    if let Some(userinfo) = userinfo {
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        out.user = Some(decode(user)?).filter(|u| !u.is_empty());
        out.password = password.map(decode).transpose()?;
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or(UrlError::NoHost)?;
        (h.to_owned(), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (hostport.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    out.host = decode(&host)?;
    out.port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or(UrlError::Port)?,
        ),
        None => None,
    };
    out.database = Some(decode(path)?).filter(|d| !d.is_empty());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match decode(k)?.as_str() {
            "sslmode" => out.sslmode = Some(decode(v)?.parse().map_err(|_| UrlError::SslMode)?),
            "user" => out.user = Some(decode(v)?),
            "password" => out.password = Some(decode(v)?),
            "dbname" => out.database = Some(decode(v)?),
            _ => {}
        }
    }
    Ok(out)
}

fn decode(s: &str) -> Result<String, UrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or(UrlError::Encoding)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| UrlError::Encoding)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::Encoding)
}

/// RFC 3986's reserved and other non-unreserved bytes: all but ALPHA, DIGIT, `-._~`.
const NOT_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes everything but RFC 3986's unreserved characters, so any user name,
/// password or database name survives inside a URL.
pub fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, NOT_UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_part() {
        let u = parse("postgresql://ad%40min:p%3Ass@db.internal:6543/my%20db?sslmode=verify-ca&application_name=x").unwrap();
        assert_eq!(u.user.as_deref(), Some("ad@min"));
        assert_eq!(u.password.as_deref(), Some("p:ss"));
        assert_eq!(u.host, "db.internal");
        assert_eq!(u.port, Some(6543));
        assert_eq!(u.database.as_deref(), Some("my db"));
        assert_eq!(u.sslmode, Some(SslMode::VerifyCa));
        let v6 = parse("postgres://[::1]:5432").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", Some(5432)));
    }

    #[test]
    fn errors_never_echo_the_url() {
        for bad in [
            "mysql://a:secret@h/db",
            "postgres://a:secret@/db",
            "postgres://a:secret@h:0/db",
            "postgres://a:secret@h/db?sslmode=verify",
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn encode_round_trips_hostile_text() {
        let hostile = "p@ss:/?#%'\" \\w0rd";
        assert_eq!(decode(&encode(hostile)).unwrap(), hostile);
        assert_eq!(encode("a b"), "a%20b");
    }
}
