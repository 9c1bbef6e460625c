//! Session state a client leaves on a server connection in transaction mode: the settings its
//! SET and RESET statements change, the things that tie the connection to it (a session
//! advisory lock, LISTEN, a temporary table, a WITH HOLD cursor, an SQL-level PREPARE), and
//! whether it may have changed anything else (a function, procedure or DO block can change
//! any setting, take a lock or create a temporary table where no scan sees it). A keyword
//! scan of the SQL says when to look; one query on the server at the end of that transaction
//! says what is really there; a connection that may hold more is reset before another client
//! gets it. Pure.

use crate::postgres::quote::literal;

/// What a statement may have changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Settings set or reset at session level.
    pub settings: Vec<String>,
    /// RESET ALL or DISCARD ALL.
    pub reset_all: bool,
    /// Words that may leave something that pins the connection.
    pub may_pin: bool,
    /// A statement that may have changed session state in a way the scan cannot see: anything
    /// but a plain query (see `plain`).
    pub dirty: bool,
}

impl Scan {
    pub fn merge(&mut self, other: Scan) {
        for s in other.settings {
            if !self.settings.contains(&s) {
                self.settings.push(s);
            }
        }
        self.reset_all |= other.reset_all;
        self.may_pin |= other.may_pin;
        self.dirty |= other.dirty;
    }
}

/// Why a server connection stays with one client, with the query that counts it.
pub const PINS: [(&str, &str); 5] = [
    (
        "advisory_lock",
        "(SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid())",
    ),
    (
        "listen",
        "(SELECT count(*) FROM pg_catalog.pg_listening_channels())",
    ),
    (
        "temp_table",
        "(SELECT count(*) FROM pg_catalog.pg_class WHERE relpersistence = 't' AND relnamespace = pg_catalog.pg_my_temp_schema())",
    ),
    (
        "with_hold_cursor",
        "(SELECT count(*) FROM pg_catalog.pg_cursors WHERE is_holdable)",
    ),
    (
        "sql_prepare",
        "(SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql)",
    ),
];

/// The SQL that reads, at the end of a transaction, the pins (when `pins`) and the current
/// value of each setting in `names`.
pub fn check_sql(pins: bool, names: &[String]) -> String {
    let mut cols: Vec<String> = Vec::new();
    if pins {
        cols.extend(PINS.iter().map(|(_, q)| (*q).to_owned()));
    }
    for n in names {
        cols.push(format!("pg_catalog.current_setting({}, true)", literal(n)));
    }
    format!("SELECT {}", cols.join(", "))
}

/// Splits SQL into statements at semicolons outside quotes, dollar quotes and comments, with
/// comments dropped.
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' | b'"' => {
                let end = b[i + 1..]
                    .iter()
                    .position(|x| *x == c)
                    .map_or(b.len(), |p| i + 1 + p + 1);
                cur.push_str(&sql[i..end]);
                i = end;
                continue;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|x| *x == b'\n')
                    .map_or(b.len(), |p| i + p);
                cur.push(' ');
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..].find("*/").map_or(b.len(), |p| i + 2 + p + 2);
                cur.push(' ');
                continue;
            }
            b'$' => {
                // $tag$ … $tag$
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|x| !(x.is_ascii_alphanumeric() || *x == b'_'))
                    .map(|p| i + 1 + p);
                if let Some(t) = tag_end.filter(|t| b[*t] == b'$') {
                    let tag = &sql[i..=t];
                    let end = sql[t + 1..]
                        .find(tag)
                        .map_or(b.len(), |p| t + 1 + p + tag.len());
                    cur.push_str(&sql[i..end]);
                    i = end;
                    continue;
                }
            }
            b';' => {
                out.push(std::mem::take(&mut cur));
                i += 1;
                continue;
            }
            _ => {}
        }
        let ch = sql[i..].chars().next().unwrap_or(' ');
        cur.push(ch);
        i += ch.len_utf8();
    }
    out.push(cur);
    out.retain(|s| !s.trim().is_empty());
    out
}

