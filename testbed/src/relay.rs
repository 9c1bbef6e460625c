//! The only doors between the host and the node's network namespace.
//!
//! The control plane and PostgreSQL listen on the host's loopback; the kubelet, containerd's
//! pods and kube-proxy live in a network namespace the bed made (see `node.rs`). This
//! process, `testbed relay`, joins the two:
//! - **forwards**: listeners on the node's address inside the namespace (the apiserver and
//!   PostgreSQL as pods and the kubelet see them) that connect to the host's loopback;
//! - **egress**: an HTTP CONNECT proxy on a Unix socket, which kube-apiserver uses for its
//!   "cluster" traffic (webhooks behind Services, kubelet logs) through its
//!   EgressSelectorConfiguration. Targets in 10.0.0.0/8 are dialled inside the namespace,
//!   loopback targets on the host (webhooks that tests serve on 127.0.0.1); nothing else.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream, UnixListener};

/// What `testbed relay` serves.
#[derive(Debug)]
pub struct Relay {
    /// The namespace file, e.g. /var/run/netns/dbconn-bed-123.
    pub netns: PathBuf,
    /// (listen inside the namespace, connect to on the host).
    pub forwards: Vec<(SocketAddr, SocketAddr)>,
    /// The Unix socket of the CONNECT proxy.
    pub egress: PathBuf,
}

const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

impl Relay {
    /// Parses `--netns FILE --forward IN=OUT... --egress SOCKET`.
    pub fn from_args(args: &[String]) -> anyhow::Result<Relay> {
        let (mut netns, mut forwards, mut egress) = (None, Vec::new(), None);
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let value = it.next().with_context(|| format!("{arg} needs a value"))?;
            match arg.as_str() {
                "--netns" => netns = Some(PathBuf::from(value)),
                "--egress" => egress = Some(PathBuf::from(value)),
                "--forward" => {
                    let (inside, host) = value
                        .split_once('=')
                        .with_context(|| format!("--forward {value}: want IN=OUT"))?;
                    forwards.push((inside.parse()?, host.parse()?));
                }
                other => bail!("relay: unknown argument {other:?}"),
            }
        }
        Ok(Relay {
            netns: netns.context("relay: --netns is required")?,
            forwards,
            egress: egress.context("relay: --egress is required")?,
        })
    }

    /// Serves until killed.
    pub fn run(self) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(self.serve())
    }

    async fn serve(self) -> anyhow::Result<()> {
        for (inside, host) in &self.forwards {
            let (inside, host) = (*inside, *host);
            let std_listener =
                in_netns(&self.netns, move || std::net::TcpListener::bind(inside))
                    .with_context(|| format!("listening on {inside} in the node's namespace"))?;
            std_listener.set_nonblocking(true)?;
            let listener = TcpListener::from_std(std_listener)?;
            tokio::spawn(forward(listener, host));
        }
        let _ = std::fs::remove_file(&self.egress);
        let egress = UnixListener::bind(&self.egress)
            .with_context(|| format!("listening on {}", self.egress.display()))?;
        loop {
            let (stream, _) = egress.accept().await?;
            let netns = self.netns.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| connect(req, netns.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    }
}

async fn forward(listener: TcpListener, host: SocketAddr) {
    loop {
        let Ok((mut inside, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if let Ok(Ok(mut outside)) =
                tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(host)).await
            {
                let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
            }
        });
    }
}

/// One CONNECT request: dial, answer 200, then splice the upgraded stream.
async fn connect(
    req: Request<hyper::body::Incoming>,
    netns: PathBuf,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let status = |code| {
        let mut r = Response::new(Empty::new());
        *r.status_mut() = code;
        Ok(r)
    };
    if req.method() != Method::CONNECT {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let Some(target) = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        return status(StatusCode::BAD_REQUEST);
    };
    let dialled = match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => {
            tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(target))
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        }
        IpAddr::V4(ip) if ip.octets()[0] == 10 => {
            let dial = tokio::task::spawn_blocking(move || {
                in_netns(&netns, move || {
                    std::net::TcpStream::connect_timeout(&target, DIAL_TIMEOUT)
                })
            })
            .await;
            match dial {
                Ok(Ok(stream)) => stream
                    .set_nonblocking(true)
                    .and_then(|()| TcpStream::from_std(stream)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(std::io::ErrorKind::Other.into()),
            }
        }
        _ => return status(StatusCode::FORBIDDEN),
    };
    let Ok(mut server) = dialled else {
        return status(StatusCode::BAD_GATEWAY);
    };
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(upgraded), &mut server).await;
        }
    });
    status(StatusCode::OK)
}

/// Runs `f` on a new thread that has joined the network namespace `netns`; sockets it makes
/// stay in that namespace whichever thread uses them later.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let file = std::fs::File::open(netns)?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        f()
    })
    .join()
    .map_err(|_| std::io::Error::other("namespace thread panicked"))?
}
