//! The admin console: a client that logs in to the virtual database `pgbouncer` (or `dbconn`)
//! with the Secret's user and password talks to the pooler itself, in PgBouncer's commands
//! (PgBouncer's "Admin console" documentation):
//!
//! - `SHOW POOLS`, `SHOW STATS`, `SHOW CLIENTS`, `SHOW SERVERS`, `SHOW CONFIG`,
//!   `SHOW PREPARED` (dbconn's: the named statements kept on each idle server connection),
//!   `SHOW VERSION`, `SHOW HELP`;
//! - `PAUSE` (hand out no server connection; returns once every lent one is back, or says how
//!   many are still out after `query_wait_timeout`), `RESUME`, `RECONNECT` (replace every
//!   server connection, idle ones now, lent ones when released), `RELOAD` (read the mounted
//!   Secret now).
//!
//! Only simple queries, one command each; anything else gets an ErrorResponse. The pooler
//! listens on loopback only, so the console never leaves the pod.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::session::Ended;
use super::{ClientError, fatal};
use crate::pgwire::frame::{self, body};
use crate::pgwire::messages::{self, IDLE};
use crate::pgwire::sqlstate::{ADMIN_SHUTDOWN, FEATURE_NOT_SUPPORTED, SYNTAX_ERROR};
use crate::pooler::config::Mode;
use crate::pooler::pool::{ClientState, Pool};

/// The largest command the console reads.
const MAX_COMMAND: usize = 4096;

/// A console command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Show(Show),
    Pause,
    Resume,
    Reconnect,
    Reload,
    /// An empty query.
    Empty,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Show {
    Pools,
    Stats,
    Clients,
    Servers,
    Config,
    Prepared,
    Version,
    Help,
}

const HELP: &str = "SHOW POOLS|STATS|CLIENTS|SERVERS|CONFIG|PREPARED|VERSION|HELP; PAUSE; RESUME; RECONNECT; RELOAD";

/// Reads one command: case-insensitive words, an optional trailing `;`. Pure.
pub fn parse(sql: &str) -> Result<Command, String> {
    let text = sql.trim().trim_end_matches(';').trim();
    if text.is_empty() {
        return Ok(Command::Empty);
    }
    if text.contains(';') {
        return Err("one command at a time".into());
    }
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    Ok(match words.as_slice() {
        ["SHOW", what] => Command::Show(match *what {
            "POOLS" => Show::Pools,
            "STATS" => Show::Stats,
            "CLIENTS" => Show::Clients,
            "SERVERS" => Show::Servers,
            "CONFIG" => Show::Config,
            "PREPARED" => Show::Prepared,
            "VERSION" => Show::Version,
            "HELP" => Show::Help,
            _ => return Err(format!("SHOW {what} is not a console command; {HELP}")),
        }),
        ["PAUSE"] => Command::Pause,
        ["RESUME"] => Command::Resume,
        ["RECONNECT"] => Command::Reconnect,
        ["RELOAD"] => Command::Reload,
        _ => return Err(format!("{text:?} is not a console command; {HELP}")),
    })
}

/// A result set: column names and rows of text.
pub struct Table {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Option<String>>>,
}

fn secs(d: Duration) -> String {
    d.as_secs().to_string()
}

/// SHOW POOLS: one pool, with PgBouncer's columns.
fn pools(pool: &Pool) -> Table {
    let clients = pool.clients();
    let waiting = clients
        .iter()
        .filter(|(_, c)| c.state() == ClientState::Waiting)
        .count();
    let idle = pool.idle_servers();
    let used = idle.iter().filter(|s| s.used).count();
    let maxwait = pool.maxwait();
    let creds = pool.credentials();
    let mode = match pool.settings.mode {
        Mode::Transaction => "transaction",
        Mode::Session => "session",
    };
    Table {
        columns: vec![
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "sv_active",
            "sv_idle",
            "sv_used",
            "sv_tested",
            "sv_login",
            "maxwait",
            "maxwait_us",
            "pool_mode",
        ],
        rows: vec![vec![
            Some(creds.upstream.dbname.clone()),
            Some(creds.upstream.user.clone()),
            Some((clients.len() - waiting).to_string()),
            Some(waiting.to_string()),
            Some(pool.lent().to_string()),
            Some((idle.len() - used).to_string()),
            Some(used.to_string()),
            Some("0".into()),
            Some("0".into()),
            Some(maxwait.as_secs().to_string()),
            Some(maxwait.subsec_micros().to_string()),
            Some(mode.into()),
        ]],
    }
}

