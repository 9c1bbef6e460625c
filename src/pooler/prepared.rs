//! Named prepared statements in transaction mode. A client's statement names are its own; on
//! the server each statement lives under a name derived from its text, parameter types and
//! search_path, so two clients' "s1" never collide and one client's statement is found on
//! whichever server connection its next transaction lands. Pure: fed frames, it writes the
//! frames to send and keeps, in order, what the server owes, so the answers to messages the
//! pooler added are dropped and the answers to messages it left out are made up in their
//! place.
//!
//! A server's copy answers for a client's statement only if it was parsed no earlier than the
//! client's Parse: a copy parsed before a migration (ALTER TABLE …) would answer with the old
//! result type, so an older copy is closed and parsed again first. A client whose own Parse
//! predates the migration gets PostgreSQL's own error ("cached plan must not change result
//! type"), as it would without the pooler.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::state::{self, Scan};
use crate::pgwire::WireError;
use crate::pgwire::frame::{body, cstr};
use crate::pgwire::messages;

/// A client's named statement.
#[derive(Debug)]
pub struct Statement {
    /// The name on the server.
    pub server_name: String,
    /// When the client parsed it (the pool's statement clock).
    parsed_at: u64,
    /// The Parse message that creates it on a server under `server_name`.
    parse: Vec<u8>,
    /// What running it may do to the session.
    pub effects: Scan,
}

/// The statements prepared on one server connection, bounded; the least recently used goes
/// first.
#[derive(Debug, Default)]
pub struct Cache {
    /// Server name → (last use, when it was parsed).
    names: HashMap<String, (u64, u64)>,
    tick: u64,
}

impl Cache {
    /// When the server's copy of `name` was parsed, if it has one (and marks it used).
    fn has(&mut self, name: &str) -> Option<u64> {
        self.tick += 1;
        let entry = self.names.get_mut(name)?;
        entry.0 = self.tick;
        Some(entry.1)
    }

    fn insert(&mut self, name: &str, parsed_at: u64) {
        self.tick += 1;
        self.names.insert(name.to_owned(), (self.tick, parsed_at));
    }

    fn remove(&mut self, name: &str) -> Option<u64> {
        self.names.remove(name).map(|e| e.1)
    }

    /// The least recently used name, removed, when there are `capacity` or more.
    fn evict(&mut self, capacity: usize) -> Option<(String, u64)> {
        if self.names.len() < capacity {
            return None;
        }
        let victim = self.names.iter().min_by_key(|(_, e)| e.0)?.0.clone();
        let parsed_at = self.names.remove(&victim)?.1;
        Some((victim, parsed_at))
    }

    /// The server forgot everything (DEALLOCATE ALL, DISCARD ALL).
    /// Statements prepared on the server connection.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn clear(&mut self) {
        self.names.clear();
    }
}

/// What to put right if the server skips a message (an earlier one failed before Sync).
#[derive(Debug)]
enum Undo {
    Nothing,
    /// A made-up ParseComplete: the statement was never created.
    Forget(String),
    /// A made-up CloseComplete: the statement still exists.
    Restore(String, Arc<Statement>),
}

/// When a simple query that DEALLOCATEs succeeds.
#[derive(Debug)]
enum Effect {
    None,
    /// DEALLOCATE ALL or DISCARD ALL.
    ForgetAll,
    /// DEALLOCATE of one statement: the client's name and the server's.
    Forget(String, String),
}

/// One thing the server owes, in order.
#[derive(Debug)]
enum Expect {
    Parse {
        /// Added by the pooler: its ParseComplete is not the client's.
        added: bool,
        /// The server name it creates.
        server_name: String,
        /// The client name it stands for (forgotten if it fails).
        client_name: Option<String>,
    },
    /// A Parse, Bind or Describe passed through as sent; `true` when its answer ends with
    /// RowDescription or NoData (a Describe).
    Plain(Kind),
    /// A Close the pooler added to evict (or refresh) a statement, and when that copy was
    /// parsed.
    Evict(String, u64),
    Execute,
    Sync,
    /// A simple query or function call: answered through ReadyForQuery. `true` when it is a
    /// DEALLOCATE whose names `forgetting` holds until then.
    Simple(Effect, bool),
    /// An answer the pooler makes up, due once everything before it is answered.
    Reply(Vec<u8>, Undo),
    /// CopyDone or CopyFail: not answered itself, but the Syncs after it are not ignored.
    CopyEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Parse,
    Bind,
    Describe,
    Close,
}

