//! The server's messages on their way to the client. Whole frames go through the transaction
//! tracker and the statement bookkeeping (which drops the answers to messages the pooler added
//! and makes up those to messages it left out); a large DataRow or CopyData is passed through
//! as it arrives, never held whole, so a 100 MB value costs the sidecar a read buffer, not
//! 100 MB; the answers to the pooler's own prelude (the reset before another client's first
//! transaction) are swallowed. Every other message is held whole, up to the message limit.

use std::collections::BTreeMap;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{ClientError, fatal, shrink};
use crate::pgwire::messages::{self, IDLE};
use crate::pgwire::sqlstate::{CONNECTION_FAILURE, PROTOCOL_VIOLATION};
use crate::pgwire::tracker::Tracker;
use crate::pooler::prepared::{Cache, Prepared};

/// A DataRow or CopyData longer than this is passed through as it arrives.
const STREAM_AT: usize = 64 * 1024;

/// Where the stream of server messages to one client stands.
#[derive(Debug, Default)]
pub(super) struct Relay {
    /// Bytes of a large DataRow or CopyData still to pass through as they arrive.
    passing: usize,
    /// ReadyForQuery messages of the pooler's prelude still to swallow.
    pub prelude: usize,
    /// The prelude failed: the server's message.
    prelude_error: Option<String>,
}

impl Relay {
    /// Nothing half-forwarded and no prelude answer owed.
    pub fn settled(&self) -> bool {
        self.passing == 0 && self.prelude == 0
    }
}

/// What the messages are fed to on their way.
pub(super) struct Sink<'a> {
    pub tracker: &'a mut Tracker,
    pub statements: Option<(&'a mut Prepared, &'a mut Cache)>,
    /// The server connection's ParameterStatus values.
    pub params: &'a mut BTreeMap<String, String>,
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Forwards the server messages in `buf` to the client in one write (or as they arrive, for
/// a large one), and consumes them from `buf`. Returns the bytes written to the client.
pub(super) async fn drain(
    buf: &mut BytesMut,
    relay: &mut Relay,
    mut sink: Sink<'_>,
    limit: usize,
    client: &mut TcpStream,
) -> Result<usize, ClientError> {
    let malformed = || fatal(PROTOCOL_VIOLATION, "the server sent a malformed message");
    let mut end = 0;
    // Set once the bytes to send differ from the bytes received.
    let mut edited: Option<Vec<u8>> = None;
    // The rest of a message passing through.
    let n = relay.passing.min(buf.len());
    end += n;
    relay.passing -= n;
    while relay.passing == 0 && buf.len() - end >= 5 {
        let tag = buf[end];
        let len = be_u32(&buf[end + 1..]) as usize;
        if len < 4 {
            return Err(malformed());
        }
        let total = len + 1;
        let available = buf.len() - end;
        if relay.prelude > 0 {
            // The pooler's own reset: its answers never reach the client.
            if available < total {
                if total > limit {
                    return Err(malformed());
                }
                break;
            }
            // Skipped: from here the bytes sent are a copy without these.
            edited.get_or_insert_with(|| buf[..end].to_vec());
            let frame = &buf[end..end + total];
            match tag {
                b'E' => {
                    let (_, message) = messages::parse_error(&frame[5..]);
                    relay.prelude_error = Some(message);
                }
                b'S' => {
                    if let Ok((k, v)) = messages::parse_parameter_status(&frame[5..]) {
                        sink.params.insert(k.to_owned(), v.to_owned());
                    }
                }
                b'Z' => {
                    relay.prelude -= 1;
                    if let Some(message) = relay.prelude_error.take() {
                        return Err(fatal(
                            CONNECTION_FAILURE,
                            format!(
                                "resetting the server connection for this client failed: {message}"
                            ),
                        ));
                    }
                }
                _ => {}
            }
            end += total;
            continue;
        }
        if available < total {
            if matches!(tag, b'D' | b'd') && total > STREAM_AT {
                // Too large to hold: what is here goes now, the rest as it arrives.
                sink.tracker.server(tag, IDLE);
                forward(&mut sink, tag)?;
                if let Some(out) = edited.as_mut() {
                    out.extend_from_slice(&buf[end..]);
                }
                end = buf.len();
                relay.passing = total - available;
                break;
            }
            if total > limit {
                return Err(fatal(
                    PROTOCOL_VIOLATION,
                    format!(
                        "the server sent a message {:?} of {total} bytes, more than the pooler holds (--max-message-bytes {limit})",
                        tag as char
                    ),
                ));
            }
            break;
        }
        let frame = &buf[end..end + total];
        sink.tracker
            .server(tag, frame.get(5).copied().unwrap_or(IDLE));
        let mut replies = Vec::new();
        let keep = forward(&mut sink, tag)?;
        if let Some((p, _)) = sink.statements.as_mut() {
            p.replies(&mut replies);
        }
        if (!keep || !replies.is_empty()) && edited.is_none() {
            edited = Some(buf[..end].to_vec());
        }
        if let Some(out) = edited.as_mut() {
            if keep {
                out.extend_from_slice(frame);
            }
            out.extend_from_slice(&replies);
        }
        end += total;
    }
    let sent = match edited {
        Some(out) => {
            client.write_all(&out).await?;
            out.len()
        }
        None => {
            client.write_all(&buf[..end]).await?;
            end
        }
    };
    buf.advance(end);
    shrink(buf);
    Ok(sent)
}

/// Whether the client gets the message (the statement bookkeeping may drop it).
fn forward(sink: &mut Sink<'_>, tag: u8) -> Result<bool, ClientError> {
    match sink.statements.as_mut() {
        Some((p, cache)) => p
            .server(tag, cache)
            .map_err(|e| fatal(PROTOCOL_VIOLATION, e.to_string())),
        None => Ok(true),
    }
}