/// The words of a statement's head: plain words lower-cased, quoted identifiers as written.
fn words(stmt: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = stmt.trim_start();
    while out.len() < n && !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"').unwrap_or(r.len());
            out.push(r[..end].to_owned());
            rest = r.get(end + 1..).unwrap_or("").trim_start();
            continue;
        }
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '=' || c == '\'' || c == '(')
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        out.push(rest[..end].to_lowercase());
        rest = rest[end..].trim_start();
    }
    out
}

/// The settings a `SET`/`RESET` statement changes (the words after the keyword), when it is
/// a session-level one the pooler carries. SET SESSION CHARACTERISTICS sets the
/// default_transaction_* settings (as JDBC's setReadOnly does).
fn setting(w: &[String]) -> Vec<String> {
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let w = match w.as_slice() {
        ["session", "characteristics", ..] => {
            return [
                "default_transaction_isolation",
                "default_transaction_read_only",
                "default_transaction_deferrable",
            ]
            .map(String::from)
            .to_vec();
        }
        ["session", "authorization", ..] => return Vec::new(),
        ["session", rest @ ..] => rest,
        ["local" | "transaction" | "constraints", ..] => return Vec::new(),
        rest => rest,
    };
    vec![match w {
        ["time", "zone", ..] => "timezone".to_owned(),
        ["schema", ..] => "search_path".to_owned(),
        ["names", ..] => "client_encoding".to_owned(),
        ["xml", "option", ..] => "xmloption".to_owned(),
        [name, ..] => (*name).to_owned(),
        [] => return Vec::new(),
    }]
}

/// What the SQL of a simple query or a prepared statement may do to the session. Runs for
/// every query a client sends in transaction mode: the common case (one statement, no
/// quotes, calls or comments) costs one pass over its bytes.
pub fn scan(sql: &str) -> Scan {
    let seen = Seen::of(sql);
    let mut s = Scan {
        may_pin: seen.pin,
        dirty: !plain_seen(sql, &seen),
        ..Scan::default()
    };
    // Most statements are not SET/RESET/DISCARD: skip the split unless one could be.
    if !seen.setting {
        return s;
    }
    for stmt in statements(sql) {
        let w = words(&stmt, 4);
        match w.first().map(String::as_str) {
            Some("set") => s.settings.extend(setting(&w[1..])),
            Some("reset") => match w.get(1).map(String::as_str) {
                Some("all") => s.reset_all = true,
                Some(_) => s.settings.extend(setting(&w[1..])),
                None => {}
            },
            Some("discard") if w.get(1).map(String::as_str) == Some("all") => s.reset_all = true,
            _ => {}
        }
    }
    s
}

/// Words that start a statement which changes no session state by itself: reads, and
/// transaction control.
const PLAIN_HEADS: [&str; 14] = [
    "select",
    "with",
    "values",
    "table",
    "show",
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "savepoint",
    "release",
    "prepare",
];

/// Words before `(` that call no function a client could write: SQL's own constructs, the
/// aggregates and functions of pg_catalog that change nothing, and type modifiers. Anything
/// else followed by `(` may be a function that sets a setting or takes a lock.
const PLAIN_CALLS: [&str; 48] = [
    "all",
    "and",
    "any",
    "array",
    "as",
    "avg",
    "between",
    "by",
    "cast",
    "char",
    "character",
    "coalesce",
    "count",
    "decimal",
    "exists",
    "extract",
    "filter",
    "from",
    "greatest",
    "in",
    "interval",
    "is",
    "join",
    "least",
    "length",
    "lower",
    "max",
    "min",
    "not",
    "now",
    "nullif",
    "numeric",
    "on",
    "or",
    "over",
    "position",
    "row",
    "select",
    "some",
    "substring",
    "sum",
    "then",
    "trim",
    "upper",
    "using",
    "values",
    "varchar",
    "where",
];

/// Whether SQL only reads or controls its transaction, calling no function outside
/// PLAIN_CALLS (PREPARE TRANSACTION aside, which its own word pins). Everything else (DML,
/// which may fire triggers; CALL; DO; SET; DDL; any other function call) may change session
/// state unseen. Functions a view or a row-level-security policy calls are not seen.
pub fn plain(sql: &str) -> bool {
    plain_seen(sql, &Seen::of(sql))
}

