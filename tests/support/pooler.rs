//! A `dbconn pooler` process in front of the bed's PostgreSQL, and a database and role for
//! each test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{bed, http_get, unique};

/// A database and a login role for one test, made by the bed's superuser.
pub struct App {
    pub db: String,
    pub user: String,
    pub password: String,
}

pub fn app(prefix: &str) -> App {
    app_on(&bed().postgres, prefix)
}

pub fn app_on(pg: &testbed::PostgresInfo, prefix: &str) -> App {
    let db = unique(prefix).replace('-', "_");
    let user = format!("{db}_app");
    let password = format!("pw '{}' with spaces", unique("x"));
    pg.psql("postgres", &format!("CREATE DATABASE {db}"))
        .expect("database");
    pg.psql(
        "postgres",
        &format!(
            "CREATE ROLE {user} LOGIN PASSWORD {}; GRANT ALL ON DATABASE {db} TO {user}; ALTER DATABASE {db} OWNER TO {user}",
            dbconn::postgres::quote::literal(&password)
        ),
    )
    .expect("role");
    App { db, user, password }
}

/// A running pooler, killed when dropped (even when the test fails).
pub struct Pooler {
    pub child: Child,
    pub port: u16,
    pub http: u16,
    pub secret_dir: PathBuf,
    pub log: PathBuf,
}

impl Drop for Pooler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Pooler {
    /// Writes a Secret directory as the operator would and starts the pooler on it.
    pub fn start(a: &App, upstream_port: u16, extra: &[&str]) -> Pooler {
        Pooler::start_with_ca(a, upstream_port, &bed().ca_cert, extra)
    }

    pub fn start_with_ca(
        a: &App,
        upstream_port: u16,
        ca: &std::path::Path,
        extra: &[&str],
    ) -> Pooler {
        let secret_dir = std::env::temp_dir().join(unique("pooler-secret"));
        std::fs::create_dir_all(&secret_dir).expect("dir");
        let ca = std::fs::read_to_string(ca).expect("ca");
        for (k, v) in [
            ("host", "localhost".to_owned()),
            ("port", upstream_port.to_string()),
            ("dbname", a.db.clone()),
            ("username", a.user.clone()),
            ("password", a.password.clone()),
            ("sslmode", "verify-full".to_owned()),
            ("ca.crt", ca),
        ] {
            std::fs::write(secret_dir.join(k), v).expect("secret file");
        }
        Pooler::on_secret_dir(secret_dir, testbed::free_port().expect("port"), extra)
    }

    /// A pooler on a Secret's files as the kubelet mounts them (the sidecar's view),
    /// listening on 127.0.0.1:`port`.
    pub fn on_secret_dir(secret_dir: std::path::PathBuf, port: u16, extra: &[&str]) -> Pooler {
        let http = testbed::free_port().expect("port");
        let log = std::env::temp_dir().join(format!("{}.log", unique("pooler")));
        // The sidecar's own binary, as the webhook injects it.
        let child = Command::new(env!("CARGO_BIN_EXE_dbconn-pooler"))
            .arg("--secret-dir")
            .arg(&secret_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(["--application-name", "dbconn:test/pod"])
            .args(extra)
            .env("RUST_LOG", "info,dbconn=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("dbconn pooler");
        let p = Pooler {
            child,
            port,
            http,
            secret_dir,
            log,
        };
        p.wait_listening();
        p
    }

    pub fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pooler never listened:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(self.http, "/readyz").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "pooler never ready:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A counter or gauge from the pooler's /metrics (the first line starting with
    /// `line_start`), 0 when absent.
    pub fn metric(&self, line_start: &str) -> f64 {
        let (_, text) = http_get(self.http, "/metrics");
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn conninfo(&self, a: &App) -> String {
        format!(
            "host=127.0.0.1 port={} dbname={} user={} password='{}' sslmode=disable",
            self.port,
            a.db,
            a.user,
            a.password.replace('\\', "\\\\").replace('\'', "\\'")
        )
    }

    pub async fn client(&self, a: &App) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) =
            tokio_postgres::connect(&self.conninfo(a), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }
}

/// The first column of the first row of a simple-protocol result.
pub fn first_value(rows: &[tokio_postgres::SimpleQueryMessage]) -> String {
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default()
}

/// One value through the simple protocol.
pub async fn value(c: &tokio_postgres::Client, sql: &str) -> Result<String, tokio_postgres::Error> {
    Ok(first_value(&c.simple_query(sql).await?))
}

/// The server's message for an error, or the error's own text.
pub fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| format!("{} ({})", d.message(), d.code().code()))
        .unwrap_or_else(|| e.to_string())
}