/// SHOW STATS: totals since the sidecar started, and their means (times in microseconds).
fn stats(pool: &Pool) -> Table {
    use std::sync::atomic::Ordering::Relaxed;
    let m = &pool.metrics;
    let t = &pool.totals;
    let (xacts, queries) = (m.transactions.get(), m.queries.get());
    let (xact_us, query_us, wait_us) = (
        t.xact_us.load(Relaxed),
        t.query_us.load(Relaxed),
        t.wait_us.load(Relaxed),
    );
    let mean = |sum: u64, n: u64| sum.checked_div(n).unwrap_or(0).to_string();
    Table {
        columns: vec![
            "database",
            "total_xact_count",
            "total_query_count",
            "total_received",
            "total_sent",
            "total_xact_time",
            "total_query_time",
            "total_wait_time",
            "avg_xact_time",
            "avg_query_time",
            "avg_wait_time",
        ],
        rows: vec![vec![
            Some(pool.credentials().upstream.dbname.clone()),
            Some(xacts.to_string()),
            Some(queries.to_string()),
            Some(m.received_bytes.get().to_string()),
            Some(m.sent_bytes.get().to_string()),
            Some(xact_us.to_string()),
            Some(query_us.to_string()),
            Some(wait_us.to_string()),
            Some(mean(xact_us, xacts)),
            Some(mean(query_us, queries)),
            Some(mean(wait_us, xacts)),
        ]],
    }
}