/// Per client: its statements and, while it holds a server connection, what that server owes.
#[derive(Debug, Default)]
pub struct Prepared {
    statements: HashMap<String, Arc<Statement>>,
    queue: VecDeque<Expect>,
    /// An error was answered and its Sync is not sent yet: the server skips what comes.
    skipping: bool,
    capacity: usize,
    /// Parses of named statements sent to a server since last asked (for the metric).
    parses_sent: u64,
    /// The statement clock at the batch being sent: when the Parses sent now happen.
    now: u64,
    /// A DEALLOCATE sent and not answered yet: what follows it in the pipeline already sees
    /// those names gone, as on the server (`None` inside: DEALLOCATE ALL).
    forgetting: VecDeque<Option<String>>,
}

/// The name a statement has on every server connection: its text, parameter types and the
/// context its text is read in (search_path and the like), hashed. The same text under
/// another search_path is another statement.
fn server_name(query: &[u8], types: &[u8], context: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(query);
    h.update([0]);
    h.update(types);
    h.update([0]);
    h.update(context);
    let d = h.finalize();
    let mut name = String::from("dbconn_");
    for b in &d[..12] {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

/// Appends a frame with `tag` and `body`.
fn put(out: &mut Vec<u8>, tag: u8, parts: &[&[u8]]) {
    let len: usize = 4 + parts.iter().map(|p| p.len()).sum::<usize>();
    out.push(tag);
    out.extend_from_slice(&i32::try_from(len).unwrap_or(i32::MAX).to_be_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
}

fn close_message(out: &mut Vec<u8>, name: &str) {
    put(out, b'C', &[b"S", name.as_bytes(), b"\0"]);
}

/// ParseComplete, BindComplete, CloseComplete: a tag and no body.
fn empty(tag: u8) -> Vec<u8> {
    vec![tag, 0, 0, 0, 4]
}

/// A simple query that is exactly `DEALLOCATE [PREPARE] name|ALL` or `DISCARD ALL`: what it
/// names (None for all). Pure.
fn deallocate(sql: &str) -> Option<Option<String>> {
    let sql = sql.trim().trim_end_matches(';').trim_end();
    let mut words = sql.split_whitespace();
    let first = words.next()?;
    if first.eq_ignore_ascii_case("discard") {
        let all = words.next()?.eq_ignore_ascii_case("all") && words.next().is_none();
        return all.then_some(None);
    }
    if !first.eq_ignore_ascii_case("deallocate") {
        return None;
    }
    let rest = sql[first.len()..].trim_start();
    let rest = match rest.split_once(char::is_whitespace) {
        Some((w, r)) if w.eq_ignore_ascii_case("prepare") => r.trim_start(),
        _ => rest,
    };
    if rest.eq_ignore_ascii_case("all") {
        return Some(None);
    }
    if let Some(quoted) = rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        return (!quoted.is_empty()).then(|| Some(quoted.replace("\"\"", "\"")));
    }
    let plain = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '$');
    plain.then(|| Some(rest.to_lowercase()))
}

impl Prepared {
    pub fn new(capacity: usize) -> Prepared {
        Prepared {
            capacity: capacity.max(1),
            ..Prepared::default()
        }
    }

    /// Named statements prepared on a server since the last call.
    pub fn take_parses_sent(&mut self) -> u64 {
        std::mem::take(&mut self.parses_sent)
    }

    /// Nothing owed: the server connection may go.
    pub fn settled(&self) -> bool {
        self.queue.is_empty() && !self.skipping
    }

    /// The statement a client name stands for.
    pub fn get(&self, name: &str) -> Option<&Arc<Statement>> {
        self.statements.get(name)
    }

    /// The statement a client name stands for in the message being sent: none once a
    /// DEALLOCATE earlier in the pipeline forgot it.
    fn lookup(&self, name: &str) -> Option<Arc<Statement>> {
        let gone = self
            .forgetting
            .iter()
            .any(|f| f.as_deref().is_none_or(|n| n == name));
        if gone {
            return None;
        }
        self.statements.get(name).cloned()
    }

    fn expect(&mut self, e: Expect, cache: &mut Cache) {
        if self.skipping {
            match e {
                Expect::Sync => self.skipping = false,
                // The server will skip it: it never answers.
                other => {
                    self.undo(other, cache);
                    return;
                }
            }
        }
        self.queue.push_back(e);
    }

    /// Makes sure the server connection has `stmt` as the client parsed it: its Parse is
    /// added where the server lacks it, or has a copy parsed before the client's.
    fn ensure(&mut self, stmt: &Statement, cache: &mut Cache, out: &mut Vec<u8>) {
        match cache.has(&stmt.server_name) {
            Some(parsed_at) if parsed_at >= stmt.parsed_at => {}
            Some(parsed_at) => {
                self.refresh(stmt, parsed_at, cache, out);
                self.send_parse(stmt, None, cache, out);
            }
            None => self.send_parse(stmt, None, cache, out),
        }
    }

    /// Closes the server's older copy of `stmt` (the answer is the pooler's).
    fn refresh(&mut self, stmt: &Statement, parsed_at: u64, cache: &mut Cache, out: &mut Vec<u8>) {
        cache.remove(&stmt.server_name);
        close_message(out, &stmt.server_name);
        self.expect(Expect::Evict(stmt.server_name.clone(), parsed_at), cache);
    }

    /// Sends `stmt`'s Parse (making room in the cache first); `client_name` when the client
    /// asked for it, `None` when the pooler added it and its ParseComplete is not the client's.
    fn send_parse(
        &mut self,
        stmt: &Statement,
        client_name: Option<String>,
        cache: &mut Cache,
        out: &mut Vec<u8>,
    ) {
        self.make_room(cache, out);
        out.extend_from_slice(&stmt.parse);
        cache.insert(&stmt.server_name, self.now);
        self.parses_sent += 1;
        self.expect(
            Expect::Parse {
                added: client_name.is_none(),
                server_name: stmt.server_name.clone(),
                client_name,
            },
            cache,
        );
    }

    fn make_room(&mut self, cache: &mut Cache, out: &mut Vec<u8>) {
        if let Some((victim, parsed_at)) = cache.evict(self.capacity) {
            close_message(out, &victim);
            self.expect(Expect::Evict(victim, parsed_at), cache);
        }
    }

    /// One client message (a whole frame): appends what to send the server to `out`.
    /// `context` is what a Parse's text is read in (see `server_name`); `now` is the pool's
    /// statement clock.
    pub fn client(
        &mut self,
        tag: u8,
        frame: &[u8],
        context: &[u8],
        now: u64,
        cache: &mut Cache,
        out: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        self.now = now;
        let b = body(frame);
        match tag {
            b'P' => {
                let (name, rest) = cstr(b)?;
                if name.is_empty() {
                    out.extend_from_slice(frame);
                    self.expect(Expect::Plain(Kind::Parse), cache);
                    return Ok(());
                }
                let (query, types) = cstr(rest)?;
                if let Some(existing) = self.lookup(name) {
                    // PostgreSQL refuses a second statement of the same name: send this one
                    // under the existing statement's server name, and the server says so.
                    self.ensure(&existing, cache, out);
                    put(out, b'P', &[existing.server_name.as_bytes(), b"\0", rest]);
                    self.expect(Expect::Plain(Kind::Parse), cache);
                    return Ok(());
                }
                let server_name = server_name(query.as_bytes(), types, context);
                let mut parse = Vec::with_capacity(frame.len() + server_name.len());
                put(&mut parse, b'P', &[server_name.as_bytes(), b"\0", rest]);
                let stmt = Arc::new(Statement {
                    server_name,
                    parsed_at: now,
                    parse,
                    effects: state::scan(query),
                });
                self.statements.insert(name.to_owned(), stmt.clone());
                match cache.has(&stmt.server_name) {
                    // Parsed on this server in this same batch: it is as new as this one.
                    Some(parsed_at) if parsed_at >= now => {
                        let undo = Undo::Forget(name.to_owned());
                        self.expect(Expect::Reply(empty(b'1'), undo), cache);
                    }
                    // An older copy may predate a migration: parse it again.
                    Some(parsed_at) => {
                        self.refresh(&stmt, parsed_at, cache, out);
                        self.send_parse(&stmt, Some(name.to_owned()), cache, out);
                    }
                    None => self.send_parse(&stmt, Some(name.to_owned()), cache, out),
                }
            }
            b'B' => {
                let (portal, rest) = cstr(b)?;
                let (name, params) = cstr(rest)?;
                match self.lookup(name) {
                    Some(stmt) if !name.is_empty() => {
                        self.ensure(&stmt, cache, out);
                        put(
                            out,
                            b'B',
                            &[
                                portal.as_bytes(),
                                b"\0",
                                stmt.server_name.as_bytes(),
                                b"\0",
                                params,
                            ],
                        );
                    }
                    // Unnamed, or unknown: the server answers as PostgreSQL does.
                    _ => out.extend_from_slice(frame),
                }
                self.expect(Expect::Plain(Kind::Bind), cache);
            }
            b'D' => {
                let (&kind, rest) = b.split_first().ok_or(WireError::Malformed("Describe"))?;
                let (name, _) = cstr(rest)?;
                match self.lookup(name) {
                    Some(stmt) if kind == b'S' && !name.is_empty() => {
                        self.ensure(&stmt, cache, out);
                        put(out, b'D', &[b"S", stmt.server_name.as_bytes(), b"\0"]);
                    }
                    _ => out.extend_from_slice(frame),
                }
                self.expect(Expect::Plain(Kind::Describe), cache);
            }
            b'C' => {
                let (&kind, rest) = b.split_first().ok_or(WireError::Malformed("Close"))?;
                let (name, _) = cstr(rest)?;
                if kind == b'S' && !name.is_empty() {
                    // The server keeps it for the next client with the same statement;
                    // closing a name that does not exist is no error in PostgreSQL either.
                    let undo = match self.statements.remove(name) {
                        Some(stmt) => Undo::Restore(name.to_owned(), stmt),
                        None => Undo::Nothing,
                    };
                    self.expect(Expect::Reply(empty(b'3'), undo), cache);
                } else {
                    out.extend_from_slice(frame);
                    self.expect(Expect::Plain(Kind::Close), cache);
                }
            }
            b'E' => {
                out.extend_from_slice(frame);
                self.expect(Expect::Execute, cache);
            }
            b'S' => {
                out.extend_from_slice(frame);
                self.expect(Expect::Sync, cache);
            }
            b'Q' => {
                let (sql, _) = cstr(b)?;
                let before = self.forgetting.len();
                let effect = match deallocate(sql) {
                    Some(None) => {
                        out.extend_from_slice(frame);
                        self.forgetting.push_back(None);
                        Effect::ForgetAll
                    }
                    Some(Some(name)) => match self.lookup(&name) {
                        Some(stmt) => {
                            self.ensure(&stmt, cache, out);
                            let sql = format!("DEALLOCATE {}", stmt.server_name);
                            messages::query(out, &sql);
                            self.forgetting.push_back(Some(name.clone()));
                            Effect::Forget(name, stmt.server_name.clone())
                        }
                        None => {
                            out.extend_from_slice(frame);
                            Effect::None
                        }
                    },
                    None => {
                        out.extend_from_slice(frame);
                        Effect::None
                    }
                };
                let forgets = self.forgetting.len() > before;
                self.expect(Expect::Simple(effect, forgets), cache);
            }
            b'F' => {
                out.extend_from_slice(frame);
                self.expect(Expect::Simple(Effect::None, false), cache);
            }
            b'c' | b'f' => {
                out.extend_from_slice(frame);
                self.expect(Expect::CopyEnd, cache);
            }
            // Flush, CopyData: nothing owed for them.
            _ => out.extend_from_slice(frame),
        }
        Ok(())
    }

    /// Appends the made-up answers now due (everything before them answered) to `out`.
    pub fn replies(&mut self, out: &mut Vec<u8>) {
        while let Some(Expect::Reply(..) | Expect::CopyEnd) = self.queue.front() {
            if let Some(Expect::Reply(msg, _)) = self.queue.pop_front() {
                out.extend_from_slice(&msg);
            }
        }
    }

    /// One server message: whether the client gets it. The answers made up in its place come
    /// from `replies` after it.
    pub fn server(&mut self, tag: u8, cache: &mut Cache) -> Result<bool, WireError> {
        let desync = || WireError::Malformed("an answer the pooler did not expect");
        let front = self.queue.front();
        let pop = match (tag, front) {
            (b'1', Some(Expect::Parse { .. } | Expect::Plain(Kind::Parse))) => true,
            (b'2', Some(Expect::Plain(Kind::Bind))) => true,
            (b'3', Some(Expect::Plain(Kind::Close) | Expect::Evict(..))) => true,
            (b'1' | b'2' | b'3', _) => return Err(desync()),
            (b'T' | b'n', Some(Expect::Plain(Kind::Describe))) => true,
            (b'C' | b'I' | b's', Some(Expect::Execute)) => true,
            (b'C', Some(Expect::Simple(..))) => {
                if let Some(Expect::Simple(effect, _)) = self.queue.front_mut() {
                    match std::mem::replace(effect, Effect::None) {
                        Effect::None => {}
                        Effect::ForgetAll => {
                            self.statements.clear();
                            cache.clear();
                        }
                        Effect::Forget(client, server) => {
                            self.statements.remove(&client);
                            cache.remove(&server);
                        }
                    }
                }
                false
            }
            (b'Z', Some(Expect::Sync | Expect::Simple(..))) => true,
            (b'Z', _) => return Err(desync()),
            (b'G', Some(Expect::Execute)) => {
                // COPY FROM STDIN: the server ignores the Syncs sent behind it before the
                // COPY's end.
                while matches!(self.queue.get(1), Some(Expect::Sync)) {
                    self.queue.remove(1);
                }
                false
            }
            (b'E', Some(Expect::Sync | Expect::Simple(..)) | None) => false,
            (b'E', Some(_)) => {
                // The message failed; the server skips everything up to the next Sync.
                while let Some(e) = self.queue.front() {
                    if matches!(e, Expect::Sync) {
                        break;
                    }
                    if let Some(e) = self.queue.pop_front() {
                        self.undo(e, cache);
                    }
                }
                self.skipping = self.queue.is_empty();
                return Ok(true);
            }
            _ => false,
        };
        let mut forward = true;
        if pop && let Some(e) = self.queue.pop_front() {
            if matches!(e, Expect::Simple(_, true)) {
                self.forgetting.pop_front();
            }
            forward = !matches!(e, Expect::Parse { added: true, .. } | Expect::Evict(..));
        }
        Ok(forward)
    }

    /// A message the server will not answer (skipped, or failed): its effects never happened.
    fn undo(&mut self, e: Expect, cache: &mut Cache) {
        match e {
            Expect::Parse {
                server_name,
                client_name,
                ..
            } => {
                cache.remove(&server_name);
                if let Some(c) = client_name {
                    self.statements.remove(&c);
                }
            }
            Expect::Evict(name, parsed_at) => cache.insert(&name, parsed_at),
            Expect::Reply(_, Undo::Forget(name)) => {
                self.statements.remove(&name);
            }
            Expect::Reply(_, Undo::Restore(name, stmt)) => {
                self.statements.insert(name, stmt);
            }
            // A DEALLOCATE the server skips forgets nothing.
            Expect::Simple(_, true) => {
                self.forgetting.pop_back();
            }
            _ => {}
        }
    }

    /// The connection went away mid-exchange: nothing more is owed.
    pub fn reset(&mut self) {
        self.queue.clear();
        self.forgetting.clear();
        self.skipping = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgwire::frame::frame;

    fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut m = Vec::new();
        put(
            &mut m,
            b'P',
            &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0", &[0, 0]],
        );
        m
    }

    fn bind(stmt: &str) -> Vec<u8> {
        let mut m = Vec::new();
        put(
            &mut m,
            b'B',
            &[b"\0", stmt.as_bytes(), b"\0", &[0, 0, 0, 0, 0, 0]],
        );
        m
    }

    fn msg(tag: u8, b: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        put(&mut m, tag, &[b]);
        m
    }

    /// Sends the frames; returns the tags that went to the server and the names in them.
    fn send(p: &mut Prepared, cache: &mut Cache, frames: &[Vec<u8>]) -> Vec<(u8, String)> {
        let mut out = Vec::new();
        for f in frames {
            p.client(f[0], f, b"", 1, cache, &mut out).unwrap();
        }
        let mut sent = Vec::new();
        let mut at = 0;
        while let Some((tag, n)) = frame(&out[at..], 1 << 20).unwrap() {
            let b = body(&out[at..at + n]);
            let name = match tag {
                b'P' => cstr(b).unwrap().0.to_owned(),
                b'B' => cstr(cstr(b).unwrap().1).unwrap().0.to_owned(),
                b'C' | b'D' => cstr(&b[1..]).unwrap().0.to_owned(),
                _ => String::new(),
            };
            sent.push((tag, name));
            at += n;
        }
        sent
    }

    /// Feeds server tags; returns the tags the client sees, made-up answers included.
    fn answer(p: &mut Prepared, cache: &mut Cache, tags: &[u8]) -> Vec<u8> {
        let mut seen = Vec::new();
        let mut replies = Vec::new();
        p.replies(&mut replies);
        seen.extend(replies.iter().step_by(5));
        for t in tags {
            if p.server(*t, cache).unwrap() {
                seen.push(*t);
            }
            let mut replies = Vec::new();
            p.replies(&mut replies);
            seen.extend(replies.iter().step_by(5));
        }
        seen
    }

    /// As `send`, at a given tick of the statement clock.
    fn send_at(
        p: &mut Prepared,
        cache: &mut Cache,
        now: u64,
        frames: &[Vec<u8>],
    ) -> Vec<(u8, String)> {
        let mut out = Vec::new();
        for f in frames {
            p.client(f[0], f, b"", now, cache, &mut out).unwrap();
        }
        let mut sent = Vec::new();
        let mut at = 0;
        while let Some((tag, n)) = frame(&out[at..], 1 << 20).unwrap() {
            let name = match tag {
                b'P' | b'C' => {
                    let b = body(&out[at..at + n]);
                    let b = if tag == b'C' { &b[1..] } else { b };
                    cstr(b).unwrap().0.to_owned()
                }
                _ => String::new(),
            };
            sent.push((tag, name));
            at += n;
        }
        sent
    }

    #[test]
    fn a_copy_parsed_before_the_clients_parse_is_parsed_again() {
        let (mut a, mut b) = (Cache::default(), Cache::default());
        let mut first = Prepared::new(10);
        let items = || parse("s", "SELECT * FROM items");
        let sent = send_at(&mut first, &mut a, 1, &[items(), msg(b'S', b"")]);
        let name = sent[0].1.clone();
        assert_eq!(answer(&mut first, &mut a, b"1Z"), b"1Z");
        // Its next transaction lands on `b`: a copy parsed there at tick 2.
        send_at(&mut first, &mut b, 2, &[bind("s"), msg(b'S', b"")]);
        assert_eq!(answer(&mut first, &mut b, b"12Z"), b"2Z");
        // After a migration another client parses the same text on `a`: the old copy is
        // closed and parsed again, and only the client's own ParseComplete reaches it.
        let mut later = Prepared::new(10);
        let sent = send_at(&mut later, &mut a, 5, &[items(), msg(b'S', b"")]);
        assert_eq!(
            sent,
            vec![
                (b'C', name.clone()),
                (b'P', name.clone()),
                (b'S', String::new())
            ]
        );
        assert_eq!(answer(&mut later, &mut a, b"31Z"), b"1Z");
        // The first client's statement is older than that copy: used as it is.
        let sent = send_at(&mut first, &mut a, 6, &[bind("s"), msg(b'S', b"")]);
        assert_eq!(sent, vec![(b'B', String::new()), (b'S', String::new())]);
        assert_eq!(answer(&mut first, &mut a, b"2Z"), b"2Z");
        // On `b` the copy predates the later client's Parse: refreshed before its Bind.
        let sent = send_at(&mut later, &mut b, 8, &[bind("s"), msg(b'S', b"")]);
        assert_eq!(
            sent,
            vec![
                (b'C', name.clone()),
                (b'P', name.clone()),
                (b'B', String::new()),
                (b'S', String::new())
            ]
        );
        assert_eq!(answer(&mut later, &mut b, b"312Z"), b"2Z");
        // Parsed again at 8, that copy now serves the first client (parsed at 1) too.
        let sent = send_at(&mut first, &mut b, 9, &[bind("s"), msg(b'S', b"")]);
        assert_eq!(sent, vec![(b'B', String::new()), (b'S', String::new())]);
    }

    #[test]
    fn a_named_statement_is_prepared_once_per_server_and_reused_under_its_server_name() {
        let (mut p, mut a) = (Prepared::new(10), Cache::default());
        let sent = send(
            &mut p,
            &mut a,
            &[parse("s1", "SELECT 1"), bind("s1"), msg(b'S', b"")],
        );
        let name = sent[0].1.clone();
        assert!(name.starts_with("dbconn_"));
        assert_eq!(
            sent,
            vec![
                (b'P', name.clone()),
                (b'B', name.clone()),
                (b'S', String::new())
            ]
        );
        assert_eq!(answer(&mut p, &mut a, b"12Z"), b"12Z");
        assert!(p.settled());

        // The next transaction lands on another server connection: the Parse is added there
        // and its ParseComplete is not the client's.
        let mut b = Cache::default();
        let sent = send(
            &mut p,
            &mut b,
            &[bind("s1"), msg(b'E', b"\0\0\0\0\0"), msg(b'S', b"")],
        );
        assert_eq!(sent[0], (b'P', name.clone()));
        assert_eq!(sent[1], (b'B', name.clone()));
        assert_eq!(answer(&mut p, &mut b, b"12CZ"), b"2CZ");

        // A second client preparing the same text under another name on `a` sends no Parse,
        // and gets a ParseComplete all the same.
        let mut q = Prepared::new(10);
        let sent = send(
            &mut q,
            &mut a,
            &[parse("other", "SELECT 1"), msg(b'S', b"")],
        );
        assert_eq!(sent, vec![(b'S', String::new())]);
        assert_eq!(answer(&mut q, &mut a, b"Z"), b"1Z");
    }

    #[test]
    fn two_clients_with_the_same_name_and_different_text_get_different_server_names() {
        let mut c = Cache::default();
        let (mut p, mut q) = (Prepared::new(10), Prepared::new(10));
        let a = send(&mut p, &mut c, &[parse("s1", "SELECT 1")]);
        let b = send(&mut q, &mut c, &[parse("s1", "SELECT 2")]);
        assert_ne!(a[0].1, b[0].1);
    }

    #[test]
    fn an_error_skips_the_rest_of_the_pipeline_and_undoes_what_it_would_have_done() {
        let (mut p, mut c) = (Prepared::new(10), Cache::default());
        send(&mut p, &mut c, &[parse("ok", "SELECT 1"), msg(b'S', b"")]);
        answer(&mut p, &mut c, b"1Z");
        // Parse(bad) fails; the cached Parse, the Close and the Bind behind it are skipped.
        let sent = send(
            &mut p,
            &mut c,
            &[
                parse("bad", "SELEC"),
                parse("again", "SELECT 1"),
                msg(b'C', b"Sok\0"),
                bind("ok"),
                msg(b'S', b""),
            ],
        );
        assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), b"PBS");
        assert_eq!(answer(&mut p, &mut c, b"EZ"), b"EZ");
        assert!(p.get("bad").is_none(), "a failed Parse creates nothing");
        assert!(p.get("again").is_none(), "a skipped Parse creates nothing");
        assert!(p.get("ok").is_some(), "a skipped Close closes nothing");
        assert!(p.settled());
    }

    #[test]
    fn messages_sent_after_an_error_and_before_sync_are_skipped_too() {
        let (mut p, mut c) = (Prepared::new(10), Cache::default());
        send(&mut p, &mut c, &[parse("bad", "SELEC"), msg(b'H', b"")]);
        assert_eq!(answer(&mut p, &mut c, b"E"), b"E");
        assert!(!p.settled());
        send(&mut p, &mut c, &[parse("late", "SELECT 1"), msg(b'S', b"")]);
        assert!(p.get("late").is_none());
        assert_eq!(answer(&mut p, &mut c, b"Z"), b"Z");
        assert!(p.settled());
    }

    #[test]
    fn close_is_answered_by_the_pooler_and_the_server_keeps_the_statement() {
        let (mut p, mut c) = (Prepared::new(10), Cache::default());
        send(&mut p, &mut c, &[parse("s1", "SELECT 1"), msg(b'S', b"")]);
        answer(&mut p, &mut c, b"1Z");
        let sent = send(&mut p, &mut c, &[msg(b'C', b"Ss1\0"), msg(b'S', b"")]);
        assert_eq!(sent, vec![(b'S', String::new())]);
        assert_eq!(answer(&mut p, &mut c, b"Z"), b"3Z");
        assert!(p.get("s1").is_none());
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn the_cache_is_bounded_and_evicts_the_least_recently_used_with_a_close() {
        let (mut p, mut c) = (Prepared::new(2), Cache::default());
        send(
            &mut p,
            &mut c,
            &[parse("a", "SELECT 1"), parse("b", "SELECT 2")],
        );
        send(&mut p, &mut c, &[bind("a")]);
        let sent = send(&mut p, &mut c, &[parse("c", "SELECT 3"), msg(b'S', b"")]);
        assert_eq!(sent[0].0, b'C', "evicts b, the least recently used");
        assert_eq!(sent[0].1, p.get("b").unwrap().server_name);
        // ParseComplete a, b; BindComplete; the eviction's CloseComplete (dropped); c.
        assert_eq!(answer(&mut p, &mut c, b"11231Z"), b"1121Z");
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn deallocate_is_recognised_exactly() {
        assert_eq!(deallocate("DEALLOCATE ALL"), Some(None));
        assert_eq!(deallocate("deallocate prepare all;"), Some(None));
        assert_eq!(deallocate("DISCARD ALL"), Some(None));
        assert_eq!(deallocate("DEALLOCATE S1"), Some(Some("s1".into())));
        assert_eq!(
            deallocate("DEALLOCATE \"My \"\"s\""),
            Some(Some("My \"s".into()))
        );
        assert_eq!(deallocate("DEALLOCATE s1; SELECT 1"), None);
        assert_eq!(deallocate("DISCARD PLANS"), None);
        assert_eq!(deallocate("SELECT 1"), None);
    }

    #[test]
    fn deallocate_forgets_the_statement_once_the_server_agrees() {
        let (mut p, mut c) = (Prepared::new(10), Cache::default());
        send(&mut p, &mut c, &[parse("s1", "SELECT 1"), msg(b'S', b"")]);
        answer(&mut p, &mut c, b"1Z");
        let server = p.get("s1").unwrap().server_name.clone();
        let mut q = Vec::new();
        messages::query(&mut q, "DEALLOCATE s1");
        let mut out = Vec::new();
        p.client(b'Q', &q, b"", 1, &mut c, &mut out).unwrap();
        assert!(String::from_utf8_lossy(&out).contains(&format!("DEALLOCATE {server}")));
        answer(&mut p, &mut c, b"CZ");
        assert!(p.get("s1").is_none());
        assert_eq!(c.len(), 0);
    }
}
