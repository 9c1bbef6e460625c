//! When a transaction ends (transaction mode): what it left on the session. Settings its SET
//! statements changed are read back and carried to the client's next server connection; what
//! ties the connection to it (a session advisory lock, LISTEN, a temporary table, a WITH HOLD
//! cursor, an SQL PREPARE) pins the connection. Everything else a session can carry, however
//! it was set (set_config in a function, SET in a procedure or DO block, SESSION
//! CHARACTERISTICS, a role), is reset by the prelude before another client's first
//! transaction on that connection, pipelined with it.

use std::collections::BTreeMap;

use tokio::io::AsyncWriteExt;

use super::State;
use super::session::Session;
use crate::pgwire::frame::body;
use crate::pgwire::messages;
use crate::pooler::config::{Mode, ServerReset};
use crate::pooler::prepared::Prepared;
use crate::pooler::server::{ServerConn, ServerError, read_message};
use crate::pooler::state::{self, PINS};
use crate::postgres::quote::{Ident, literal};

/// Everything a session can carry that the next client must not see, reset in one simple
/// query (one implicit transaction): settings of every kind (RESET ALL), the role and session
/// authorization, cursors, LISTEN, session advisory locks, temporary tables and sequence
/// state. Prepared statements stay: the pooler names and tracks its own, and an SQL PREPARE
/// pins the connection to its client.
pub const RESET: &str = "RESET ALL; RESET ROLE; SET SESSION AUTHORIZATION DEFAULT; CLOSE ALL; \
                         UNLISTEN *; SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; \
                         DISCARD SEQUENCES; ";

/// The prelude of a bound connection.
pub(super) struct Prelude {
    /// The simple query to send ahead of the client's first message, if any.
    pub sql: Option<String>,
    /// Whether it resets the session of another client.
    pub reset: bool,
}

/// The prelude that makes `conn` the connection of the client `key` with `settings`, and
/// notes on `conn` that it is. Pure.
pub(super) fn prelude_sql(
    conn: &mut ServerConn,
    key: (i32, i32),
    settings: &BTreeMap<String, String>,
    mode: ServerReset,
) -> Prelude {
    let mut sql = String::new();
    // A fresh connection, or one reset with DISCARD ALL, has no last client.
    let switch = conn.last_client.is_some_and(|c| c != key);
    let reset = switch && (conn.dirty || mode == ServerReset::Always);
    if reset {
        sql.push_str(RESET);
        conn.applied.clear();
        conn.dirty = false;
    }
    conn.last_client = Some(key);
    if let Some(s) = settings_sql(settings, &conn.applied) {
        sql.push_str(&s);
        conn.applied = settings.clone();
    }
    Prelude {
        sql: (!sql.is_empty()).then_some(sql),
        reset,
    }
}

/// Settings whose value is a list (GUC_LIST_INPUT): set with set_config, which takes the
/// text as the server parses it.
const LIST_SETTINGS: [&str; 5] = [
    "search_path",
    "datestyle",
    "temp_tablespaces",
    "session_preload_libraries",
    "local_preload_libraries",
];

/// The statements that give a connection with settings `applied` the settings `want`;
/// `None` when it has them.
pub(super) fn settings_sql(
    want: &BTreeMap<String, String>,
    applied: &BTreeMap<String, String>,
) -> Option<String> {
    if applied == want {
        return None;
    }
    let mut sql = String::new();
    for (k, v) in want {
        if applied.get(k) == Some(v) {
            continue;
        }
        // SET is a utility statement (no plan): cheaper than set_config, but it would read a
        // list-valued setting's one string as a single element.
        match Ident::new(k) {
            Ok(name) if !LIST_SETTINGS.contains(&k.to_ascii_lowercase().as_str()) => {
                sql.push_str(&format!("SET {name} = {};", literal(v)));
            }
            _ => sql.push_str(&format!(
                "SELECT pg_catalog.set_config({}, {}, false);",
                literal(k),
                literal(v)
            )),
        }
    }
    for k in applied.keys().filter(|k| !want.contains_key(*k)) {
        if let Ok(name) = Ident::new(k) {
            sql.push_str(&format!("RESET {name};"));
        }
    }
    (!sql.is_empty()).then_some(sql)
}

