//! The one way an identifier or literal enters SQL text. Every role, schema, table,
//! sequence, function and database name dbconn sends goes through `ident`; names that
//! PostgreSQL would silently truncate (over 63 bytes) or cannot hold (NUL) are refused first.

use std::fmt;

/// PostgreSQL's NAMEDATALEN - 1.
pub const MAX_IDENT_BYTES: usize = 63;

/// A name that cannot be used as a PostgreSQL identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentError {
    #[error("a name must not be empty")]
    Empty,
    #[error(
        "{name:?} is {len} bytes; PostgreSQL names are at most 63 bytes and longer ones are silently truncated"
    )]
    TooLong { name: String, len: usize },
    #[error("a name must not contain a NUL character")]
    Nul,
}

/// A validated identifier that renders double-quoted, with embedded quotes doubled.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident(String);

impl Ident {
    pub fn new(name: &str) -> Result<Self, IdentError> {
        if name.is_empty() {
            return Err(IdentError::Empty);
        }
        if name.contains('\0') {
            return Err(IdentError::Nul);
        }
        if name.len() > MAX_IDENT_BYTES {
            return Err(IdentError::TooLong {
                name: name.to_owned(),
                len: name.len(),
            });
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as PostgreSQL stores it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.replace('"', "\"\""))
    }
}

/// Quotes a name as an identifier: `ident("a\"b")` is `"a""b"`.
pub fn ident(name: &str) -> Result<Ident, IdentError> {
    Ident::new(name)
}

/// A string literal for the few places SQL has no parameters (utility statements such as
/// `ALTER ROLE … PASSWORD`): `E''` is never used, so only single quotes need doubling with
/// standard_conforming_strings on (the default since 9.1, and enforced per session here).
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_quoted_exactly() {
        assert_eq!(ident("app").unwrap().to_string(), "\"app\"");
        assert_eq!(
            ident("Robert\"); DROP TABLE x;--").unwrap().to_string(),
            "\"Robert\"\"); DROP TABLE x;--\""
        );
        assert_eq!(ident("select").unwrap().to_string(), "\"select\"");
        assert_eq!(ident("Mixed Case").unwrap().to_string(), "\"Mixed Case\"");
        assert_eq!(ident("ünïcødé 🐘").unwrap().to_string(), "\"ünïcødé 🐘\"");
    }

    #[test]
    fn names_postgres_would_truncate_or_cannot_hold_are_refused() {
        assert_eq!(ident(""), Err(IdentError::Empty));
        assert_eq!(ident("a\0b"), Err(IdentError::Nul));
        assert!(ident(&"x".repeat(63)).is_ok());
        assert!(matches!(
            ident(&"x".repeat(64)),
            Err(IdentError::TooLong { len: 64, .. })
        ));
        // 32 two-byte characters: 32 characters, 64 bytes.
        assert!(matches!(
            ident(&"é".repeat(32)),
            Err(IdentError::TooLong { len: 64, .. })
        ));
    }

    #[test]
    fn literals_double_single_quotes() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(
            literal("SCRAM-SHA-256$4096:abc=$def:ghi"),
            "'SCRAM-SHA-256$4096:abc=$def:ghi'"
        );
    }
}