/// `plain`, with the keywords of `sql` found.
fn plain_seen(sql: &str, seen: &Seen) -> bool {
    // The common case without splitting: `Seen::simple`, and no INTO.
    if seen.simple && !seen.into {
        let body = sql.trim_end();
        let body = body.strip_suffix(';').unwrap_or(body);
        let first = body.trim_start().split(|c: char| c.is_whitespace()).next();
        if let Some(w) = first.filter(|w| !w.is_empty()) {
            return PLAIN_HEADS.iter().any(|h| h.eq_ignore_ascii_case(w))
                && !w.eq_ignore_ascii_case("prepare");
        }
    }
    plain_split(sql)
}

/// The keywords the scan looks for, found in one pass over the SQL (ASCII case-insensitive),
/// and whether the SQL takes the fast path.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    /// One of the words that send the pooler to look for pins (`advisory`, `listen`, `temp`,
    /// `hold`, `prepare`), anywhere (also inside a longer word or a literal: it only sends the
    /// pooler to look).
    pin: bool,
    /// ` into `.
    into: bool,
    /// SET, RESET or DISCARD as a word.
    setting: bool,
    /// One statement (a final `;` and blanks after it allowed) with no parenthesis, quote,
    /// comment or dollar quote (`$1` parameters allowed).
    simple: bool,
}

/// Four bytes as one little-endian word: what `Seen::of` compares at each position.
const fn four(w: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*w)
}

/// The first four bytes of each keyword `Seen::of` looks for, lower-case.
const ADVI: u32 = four(b"advi");
const LIST: u32 = four(b"list");
const TEMP: u32 = four(b"temp");
const HOLD: u32 = four(b"hold");
const PREP: u32 = four(b"prep");
const INTO: u32 = four(b" int");
const RESE: u32 = four(b"rese");
const DISC: u32 = four(b"disc");
/// `set`: the low three bytes.
const SET: u32 = four(b"set\0");

/// A byte that may start a keyword `Seen::of` looks for (either case, or the blank before
/// `into`).
const STARTS: u8 = 1;
/// A byte that takes SQL off the fast path, or may (see `Seen::simple`).
const BREAKS: u8 = 2;
/// What each byte may be, so that most bytes cost `Seen::of` one look-up.
const CLASS: [u8; 256] = {
    let mut class = [0u8; 256];
    // advisory, listen, temp, hold, prepare; set, reset, discard; ` into `.
    let starts = b"altphsrd ";
    let mut i = 0;
    while i < starts.len() {
        class[starts[i] as usize] |= STARTS;
        class[starts[i].to_ascii_uppercase() as usize] |= STARTS;
        i += 1;
    }
    let breaks = b"(;'\"-/$";
    let mut i = 0;
    while i < breaks.len() {
        class[breaks[i] as usize] |= BREAKS;
        i += 1;
    }
    class
};

impl Seen {
    /// One pass over the bytes; only those `CLASS` marks are looked at further.
    fn of(sql: &str) -> Seen {
        let b = sql.as_bytes();
        // The SQL without trailing blanks and one final `;`: where `simple` looks.
        let body = {
            let t = sql.trim_end();
            t.strip_suffix(';').unwrap_or(t).len()
        };
        let mut seen = Seen {
            simple: true,
            ..Seen::default()
        };
        for (i, &c) in b.iter().enumerate() {
            let class = CLASS[usize::from(c)];
            if class == 0 {
                continue;
            }
            if class & STARTS != 0 {
                seen.look(b, i);
            }
            if class & BREAKS != 0 && i < body {
                let next = b.get(i + 1).copied().unwrap_or(b' ');
                seen.simple &= match c {
                    b'-' => next != b'-',
                    b'/' => next != b'*',
                    b'$' => next.is_ascii_digit(),
                    _ => false,
                };
            }
        }
        seen
    }