/// The columns SHOW CLIENTS and SHOW SERVERS begin with (PgBouncer's), then `rest`.
fn peer_columns(rest: &[&'static str]) -> Vec<&'static str> {
    let peer = [
        "type",
        "user",
        "database",
        "state",
        "addr",
        "port",
        "connected_seconds",
    ];
    peer.iter().chain(rest).copied().collect()
}

/// SHOW CLIENTS: every logged-in client (the console's own sessions are not listed).
fn clients(pool: &Pool) -> Table {
    let creds = pool.credentials();
    let now = std::time::SystemTime::now();
    let mut rows: Vec<(std::time::SystemTime, Vec<Option<String>>)> = pool
        .clients()
        .into_iter()
        .map(|(key, c)| {
            let state = match c.state() {
                ClientState::Idle => "idle",
                ClientState::Waiting => "waiting",
                ClientState::Active => "active",
            };
            let connected = now.duration_since(c.connect_time).unwrap_or_default();
            let row = vec![
                Some("C".into()),
                Some(creds.upstream.user.clone()),
                Some(creds.upstream.dbname.clone()),
                Some(state.into()),
                c.addr.map(|a| a.ip().to_string()),
                c.addr.map(|a| a.port().to_string()),
                Some(secs(connected)),
                Some(key.0.to_string()),
                c.server_pid().map(|p| p.to_string()),
                Some(c.application_name.clone()),
            ];
            (c.connect_time, row)
        })
        .collect();
    rows.sort_by_key(|(t, _)| *t);
    Table {
        columns: peer_columns(&["ptr", "link", "application_name"]),
        rows: rows.into_iter().map(|(_, r)| r).collect(),
    }
}

/// SHOW SERVERS: the lent connections (by the clients they serve), then the idle ones.
fn servers(pool: &Pool) -> Table {
    let creds = pool.credentials();
    let u = &creds.upstream;
    let row = |state: &str, pid: i32, tls: Option<bool>, age: Option<Duration>, idle| {
        vec![
            Some("S".into()),
            Some(u.user.clone()),
            Some(u.dbname.clone()),
            Some(state.to_owned()),
            Some(u.host.clone()),
            Some(u.port.to_string()),
            age.map(secs),
            idle,
            Some(pid.to_string()),
            tls.map(|t| t.to_string()),
        ]
    };
    let mut rows: Vec<Vec<Option<String>>> = pool
        .clients()
        .into_iter()
        .filter_map(|(_, c)| c.server_pid())
        .map(|pid| row("active", pid, None, None, None))
        .collect();
    for s in pool.idle_servers() {
        let state = if s.used { "used" } else { "idle" };
        rows.push(row(
            state,
            s.pid,
            Some(s.tls),
            Some(s.age),
            Some(secs(s.idle)),
        ));
    }
    Table {
        columns: peer_columns(&["idle_seconds", "remote_pid", "tls"]),
        rows,
    }
}

/// SHOW CONFIG: the settings the sidecar runs with, under PgBouncer's names where it has
/// one. None is changeable here: they come from the DatabaseConnection (spec.pooler).
fn config(pool: &Pool) -> Table {
    let s = &pool.settings;
    let creds = pool.credentials();
    let u = &creds.upstream;
    let mode = match s.mode {
        Mode::Transaction => "transaction",
        Mode::Session => "session",
    };
    let pairs: Vec<(&str, String)> = vec![
        ("listen_addr", s.listen.ip().to_string()),
        ("listen_port", s.listen.port().to_string()),
        ("pool_mode", mode.into()),
        ("auth_type", format!("{:?}", s.client_auth).to_lowercase()),
        ("default_pool_size", s.pool_size.to_string()),
        ("min_pool_size", s.min_idle.to_string()),
        ("max_client_conn", s.max_clients.to_string()),
        ("query_wait_timeout", secs(s.query_wait_timeout)),
        ("server_idle_timeout", secs(s.server_idle_timeout)),
        ("server_lifetime", secs(s.server_lifetime)),
        ("server_connect_timeout", secs(s.connect_timeout)),
        (
            "max_prepared_statements",
            s.max_prepared_statements.to_string(),
        ),
        (
            "server_reset",
            format!("{:?}", s.server_reset).to_lowercase(),
        ),
        ("application_name", s.application_name.clone()),
        ("max_packet_size", s.max_message_bytes.to_string()),
        ("shutdown_grace", secs(s.shutdown_grace)),
        ("server_host", u.host.clone()),
        ("server_port", u.port.to_string()),
        ("server_sslmode", u.sslmode.as_str().to_owned()),
        ("dbname", u.dbname.clone()),
        ("user", u.user.clone()),
    ];
    Table {
        columns: vec!["key", "value", "changeable"],
        rows: pairs
            .into_iter()
            .map(|(k, v)| vec![Some(k.into()), Some(v), Some("no".into())])
            .collect(),
    }
}

/// SHOW PREPARED: the named statements the pooler keeps prepared on each idle server
/// connection (lent ones are busy), and the totals.
fn prepared(pool: &Pool) -> Table {
    let mut rows: Vec<Vec<Option<String>>> = pool
        .idle_servers()
        .into_iter()
        .map(|s| {
            vec![
                Some(s.pid.to_string()),
                Some(s.statements.to_string()),
                Some(pool.settings.max_prepared_statements.to_string()),
            ]
        })
        .collect();
    rows.sort();
    Table {
        columns: vec!["remote_pid", "statements", "max_prepared_statements"],
        rows,
    }
}

fn single(column: &'static str, value: &str) -> Table {
    Table {
        columns: vec![column],
        rows: vec![vec![Some(value.to_owned())]],
    }
}

fn show(pool: &Pool, what: Show) -> Table {
    match what {
        Show::Pools => pools(pool),
        Show::Stats => stats(pool),
        Show::Clients => clients(pool),
        Show::Servers => servers(pool),
        Show::Config => config(pool),
        Show::Prepared => prepared(pool),
        Show::Version => single(
            "version",
            concat!("dbconn pooler ", env!("CARGO_PKG_VERSION")),
        ),
        Show::Help => single("commands", HELP),
    }
}

/// Writes a table as RowDescription, DataRows and CommandComplete.
fn write_table(out: &mut Vec<u8>, t: &Table) {
    messages::row_description(out, &t.columns);
    for row in &t.rows {
        let values: Vec<Option<&str>> = row.iter().map(Option::as_deref).collect();
        messages::data_row(out, &values);
    }
    messages::command_complete(out, "SHOW");
}

/// PAUSE: new checkouts wait; returns when every lent connection is back, or an error
/// saying how many are still out when `query_wait_timeout` passes first (still paused).
async fn pause(pool: &Pool) -> Result<(), String> {
    pool.pause(true);
    let deadline = Instant::now() + pool.settings.query_wait_timeout;
    while pool.lent() > 0 {
        if Instant::now() >= deadline {
            return Err(format!(
                "paused, but {} server connections are still in use after query_wait_timeout; PAUSE again to wait, or RESUME",
                pool.lent()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Runs one query's worth of console work; the reply, ending with ReadyForQuery.
async fn answer(pool: &Pool, sql: &str) -> Vec<u8> {
    let mut out = Vec::new();
    match parse(sql) {
        Ok(Command::Empty) => messages::empty_query_response(&mut out),
        Ok(Command::Show(what)) => write_table(&mut out, &show(pool, what)),
        Ok(Command::Pause) => match pause(pool).await {
            Ok(()) => messages::command_complete(&mut out, "PAUSE"),
            Err(e) => messages::error_response(&mut out, "ERROR", ADMIN_SHUTDOWN, &e),
        },
        Ok(Command::Resume) => {
            pool.pause(false);
            messages::command_complete(&mut out, "RESUME");
        }
        Ok(Command::Reconnect) => {
            pool.reconnect();
            messages::command_complete(&mut out, "RECONNECT");
        }
        Ok(Command::Reload) => {
            pool.reload.notify_one();
            messages::command_complete(&mut out, "RELOAD");
        }
        Err(e) => messages::error_response(&mut out, "ERROR", SYNTAX_ERROR, &e),
    }
    tracing::info!(command = %sql.trim(), "admin console");
    messages::ready_for_query(&mut out, IDLE);
    out
}

/// Serves a console session until the client leaves or the pooler shuts down.
pub(super) async fn serve(
    mut socket: TcpStream,
    mut buf: BytesMut,
    pool: &Arc<Pool>,
    mut shutdown: watch::Receiver<bool>,
) -> Ended {
    let result = async {
        loop {
            while let Some((tag, n)) = frame::frame(&buf, MAX_COMMAND)? {
                let msg = buf.split_to(n);
                let reply = match tag {
                    b'Q' => answer(pool, frame::cstr(body(&msg))?.0).await,
                    b'X' => return Ok(()),
                    // The extended protocol: refused, then ReadyForQuery at its Sync.
                    b'S' => {
                        let mut out = Vec::new();
                        messages::ready_for_query(&mut out, IDLE);
                        out
                    }
                    b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => {
                        let mut out = Vec::new();
                        messages::error_response(
                            &mut out,
                            "ERROR",
                            FEATURE_NOT_SUPPORTED,
                            "the admin console takes simple queries only",
                        );
                        out
                    }
                    _ => {
                        return Err(fatal(
                            FEATURE_NOT_SUPPORTED,
                            "unexpected message to the admin console",
                        ));
                    }
                };
                socket.write_all(&reply).await?;
            }
            buf.reserve(MAX_COMMAND);
            tokio::select! {
                read = socket.read_buf(&mut buf) => {
                    if read? == 0 {
                        return Err(ClientError::Gone);
                    }
                }
                _ = shutdown.changed() => {
                    return Err(fatal(ADMIN_SHUTDOWN, "the pooler is shutting down"));
                }
            }
        }
    }
    .await;
    match result {
        Ok(()) | Err(ClientError::Gone) | Err(ClientError::Io(_)) => Ok(()),
        Err(e) => Err((socket, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_as_pgbouncer_reads_them() {
        assert_eq!(parse("show pools;"), Ok(Command::Show(Show::Pools)));
        assert_eq!(parse("  SHOW   Stats "), Ok(Command::Show(Show::Stats)));
        assert_eq!(parse("PAUSE"), Ok(Command::Pause));
        assert_eq!(parse("resume;"), Ok(Command::Resume));
        assert_eq!(parse("RECONNECT"), Ok(Command::Reconnect));
        assert_eq!(parse("reload"), Ok(Command::Reload));
        assert_eq!(parse(" ; "), Ok(Command::Empty));
        let e = parse("SHOW FDS").unwrap_err();
        assert!(
            e.contains("SHOW FDS is not a console command") && e.contains("SHOW POOLS"),
            "{e}"
        );
        assert!(parse("DROP DATABASE x").is_err());
        assert!(parse("SHOW POOLS; SHOW STATS").is_err());
        assert!(parse("SELECT 1").is_err());
    }

    #[test]
    fn a_table_is_a_row_description_rows_and_show() {
        let mut out = Vec::new();
        write_table(
            &mut out,
            &Table {
                columns: vec!["a", "b"],
                rows: vec![vec![Some("1".into()), None]],
            },
        );
        let tags: Vec<u8> = {
            let mut at = 0;
            let mut tags = Vec::new();
            while at < out.len() {
                tags.push(out[at]);
                let len = u32::from_be_bytes([out[at + 1], out[at + 2], out[at + 3], out[at + 4]]);
                at += 1 + len as usize;
            }
            tags
        };
        assert_eq!(tags, b"TDC");
        let row = crate::pgwire::messages::parse_data_row(
            &out[out.iter().position(|b| *b == b'D').unwrap() + 5..],
        )
        .unwrap();
        assert_eq!(row[0].as_deref(), Some("1"));
    }
}
