//! One client connection, by job: `startup` (authentication and the first messages), then
//! the `session` loop that binds a server connection at the first message of a transaction
//! and forwards both ways (`relay` streams what the server sends), and `transaction`, the
//! bookkeeping when a transaction ends: what it left on the session, and whether the server
//! connection may go to another client.

mod admin;
mod relay;
mod session;
mod startup;
mod transaction;

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::pool::{ClientInfo, Lease, Pool};
use crate::pgwire::WireError;
use crate::pgwire::frame::{self, Startup};
use crate::pgwire::messages;
use crate::pgwire::sqlstate::{CONNECTION_FAILURE, PROTOCOL_VIOLATION};
use crate::pgwire::tracker::Tracker;
use relay::Relay;
use session::Session;

/// How long a client has to finish its startup and authentication.
const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a client session ended early.
#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("client I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the client closed the connection")]
    Gone,
    /// Sent to the client as a FATAL ErrorResponse.
    #[error("{message}")]
    Fatal { code: &'static str, message: String },
}

fn fatal(code: &'static str, message: impl Into<String>) -> ClientError {
    ClientError::Fatal {
        code,
        message: message.into(),
    }
}

/// Where a client session stands: with no server connection, or bound to one.
enum State {
    /// No server connection: between transactions (transaction mode) or before the first.
    Idle,
    Bound(Box<Bound>),
}

/// A server connection bound to a client, and what it still owes.
struct Bound {
    lease: Lease,
    tracker: Tracker,
    /// Where the stream of server messages stands.
    relay: Relay,
    /// Set while the connection stays with this client between transactions, with why.
    pin: Option<Vec<&'static str>>,
}

/// Serves one client until it leaves, breaks the protocol or the pooler shuts down.
pub async fn serve(mut socket: TcpStream, pool: Arc<Pool>, shutdown: watch::Receiver<bool>) {
    let _ = socket.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(8192);
    // A client that never finishes its startup must not hold a max_clients slot for ever.
    let started = tokio::time::timeout(
        STARTUP_TIMEOUT,
        startup::startup(&mut socket, &mut buf, &pool),
    )
    .await
    .unwrap_or_else(|_| Err(fatal(CONNECTION_FAILURE, "the startup exchange timed out")));
    let outcome = match started {
        Ok(startup::Started::Session(settings, key)) => {
            let info = Arc::new(ClientInfo::new(
                socket.peer_addr().ok(),
                settings
                    .get("application_name")
                    .cloned()
                    .unwrap_or_default(),
            ));
            pool.join(key, info.clone());
            let ended = Session::new(socket, buf, pool.clone(), settings, shutdown, key, info)
                .run()
                .await;
            pool.leave(key);
            pool.forget(key);
            ended
        }
        Ok(startup::Started::Admin) => admin::serve(socket, buf, &pool, shutdown).await,
        Err(e) => Err((socket, e)),
    };
    if let Err((mut socket, e)) = outcome {
        match &e {
            ClientError::Fatal { code, message } => {
                let mut out = Vec::new();
                messages::error_response(&mut out, "FATAL", code, message);
                let _ = socket.write_all(&out).await;
                pool.metrics.error("client_rejected");
                tracing::debug!(%message, "client rejected");
            }
            ClientError::Wire(w) => {
                let mut out = Vec::new();
                messages::error_response(&mut out, "FATAL", PROTOCOL_VIOLATION, &w.to_string());
                let _ = socket.write_all(&out).await;
                pool.metrics.error("protocol");
                tracing::info!(error = %w, "client broke the protocol");
            }
            ClientError::Io(_) | ClientError::Gone => {}
        }
    }
}

/// Turns a client away before its startup (too many clients) with a FATAL error.
pub async fn refuse(mut socket: TcpStream, pool: Arc<Pool>, code: &str, message: &str) {
    pool.metrics.error("client_refused");
    let mut buf = BytesMut::with_capacity(512);
    // Read the startup packet first so the client sees the error, not a reset.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match frame::startup(&buf) {
                Ok(Some((Startup::Ssl | Startup::GssEnc, n))) => {
                    buf.advance(n);
                    socket.write_all(b"N").await?;
                }
                Ok(None) => {
                    if fill(&mut socket, &mut buf).await.is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    let mut out = Vec::new();
    messages::error_response(&mut out, "FATAL", code, message);
    let _ = socket.write_all(&out).await;
}

async fn fill(socket: &mut TcpStream, buf: &mut BytesMut) -> Result<(), ClientError> {
    buf.reserve(8192);
    if socket.read_buf(buf).await? == 0 {
        return Err(ClientError::Gone);
    }
    Ok(())
}

/// Gives back the memory of a buffer that grew for one large message, once it is empty.
fn shrink(buf: &mut BytesMut) {
    const KEEP: usize = 64 * 1024;
    if buf.is_empty() && buf.capacity() > 16 * KEEP {
        *buf = BytesMut::with_capacity(KEEP);
    }
}