    /// Whether a keyword starts at `b[i]`: the four bytes from there, ASCII letters
    /// lower-cased, compared with the keywords' first four as one word (`| 0x20` lower-cases
    /// a letter and turns no other byte into a letter or a blank, but NUL, which the whole
    /// comparison after it refuses).
    fn look(&mut self, b: &[u8], i: usize) {
        let at = |w: &str| {
            b.get(i..i + w.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(w.as_bytes()))
        };
        let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
        let word = |w: &str| {
            at(w)
                && !i.checked_sub(1).is_some_and(|p| ident(b[p]))
                && !b.get(i + w.len()).is_some_and(|c| ident(*c))
        };
        // One load; the last three positions are padded with blanks.
        let window = match b[i..].first_chunk::<4>() {
            Some(w) => *w,
            None => {
                let mut pad = [b' '; 4];
                pad[..b.len() - i].copy_from_slice(&b[i..]);
                pad
            }
        };
        match u32::from_le_bytes(window) | 0x2020_2020 {
            ADVI => self.pin |= at("advisory"),
            LIST => self.pin |= at("listen"),
            TEMP | HOLD => self.pin = true,
            PREP => self.pin |= at("prepare"),
            INTO => self.into |= at(" into "),
            RESE => self.setting |= word("reset"),
            DISC => self.setting |= word("discard"),
            w if w & 0x00ff_ffff == SET => self.setting |= word("set"),
            _ => {}
        }
    }
}

/// `plain` by splitting into statements: for SQL the fast path does not take.
fn plain_split(sql: &str) -> bool {
    statements(sql).iter().all(|stmt| {
        let head = words(stmt, 2);
        let first = head.first().map(String::as_str).unwrap_or("");
        // PREPARE TRANSACTION is transaction control; PREPARE name AS … is session state.
        let plain_head = PLAIN_HEADS.contains(&first)
            && !(first == "prepare" && head.get(1).is_none_or(|w| w != "transaction"));
        plain_head && !calls_function(stmt) && !Seen::of(stmt).into
    })
}

