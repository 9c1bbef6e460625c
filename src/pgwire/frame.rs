//! Framing: where one message ends, checked against a length limit before anything is
//! allocated, and the untyped startup-phase packets (StartupMessage, SSLRequest,
//! GSSENCRequest, CancelRequest). `Ok(None)` means "need more bytes".

use super::WireError;

/// Protocol 3.0 in a StartupMessage.
pub const PROTOCOL_3_0: i32 = 196_608;
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// PostgreSQL's own limit on a startup packet.
pub const MAX_STARTUP: usize = 10_000;

/// A packet of the startup phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEnc,
    Cancel {
        pid: i32,
        key: i32,
    },
    /// Protocol 3.x with its parameters (user, database, application_name, options, …).
    Params {
        /// The minor version asked for; the pooler speaks 3.0 and says so when it is higher.
        minor: u16,
        params: Vec<(String, String)>,
    },
}

fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Parses the startup packet at the head of `buf`; returns it and its length.
pub fn startup(buf: &[u8]) -> Result<Option<(Startup, usize)>, WireError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = be_i32(buf);
    let size = usize::try_from(len).map_err(|_| WireError::BadLength(len))?;
    if !(8..=MAX_STARTUP).contains(&size) {
        return Err(WireError::BadLength(len));
    }
    if buf.len() < size {
        return Ok(None);
    }
    let code = be_i32(&buf[4..]);
    let body = &buf[8..size];
    let packet = match code {
        SSL_REQUEST if size == 8 => Startup::Ssl,
        GSSENC_REQUEST if size == 8 => Startup::GssEnc,
        CANCEL_REQUEST if size == 16 => Startup::Cancel {
            pid: be_i32(body),
            key: be_i32(&body[4..]),
        },
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => {
            return Err(WireError::Startup("request of the wrong length"));
        }
        v if v >> 16 == 3 => Startup::Params {
            minor: u16::try_from(v & 0xffff).unwrap_or(u16::MAX),
            params: params(body)?,
        },
        v => {
            return Err(WireError::Version {
                major: v >> 16,
                minor: v & 0xffff,
            });
        }
    };
    Ok(Some((packet, size)))
}

/// `name\0value\0…\0` into pairs.
fn params(body: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    let body = body
        .strip_suffix(&[0])
        .ok_or(WireError::Startup("parameters not terminated"))?;
    let mut fields = body.split(|b| *b == 0);
    let mut out = Vec::new();
    while let Some(name) = fields.next() {
        if name.is_empty() {
            break;
        }
        let value = fields
            .next()
            .ok_or(WireError::Startup("a parameter without a value"))?;
        let text = |b: &[u8]| {
            std::str::from_utf8(b)
                .map(str::to_owned)
                .map_err(|_| WireError::Startup("a parameter that is not UTF-8"))
        };
        out.push((text(name)?, text(value)?));
    }
    Ok(out)
}

/// The typed message at the head of `buf`: its tag and total size (tag byte included).
/// The length is checked against `limit` as soon as the header is in, before the body.
pub fn frame(buf: &[u8], limit: usize) -> Result<Option<(u8, usize)>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = be_i32(&buf[1..]);
    let body = usize::try_from(len).map_err(|_| WireError::BadLength(len))?;
    if body < 4 {
        return Err(WireError::BadLength(len));
    }
    if body > limit {
        return Err(WireError::TooLong {
            tag: buf[0] as char,
            len: body,
            limit,
        });
    }
    let size = body + 1;
    Ok((buf.len() >= size).then_some((buf[0], size)))
}

/// The body of a complete frame (after tag and length).
pub fn body(frame: &[u8]) -> &[u8] {
    &frame[5..]
}