pub fn admin(sql: &str) -> String {
    bed()
        .postgres
        .psql("postgres", sql)
        .expect("psql")
        .trim()
        .to_owned()
}

/// Sends raw bytes as a client and returns what came back before the pooler closed.
pub fn raw(port: u16, bytes: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

pub fn startup(user: &str, db: &str) -> Vec<u8> {
    startup_with(196_608, &[("user", user), ("database", db)])
}

/// A startup packet asking for protocol `version` (major << 16 | minor) with `params`.
pub fn startup_with(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    p.extend(body);
    p
}

/// A raw protocol client: whole messages in, response tags (with SQLSTATE for errors) out.
/// Logs in with trust, cleartext or SCRAM-SHA-256, so the same bytes can go to the pooler and
/// straight to PostgreSQL.
pub struct Wire {
    socket: std::net::TcpStream,
    buf: Vec<u8>,
    /// The tags of the messages of the login, in order.
    pub login: Vec<char>,
    /// The body of a NegotiateProtocolVersion, if one came.
    pub negotiated: Option<Vec<u8>>,
    /// The parameters the login reported (ParameterStatus), by name.
    pub params: std::collections::BTreeMap<String, String>,
}

/// One message of a protocol exchange as the client sees it: its tag, and for ErrorResponse
/// the SQLSTATE.
pub type Seen = (char, String);

impl Wire {
    pub fn connect(port: u16, user: &str, password: &str, db: &str) -> Wire {
        Wire::connect_with(port, &startup(user, db), password)
    }

    /// Logs in with the given startup packet.
    pub fn connect_with(port: u16, startup_packet: &[u8], password: &str) -> Wire {
        Wire::try_connect_with(port, startup_packet, password)
            .unwrap_or_else(|(code, message)| panic!("login failed: {code} {message}"))
    }

    /// Logs in with the given startup packet; the ErrorResponse's SQLSTATE and message when
    /// the login fails.
    pub fn try_connect_with(
        port: u16,
        startup_packet: &[u8],
        password: &str,
    ) -> Result<Wire, (String, String)> {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        use std::io::Write;
        let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        socket.write_all(startup_packet).expect("startup");
        let mut w = Wire {
            socket,
            buf: Vec::new(),
            login: Vec::new(),
            negotiated: None,
            params: Default::default(),
        };
        let mut scram = None;
        loop {
            let (tag, body) = w.next();
            w.login.push(tag as char);
            if tag == b'v' {
                w.negotiated = Some(body.clone());
            }
            if tag == b'S' {
                let (k, v) = dbconn::pgwire::messages::parse_parameter_status(&body)
                    .expect("ParameterStatus");
                w.params.insert(k.to_owned(), v.to_owned());
            }
            match tag {
                b'R' => {
                    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let data = &body[4..];
                    match code {
                        0 => {}
                        3 => w.send(&msg(b'p', &[password.as_bytes(), b"\0"])),
                        10 => {
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            let first = s.message().to_vec();
                            let mech = b"SCRAM-SHA-256\0";
                            let len = (first.len() as i32).to_be_bytes();
                            w.send(&msg(b'p', &[mech, &len, &first]));
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().expect("SASL started");
                            s.update(data).expect("scram");
                            let m = s.message().to_vec();
                            w.send(&msg(b'p', &[&m]));
                        }
                        12 => scram
                            .as_mut()
                            .expect("SASL")
                            .finish(data)
                            .expect("scram final"),
                        other => panic!("authentication {other}"),
                    }
                }
                b'E' => return Err(dbconn::pgwire::messages::parse_error(&body)),
                b'Z' => return Ok(w),
                _ => {}
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.socket.write_all(bytes).expect("write");
    }

    fn next(&mut self) -> (u8, Vec<u8>) {
        use std::io::Read;
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let m: Vec<u8> = self.buf.drain(..len + 1).collect();
                    return (m[0], m[5..].to_vec());
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self.socket.read(&mut chunk).expect("read");
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads messages until `readies` ReadyForQuery have come; NoticeResponse and
    /// ParameterStatus are left out (they differ with settings, not with the protocol).
    pub fn until_ready(&mut self, readies: usize) -> Vec<Seen> {
        let mut seen = Vec::new();
        let mut left = readies;
        while left > 0 {
            let (tag, body) = self.next();
            match tag {
                b'N' | b'S' => continue,
                b'E' => {
                    let (code, _) = dbconn::pgwire::messages::parse_error(&body);
                    seen.push(('E', code));
                }
                b'Z' => {
                    left -= 1;
                    seen.push(('Z', (body[0] as char).to_string()));
                }
                t => seen.push((t as char, String::new())),
            }
        }
        seen
    }

    /// The first column of each DataRow until `readies` ReadyForQuery have come.
    pub fn values(&mut self, readies: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut left = readies;
        while left > 0 {
            let (tag, body) = self.next();
            match tag {
                b'D' => {
                    let row = dbconn::pgwire::messages::parse_data_row(&body).expect("DataRow");
                    out.push(row[0].clone().unwrap_or_default());
                }
                b'E' => panic!("{:?}", dbconn::pgwire::messages::parse_error(&body)),
                b'Z' => left -= 1,
                _ => {}
            }
        }
        out
    }

    /// Reads exactly `n` messages (for exchanges without a Sync, answered through Flush).
    pub fn read(&mut self, n: usize) -> Vec<Seen> {
        (0..n)
            .map(|_| {
                let (tag, body) = self.next();
                let code = if tag == b'E' {
                    dbconn::pgwire::messages::parse_error(&body).0
                } else {
                    String::new()
                };
                (tag as char, code)
            })
            .collect()
    }
}

/// A frontend message from its parts.
pub fn msg(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = 4 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut m = vec![tag];
    m.extend_from_slice(&(len as i32).to_be_bytes());
    for p in parts {
        m.extend_from_slice(p);
    }
    m
}

/// Parse of a named (or, with "", unnamed) statement without parameter types.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    msg(
        b'P',
        &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0", &[0, 0]],
    )
}

/// Bind of a statement to the unnamed portal with text parameters.
pub fn bind(stmt: &str, params: &[&str]) -> Vec<u8> {
    let mut rest = vec![0, 0];
    rest.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        rest.extend_from_slice(&(p.len() as i32).to_be_bytes());
        rest.extend_from_slice(p.as_bytes());
    }
    rest.extend_from_slice(&[0, 0]);
    msg(b'B', &[b"\0", stmt.as_bytes(), b"\0", &rest])
}

pub fn execute() -> Vec<u8> {
    msg(b'E', &[b"\0", &[0, 0, 0, 0]])
}

pub fn describe_statement(name: &str) -> Vec<u8> {
    msg(b'D', &[b"S", name.as_bytes(), b"\0"])
}

pub fn close_statement(name: &str) -> Vec<u8> {
    msg(b'C', &[b"S", name.as_bytes(), b"\0"])
}

pub fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

pub fn flush() -> Vec<u8> {
    msg(b'H', &[])
}

pub fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', &[sql.as_bytes(), b"\0"])
}