/// Whether a statement (quotes kept, comments gone) has `word(` outside quotes for a word
/// not in PLAIN_CALLS.
fn calls_function(stmt: &str) -> bool {
    let b = stmt.as_bytes();
    let mut i = 0;
    let mut word_start: Option<usize> = None;
    let mut last_word: Option<(usize, usize)> = None;
    while i < b.len() {
        let c = b[i];
        if c == b'\'' || c == b'"' {
            // A quoted identifier before `(` is a function name too.
            let end = b[i + 1..]
                .iter()
                .position(|x| *x == c)
                .map_or(b.len(), |p| i + 1 + p + 1);
            last_word = (c == b'"').then_some((i, end));
            word_start = None;
            i = end;
            continue;
        }
        let ident = c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c >= 0x80;
        if ident {
            word_start.get_or_insert(i);
        } else {
            if let Some(s) = word_start.take() {
                last_word = Some((s, i));
            }
            if c == b'('
                && let Some((s, e)) = last_word
            {
                let name = stmt[s..e].trim_matches('"').to_ascii_lowercase();
                let name = name.rsplit('.').next().unwrap_or("");
                let numeric = name.bytes().all(|d| d.is_ascii_digit() || d == b'.');
                if !numeric && !PLAIN_CALLS.contains(&name) {
                    return true;
                }
            }
            if !c.is_ascii_whitespace() {
                last_word = None;
            }
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words whose presence sends the pooler to look for pins.
    const PIN_WORDS: [&str; 5] = ["advisory", "listen", "temp", "hold", "prepare"];

    /// What `Seen::simple` must say, written plainly: one statement that `statements` would
    /// return unchanged and `calls_function` pass, nothing but an optional final `;` (and
    /// blanks) after it, no `(`, quote or comment, and `$` only as a parameter (`$1`).
    fn simple(sql: &str) -> bool {
        let body = sql.trim_end();
        let body = body.strip_suffix(';').unwrap_or(body).as_bytes();
        body.iter().enumerate().all(|(i, c)| {
            let next = body.get(i + 1).copied().unwrap_or(b' ');
            match c {
                b'(' | b';' | b'\'' | b'"' => false,
                b'-' => next != b'-',
                b'/' => next != b'*',
                b'$' => next.is_ascii_digit(),
                _ => true,
            }
        })
    }

    fn contains_ci(hay: &str, needle: &str) -> bool {
        hay.as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_split() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
            "SELECT 1 FROM \"T\" WHERE x IN (1);",
            "Commit;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
            "select 1",
            "SeLeCt 1 ;  ",
            "select -1, a-b, 4/2",
            "SELECT 1 -- a comment ( ;",
            "SELECT * FROM t /* set_config( */",
            "select $$x$$",
            "select $tag$ ; $tag$",
            "SELECT 1 INTO t",
            "select 1 into t;",
            "UPDATE t SET x = 1",
            "INSERT INTO t VALUES (1)",
            "prepare x as select 1",
            "PREPARE TRANSACTION 'x'",
            "begin",
            "COMMIT;",
            "values (1)",
            "show search_path;",
            "select set_config('a', 'b', false)",
            "select\tpg_advisory_lock(1)",
            "select 1; select 2",
            "select 1;;",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "CALL p()",
            "DO $$ BEGIN END $$",
            "",
            ";",
            "   ",
            "select \"weird\"",
            "sélect 1",
        ] {
            if simple(sql) && !contains_ci(sql, " into ") {
                assert_eq!(plain(sql), plain_split(sql), "{sql:?}");
            }
            // The one-pass keyword search finds what substring searches find.
            let pins = PIN_WORDS.iter().any(|w| contains_ci(sql, w));
            let setting = ["set", "reset", "discard"].iter().any(|w| {
                statements(sql)
                    .iter()
                    .any(|s| words(s, 64).iter().any(|x| x == w))
            });
            let seen = Seen::of(sql);
            assert_eq!(seen.pin, pins, "{sql:?}");
            assert_eq!(seen.into, contains_ci(sql, " into "), "{sql:?}");
            assert!(seen.setting || !setting, "{sql:?}: a SET missed");
            assert_eq!(seen.simple, simple(sql), "{sql:?}");
        }
        assert!(plain(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"
        ));
        assert!(plain(
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
        ));
        assert!(!plain("select 1 into t;"));
        assert!(!plain("UPDATE t SET x = 1;"));
        assert!(Seen::of("update t SET x = 1").setting);
        assert!(!Seen::of("select 1 offset 2").setting);
        assert!(!Seen::of("select settings, reset_val").setting);
        assert!(Seen::of("select 1;reset all").setting);
        assert!(Seen::of("SELECT pg_advisory_lock(1)").pin);
    }

    /// The one-pass search against plain substring searches, on every string of three
    /// fragments: keywords cut anywhere, upper and lower case, at the start and the end of the
    /// text, beside quotes, punctuation, digits and non-ASCII letters.
    #[test]
    fn the_one_pass_search_finds_exactly_what_substring_searches_find() {
        let fragments = [
            "", " ", "\t", ";", "; ", "(", "'", "\"", "-", "--", "/", "/*", "$", "$1", "$$", "x",
            "_", "é", "9", "SET", "set", "Reset", "rese", "t", "discard", "DISC", "ard", "INTO",
            " into ", " int", "o ", "advisory", "ADVI", "sory", "listen", "LIST", "en", "temp",
            "TeMp", "te", "mp", "hold", "HOL", "d", "prepare", "PREP", "are", "into",
        ];
        let word_at = |sql: &str, w: &str| {
            let b = sql.as_bytes();
            let ident = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_' || *c >= 0x80;
            (0..b.len()).any(|i| {
                b.get(i..i + w.len())
                    .is_some_and(|s| s.eq_ignore_ascii_case(w.as_bytes()))
                    && !i.checked_sub(1).is_some_and(|p| ident(&b[p]))
                    && !b.get(i + w.len()).is_some_and(ident)
            })
        };
        let mut checked = 0;
        for a in fragments {
            for b in fragments {
                for c in fragments {
                    let sql = format!("{a}{b}{c}");
                    let seen = Seen::of(&sql);
                    let want = Seen {
                        pin: PIN_WORDS.iter().any(|w| contains_ci(&sql, w)),
                        into: contains_ci(&sql, " into "),
                        setting: ["set", "reset", "discard"].iter().any(|w| word_at(&sql, w)),
                        simple: simple(&sql),
                    };
                    assert_eq!(seen, want, "{sql:?}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, fragments.len().pow(3));
    }

    #[test]
    fn session_level_sets_and_resets_are_found_and_local_ones_are_not() {
        let s = scan(
            "SET statement_timeout = '5s'; set Session work_mem to 64; SET LOCAL lock_timeout = 1; \
             SET TIME ZONE 'UTC'; reset search_path; SET \"My.Custom\" = 'x'; SET TRANSACTION READ ONLY",
        );
        assert_eq!(
            s.settings,
            vec![
                "statement_timeout",
                "work_mem",
                "timezone",
                "search_path",
                "My.Custom"
            ]
        );
        assert!(!s.reset_all && !s.may_pin);
        assert!(scan("RESET ALL").reset_all);
        assert!(scan("discard all").reset_all);
        assert!(scan("SET ROLE reporting").settings == ["role"]);
        assert_eq!(
            scan("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY").settings,
            [
                "default_transaction_isolation",
                "default_transaction_read_only",
                "default_transaction_deferrable"
            ]
        );
    }

    #[test]
    fn quoted_text_and_comments_do_not_split_or_count() {
        let s =
            scan("SELECT 'a; SET x = 1' /* ; SET y = 2 */; -- SET z = 3\nSELECT $q$; SET w=1$q$");
        assert!(s.settings.is_empty());
        assert_eq!(statements("SELECT 1; SELECT ';'; SELECT $$;$$").len(), 3);
    }

    #[test]
    fn updates_with_set_clauses_are_not_settings() {
        let s = scan("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1");
        assert!(s.settings.is_empty() && !s.reset_all && !s.may_pin);
        assert!(s.dirty, "an UPDATE may fire a trigger that sets something");
    }

    #[test]
    fn pin_words_send_the_pooler_to_look() {
        for sql in [
            "SELECT pg_advisory_lock(1)",
            "LISTEN jobs",
            "CREATE TEMP TABLE t (x int)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "PREPARE p AS SELECT 1",
        ] {
            assert!(scan(sql).may_pin, "{sql}");
        }
        assert!(!scan("SELECT abalance FROM pgbench_accounts WHERE aid = $1").may_pin);
    }

    #[test]
    fn only_plain_queries_are_clean() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "select count(*), max(n) FROM t WHERE x IN (1, 2) AND y = ANY($1)",
            "WITH a AS (SELECT 1) SELECT * FROM a JOIN b USING (id)",
            "BEGIN; SELECT 1; COMMIT",
            "SHOW search_path",
            "SELECT 'set_config(x)' AS quoted, \"column\" FROM t",
            "PREPARE TRANSACTION 'tx1'",
            "SELECT now(), coalesce(a, b)::numeric(10, 2) FROM t",
        ] {
            assert!(plain(sql), "{sql}");
            assert!(!scan(sql).dirty, "{sql}");
        }
        for sql in [
            "SELECT set_config('app.tenant', 'A', false)",
            "SELECT pg_catalog.set_config('x', 'y', false)",
            "SELECT my_schema.\"Tune\"()",
            "select nextval('s')",
            "CALL p()",
            "DO $$ BEGIN PERFORM 1; END $$",
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET n = 1",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "SELECT 1; SELECT f(2)",
            "SELECT * INTO TEMP t2 FROM t",
            "PREPARE p AS SELECT 1",
            "LISTEN jobs",
            "CREATE TEMP TABLE t (x int)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        ] {
            assert!(!plain(sql), "{sql}");
        }
    }

    #[test]
    fn the_check_quotes_setting_names_as_literals() {
        let sql = check_sql(false, &["x'y".to_owned()]);
        assert_eq!(sql, "SELECT pg_catalog.current_setting('x''y', true)");
        assert!(check_sql(true, &[]).contains("pg_listening_channels"));
    }
}
