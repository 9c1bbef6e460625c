//! The messages the pooler writes (to clients as a backend, to the server as a frontend) and
//! the few it reads during authentication. Writers append to a buffer; readers take a
//! complete frame's body.

use super::WireError;
use super::frame::{PROTOCOL_3_0, cstr};

/// Appends a typed message: tag, length, body written by `f`.
fn message(out: &mut Vec<u8>, tag: u8, f: impl FnOnce(&mut Vec<u8>)) {
    out.push(tag);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    f(out);
    let len = i32::try_from(out.len() - at).unwrap_or(i32::MAX);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// Authentication request codes.
pub mod auth {
    pub const OK: i32 = 0;
    pub const CLEARTEXT: i32 = 3;
    pub const MD5: i32 = 5;
    pub const SASL: i32 = 10;
    pub const SASL_CONTINUE: i32 = 11;
    pub const SASL_FINAL: i32 = 12;
}

pub fn authentication(out: &mut Vec<u8>, code: i32, data: &[u8]) {
    message(out, b'R', |b| {
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(data);
    });
}

/// AuthenticationSASL offering SCRAM-SHA-256.
pub fn auth_sasl(out: &mut Vec<u8>) {
    authentication(out, auth::SASL, b"SCRAM-SHA-256\0\0");
}

pub fn parameter_status(out: &mut Vec<u8>, name: &str, value: &str) {
    message(out, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

/// NegotiateProtocolVersion: the newest protocol version spoken (as PostgreSQL sends it, major
/// and minor in one number), and the `_pq_.` options not recognised.
pub fn negotiate_protocol_version(out: &mut Vec<u8>, version: i32, options: &[&str]) {
    message(out, b'v', |b| {
        b.extend_from_slice(&version.to_be_bytes());
        let n = i32::try_from(options.len()).unwrap_or(i32::MAX);
        b.extend_from_slice(&n.to_be_bytes());
        for o in options {
            put_cstr(b, o);
        }
    });
}

pub fn backend_key_data(out: &mut Vec<u8>, pid: i32, key: i32) {
    message(out, b'K', |b| {
        b.extend_from_slice(&pid.to_be_bytes());
        b.extend_from_slice(&key.to_be_bytes());
    });
}

/// Transaction status of ReadyForQuery.
pub const IDLE: u8 = b'I';
pub const IN_TRANSACTION: u8 = b'T';
pub const FAILED_TRANSACTION: u8 = b'E';

pub fn ready_for_query(out: &mut Vec<u8>, status: u8) {
    message(out, b'Z', |b| b.push(status));
}

/// The type OID of `text` (pg_type), the type of every column the pooler makes up.
const TEXT_OID: u32 = 25;

/// A RowDescription of text columns, in the text format.
pub fn row_description(out: &mut Vec<u8>, columns: &[&str]) {
    message(out, b'T', |b| {
        b.extend_from_slice(
            &i16::try_from(columns.len())
                .unwrap_or(i16::MAX)
                .to_be_bytes(),
        );
        for name in columns {
            put_cstr(b, name);
            b.extend_from_slice(&0u32.to_be_bytes()); // no table
            b.extend_from_slice(&0i16.to_be_bytes()); // no column number
            b.extend_from_slice(&TEXT_OID.to_be_bytes());
            b.extend_from_slice(&(-1i16).to_be_bytes()); // variable length
            b.extend_from_slice(&(-1i32).to_be_bytes()); // no type modifier
            b.extend_from_slice(&0i16.to_be_bytes()); // text format
        }
    });
}

/// A DataRow of text values (`None` is NULL).
pub fn data_row(out: &mut Vec<u8>, values: &[Option<&str>]) {
    message(out, b'D', |b| {
        b.extend_from_slice(
            &i16::try_from(values.len())
                .unwrap_or(i16::MAX)
                .to_be_bytes(),
        );
        for v in values {
            match v {
                Some(v) => {
                    let len = i32::try_from(v.len()).unwrap_or(i32::MAX);
                    b.extend_from_slice(&len.to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
    });
}

/// An EmptyQueryResponse: the answer to an empty query string.
pub fn empty_query_response(out: &mut Vec<u8>) {
    message(out, b'I', |_| {});
}

/// A CommandComplete with its tag (`SHOW`, `PAUSE`, …).
pub fn command_complete(out: &mut Vec<u8>, tag: &str) {
    message(out, b'C', |b| put_cstr(b, tag));
}

/// An ErrorResponse with severity, SQLSTATE and message.
pub fn error_response(out: &mut Vec<u8>, severity: &str, code: &str, text: &str) {
    message(out, b'E', |b| {
        for (field, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', text),
        ] {
            b.push(field);
            put_cstr(b, value);
        }
        b.push(0);
    });
}

/// A StartupMessage (protocol 3.0) with its parameters.
pub fn startup_message(out: &mut Vec<u8>, params: &[(&str, &str)]) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    for (k, v) in params {
        put_cstr(out, k);
        put_cstr(out, v);
    }
    out.push(0);
    let len = i32::try_from(out.len() - at).unwrap_or(i32::MAX);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// The 8-byte SSLRequest.
pub fn ssl_request(out: &mut Vec<u8>) {
    out.extend_from_slice(&8i32.to_be_bytes());
    out.extend_from_slice(&super::frame::SSL_REQUEST.to_be_bytes());
}

/// PasswordMessage (cleartext or md5 text).
pub fn password(out: &mut Vec<u8>, text: &str) {
    message(out, b'p', |b| put_cstr(b, text));
}

pub fn sasl_initial_response(out: &mut Vec<u8>, mechanism: &str, data: &[u8]) {
    message(out, b'p', |b| {
        put_cstr(b, mechanism);
        let len = i32::try_from(data.len()).unwrap_or(i32::MAX);
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(data);
    });
}

pub fn sasl_response(out: &mut Vec<u8>, data: &[u8]) {
    message(out, b'p', |b| b.extend_from_slice(data));
}

pub fn query(out: &mut Vec<u8>, sql: &str) {
    message(out, b'Q', |b| put_cstr(b, sql));
}

pub fn terminate(out: &mut Vec<u8>) {
    message(out, b'X', |_| {});
}

/// A CancelRequest packet (startup phase, no tag).
pub fn cancel_request(out: &mut Vec<u8>, pid: i32, key: i32) {
    out.extend_from_slice(&16i32.to_be_bytes());
    out.extend_from_slice(&super::frame::CANCEL_REQUEST.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(&key.to_be_bytes());
}

/// A client's SASLInitialResponse body: mechanism and data.
pub fn parse_sasl_initial(body: &[u8]) -> Result<(&str, &[u8]), WireError> {
    let (mechanism, rest) = cstr(body)?;
    if rest.len() < 4 {
        return Err(WireError::Malformed("SASLInitialResponse too short"));
    }
    let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let data = &rest[4..];
    if len != -1 && usize::try_from(len).ok() != Some(data.len()) {
        return Err(WireError::Malformed("SASLInitialResponse length"));
    }
    Ok((mechanism, data))
}

/// An Authentication request from the server: code and data.
pub fn parse_authentication(body: &[u8]) -> Result<(i32, &[u8]), WireError> {
    if body.len() < 4 {
        return Err(WireError::Malformed("Authentication too short"));
    }
    Ok((
        i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
        &body[4..],
    ))
}

/// ParameterStatus: name and value.
pub fn parse_parameter_status(body: &[u8]) -> Result<(&str, &str), WireError> {
    let (name, rest) = cstr(body)?;
    let (value, _) = cstr(rest)?;
    Ok((name, value))
}

/// BackendKeyData: pid and secret key.
pub fn parse_backend_key_data(body: &[u8]) -> Result<(i32, i32), WireError> {
    if body.len() < 8 {
        return Err(WireError::Malformed("BackendKeyData too short"));
    }
    Ok((
        i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
        i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
    ))
}

/// A DataRow's fields as text (NULL as None).
pub fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, WireError> {
    let short = WireError::Malformed("DataRow too short");
    let (n, mut rest) = body.split_at_checked(2).ok_or(short.clone())?;
    let n = i16::from_be_bytes([n[0], n[1]]);
    let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for _ in 0..n {
        let (len, after) = rest.split_at_checked(4).ok_or(short.clone())?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        match usize::try_from(len) {
            Err(_) => {
                out.push(None);
                rest = after;
            }
            Ok(len) => {
                let (value, after) = after.split_at_checked(len).ok_or(short.clone())?;
                out.push(Some(String::from_utf8_lossy(value).into_owned()));
                rest = after;
            }
        }
    }
    Ok(out)
}

/// An ErrorResponse's SQLSTATE and message.
/// Whether a client may send a message with this tag after its startup (PostgreSQL docs,
/// "Message Formats": the frontend messages): Bind, Close, CopyData, CopyDone, CopyFail,
/// Describe, Execute, Flush, FunctionCall, Parse, Query, Sync, Terminate. Anything else (a
/// second StartupMessage, a server's message, a password message) breaks the protocol.
pub fn frontend_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'B' | b'C' | b'd' | b'c' | b'f' | b'D' | b'E' | b'H' | b'F' | b'P' | b'Q' | b'S' | b'X'
    )
}

/// The SQLSTATE and message of an ErrorResponse or NoticeResponse body; empty strings for
/// fields it lacks (a server may omit them).
pub fn parse_error(body: &[u8]) -> (String, String) {
    let (mut code, mut text) = (String::new(), String::new());
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Ok((value, next)) = cstr(after) else {
            break;
        };
        match field {
            b'C' => code = value.to_owned(),
            b'M' => text = value.to_owned(),
            _ => {}
        }
        rest = next;
    }
    (code, text)
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_error_without_sqlstate_or_terminator_parses_to_empty_fields() {
        assert_eq!(
            parse_error(b"Mno code here\0\0"),
            (String::new(), "no code here".into())
        );
        assert_eq!(parse_error(b""), (String::new(), String::new()));
        assert_eq!(parse_error(b"C08P01"), (String::new(), String::new()));
        assert_eq!(
            parse_error(b"SFATAL\0C28000\0"),
            ("28000".into(), String::new())
        );
    }

    #[test]
    fn only_frontend_messages_pass_after_startup() {
        for tag in *b"BCdcfDEHFPQSX" {
            assert!(frontend_tag(tag), "{}", tag as char);
        }
        // A second StartupMessage starts with a length, not a tag; p, R, Z, T, K are not the
        // client's to send.
        for tag in [0u8, 3, b'p', b'R', b'Z', b'T', b'K', b'N', b'A'] {
            assert!(!frontend_tag(tag), "{tag}");
        }
    }
    use super::*;
    use crate::pgwire::frame::{body, frame};

    #[test]
    fn written_messages_frame_and_parse_back() {
        let mut out = Vec::new();
        parameter_status(&mut out, "TimeZone", "UTC");
        backend_key_data(&mut out, 7, -9);
        ready_for_query(&mut out, IDLE);
        error_response(&mut out, "FATAL", "53300", "too many clients");
        let (tag, n) = frame(&out, 1024).unwrap().unwrap();
        assert_eq!(tag, b'S');
        assert_eq!(
            parse_parameter_status(body(&out[..n])).unwrap(),
            ("TimeZone", "UTC")
        );
        let rest = &out[n..];
        let (tag, m) = frame(rest, 1024).unwrap().unwrap();
        assert_eq!(tag, b'K');
        assert_eq!(parse_backend_key_data(body(&rest[..m])).unwrap(), (7, -9));
        let rest = &rest[m..];
        assert_eq!(rest[..6], *b"Z\0\0\0\x05I");
        let rest = &rest[6..];
        let (tag, _) = frame(rest, 1024).unwrap().unwrap();
        assert_eq!(tag, b'E');
        assert_eq!(
            parse_error(body(rest)),
            ("53300".to_owned(), "too many clients".to_owned())
        );
    }

    #[test]
    fn sasl_initial_response_round_trips_and_checks_its_length() {
        let mut out = Vec::new();
        sasl_initial_response(&mut out, "SCRAM-SHA-256", b"n,,n=,r=abc");
        let (mech, data) = parse_sasl_initial(body(&out)).unwrap();
        assert_eq!((mech, data), ("SCRAM-SHA-256", &b"n,,n=,r=abc"[..]));
        let mut bad = body(&out).to_vec();
        bad.push(b'x');
        assert!(parse_sasl_initial(&bad).is_err());
        assert!(parse_sasl_initial(b"SCRAM").is_err());
    }

    #[test]
    fn a_startup_message_carries_its_parameters() {
        let mut out = Vec::new();
        startup_message(&mut out, &[("user", "app"), ("database", "db")]);
        let (s, n) = crate::pgwire::frame::startup(&out).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert_eq!(
            s,
            crate::pgwire::frame::Startup::Params {
                minor: 0,
                params: vec![
                    ("user".into(), "app".into()),
                    ("database".into(), "db".into())
                ]
            }
        );
    }
}