impl Session {
    /// A transaction is over: learns what it left on the session (settings to carry to the
    /// client's next server connection, state that pins this one), then lets the connection
    /// go unless it is pinned.
    pub(super) async fn end_transaction(&mut self) {
        self.transaction_ended();
        let scan = std::mem::take(&mut self.scan);
        let State::Bound(b) = &mut self.state else {
            return;
        };
        let pinned = b.pin.is_some();
        let conn = b.lease.conn();
        conn.dirty |= scan.dirty;
        if scan.reset_all {
            conn.applied.clear();
            self.settings = self.startup.clone();
        }
        let look = scan.may_pin || scan.reset_all || pinned;
        let names = scan.settings;
        let mut pinned_by = Vec::new();
        if look || !names.is_empty() {
            let row = match run(conn, &state::check_sql(look, &names), self.limit).await {
                Ok(row) => row.unwrap_or_default(),
                Err(e) => {
                    // The connection's state is unknown: it must not serve anyone else.
                    tracing::warn!(error = %e, "reading the session state failed; closing that server connection");
                    self.pool.metrics.error("state_check");
                    self.unpin();
                    self.pool.serving(self.key, None);
                    self.state = State::Idle;
                    self.pool.bound(&self.info, None);
                    return;
                }
            };
            let (pins, values) = row.split_at(if look { PINS.len().min(row.len()) } else { 0 });
            for (name, value) in names.iter().zip(values) {
                match value {
                    Some(v) => {
                        self.settings.insert(name.clone(), v.clone());
                        conn.applied.insert(name.clone(), v.clone());
                    }
                    None => {
                        self.settings.remove(name);
                        conn.applied.remove(name);
                    }
                }
            }
            for ((reason, _), count) in PINS.iter().zip(pins) {
                if count.as_deref().is_some_and(|c| c != "0") {
                    pinned_by.push(*reason);
                }
            }
        }
        // From here a cancel for this client does nothing: it has no statement running.
        self.pool.serving(self.key, None);
        if !pinned_by.is_empty() {
            if let State::Bound(b) = &mut self.state
                && b.pin.is_none()
            {
                self.pool.metrics.pinned.inc();
                for reason in &pinned_by {
                    self.pool.metrics.pin(reason);
                }
                tracing::debug!(reasons = ?pinned_by, "server connection pinned to its client");
                b.pin = Some(pinned_by);
            }
            return;
        }
        self.unpin();
        if let State::Bound(b) = std::mem::replace(&mut self.state, State::Idle) {
            b.lease.release();
        }
        self.pool.bound(&self.info, None);
    }

    /// The transaction bound since `xact_started` is over: its time is recorded.
    pub(super) fn transaction_ended(&mut self) {
        if let Some(started) = self.xact_started.take() {
            let took = started.elapsed();
            self.pool
                .metrics
                .transaction_duration
                .observe(took.as_secs_f64());
            self.pool.totals.xact_us.fetch_add(
                u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    pub(super) fn unpin(&mut self) {
        if let State::Bound(b) = &mut self.state
            && b.pin.take().is_some()
        {
            self.pool.metrics.pinned.dec();
        }
    }

    /// At the end of a session: a clean server connection goes back (reset in session
    /// mode, or when this client pinned it); one in a transaction or mid-statement is
    /// closed, never reused dirty.
    pub(super) async fn finish(&mut self) {
        // In session mode the session is the transaction.
        self.transaction_ended();
        let pinned = matches!(&self.state, State::Bound(b) if b.pin.is_some());
        self.unpin();
        let State::Bound(mut b) = std::mem::replace(&mut self.state, State::Idle) else {
            return;
        };
        if !b.tracker.idle()
            || !b.relay.settled()
            || !b.lease.conn().buf.is_empty()
            || !self.prepared.as_ref().is_none_or(Prepared::settled)
        {
            return;
        }
        if self.pool.settings.mode == Mode::Session || pinned {
            let conn = b.lease.conn();
            if run(conn, "DISCARD ALL", self.limit).await.is_err() {
                return;
            }
            conn.applied.clear();
            conn.statements.clear();
            conn.last_client = None;
            conn.dirty = false;
        }
        b.lease.release();
    }
}

/// Runs `sql` on the server connection and reads through its ReadyForQuery; returns the last
/// row. An error from the server fails it.
pub(super) async fn run(
    conn: &mut ServerConn,
    sql: &str,
    limit: usize,
) -> Result<Option<Vec<Option<String>>>, ServerError> {
    let mut out = Vec::with_capacity(sql.len() + 8);
    messages::query(&mut out, sql);
    conn.stream.write_all(&out).await?;
    conn.stream.flush().await?;
    let mut failure = None;
    let mut row = None;
    loop {
        let (tag, msg) = read_message(conn, limit).await?;
        match tag {
            b'E' => {
                let (code, message) = messages::parse_error(body(&msg));
                failure = Some(ServerError::Refused { code, message });
            }
            b'S' => {
                let (k, v) = messages::parse_parameter_status(body(&msg))?;
                conn.params.insert(k.to_owned(), v.to_owned());
            }
            b'D' => row = Some(messages::parse_data_row(body(&msg))?),
            b'Z' => return failure.map_or(Ok(row), Err),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_set_and_reset_with_quoted_names_and_values() {
        let want = BTreeMap::from([
            ("application_name".to_owned(), "it's me".to_owned()),
            ("search_path".to_owned(), "\"My Schema\", public".to_owned()),
        ]);
        let applied = BTreeMap::from([
            ("TimeZone".to_owned(), "UTC".to_owned()),
            ("application_name".to_owned(), "old".to_owned()),
        ]);
        let sql = settings_sql(&want, &applied).unwrap();
        assert_eq!(
            sql,
            "SET \"application_name\" = 'it''s me';\
             SELECT pg_catalog.set_config('search_path', '\"My Schema\", public', false);RESET \"TimeZone\";"
        );
        assert_eq!(settings_sql(&want, &want), None);
    }
}