/// Reads a NUL-terminated string at the head of `b`; returns it and the rest.
pub fn cstr(b: &[u8]) -> Result<(&str, &[u8]), WireError> {
    let end = b
        .iter()
        .position(|c| *c == 0)
        .ok_or(WireError::Malformed("string not terminated"))?;
    let s = std::str::from_utf8(&b[..end]).map_err(|_| WireError::Malformed("string not UTF-8"))?;
    Ok((s, &b[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    #[test]
    fn a_startup_message_parses_and_partial_input_asks_for_more() {
        let p = startup_packet(&[("user", "app"), ("database", "orders")]);
        for cut in 0..p.len() {
            assert_eq!(startup(&p[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (s, n) = startup(&p).unwrap().unwrap();
        assert_eq!(n, p.len());
        assert_eq!(
            s,
            Startup::Params {
                minor: 0,
                params: vec![
                    ("user".into(), "app".into()),
                    ("database".into(), "orders".into())
                ]
            }
        );
    }

    #[test]
    fn ssl_gssenc_and_cancel_requests_are_recognised() {
        let mut ssl = 8i32.to_be_bytes().to_vec();
        ssl.extend(SSL_REQUEST.to_be_bytes());
        assert_eq!(startup(&ssl).unwrap(), Some((Startup::Ssl, 8)));
        let mut gss = 8i32.to_be_bytes().to_vec();
        gss.extend(GSSENC_REQUEST.to_be_bytes());
        assert_eq!(startup(&gss).unwrap(), Some((Startup::GssEnc, 8)));
        let mut cancel = 16i32.to_be_bytes().to_vec();
        cancel.extend(CANCEL_REQUEST.to_be_bytes());
        cancel.extend(42i32.to_be_bytes());
        cancel.extend(7i32.to_be_bytes());
        assert_eq!(
            startup(&cancel).unwrap(),
            Some((Startup::Cancel { pid: 42, key: 7 }, 16))
        );
    }

    #[test]
    fn bad_startup_packets_are_errors_not_panics() {
        assert_eq!(
            startup(&[0xff, 0xff, 0xff, 0xff, 0, 3, 0, 0]),
            Err(WireError::BadLength(-1))
        );
        let mut huge = 20_000i32.to_be_bytes().to_vec();
        huge.extend(PROTOCOL_3_0.to_be_bytes());
        assert_eq!(startup(&huge), Err(WireError::BadLength(20_000)));
        let mut v2 = 8i32.to_be_bytes().to_vec();
        v2.extend((2i32 << 16).to_be_bytes());
        assert_eq!(startup(&v2), Err(WireError::Version { major: 2, minor: 0 }));
        let mut unterminated = 12i32.to_be_bytes().to_vec();
        unterminated.extend(PROTOCOL_3_0.to_be_bytes());
        unterminated.extend(b"user");
        assert!(startup(&unterminated).is_err());
    }

    #[test]
    fn frames_are_bounded_before_their_body_arrives() {
        let q = b"Q\x00\x00\x00\x0dSELECT 1\x00";
        assert_eq!(frame(&q[..4], 100).unwrap(), None);
        assert_eq!(frame(&q[..10], 100).unwrap(), None);
        assert_eq!(frame(q, 100).unwrap(), Some((b'Q', 14)));
        assert_eq!(body(q), b"SELECT 1\x00");
        // A 2^31 length is negative as an int32: refused, not wrapped.
        assert_eq!(
            frame(&[b'Q', 0x80, 0, 0, 0], 1 << 20),
            Err(WireError::BadLength(i32::MIN))
        );
        assert!(matches!(
            frame(&[b'Q', 0xff, 0xff, 0xff, 0xff], usize::MAX),
            Err(WireError::BadLength(-1))
        ));
        // Only the header of a 1 GiB message: refused at once.
        let big = [b'Q', 0x40, 0, 0, 0];
        assert!(matches!(
            frame(&big, 1 << 20),
            Err(WireError::TooLong { tag: 'Q', .. })
        ));
        assert_eq!(
            frame(&[b'Q', 0, 0, 0, 3], 100),
            Err(WireError::BadLength(3))
        );
        assert_eq!(
            frame(&[b'Q', 0xff, 0, 0, 0], 100),
            Err(WireError::BadLength(i32::from_be_bytes([0xff, 0, 0, 0])))
        );
    }

    #[test]
    fn strings_must_be_terminated() {
        assert_eq!(cstr(b"abc\0rest").unwrap(), ("abc", &b"rest"[..]));
        assert!(cstr(b"abc").is_err());
    }
}
