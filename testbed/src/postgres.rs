//! A throwaway PostgreSQL cluster from Debian's packages: initdb into the bed's folder,
//! TLS with the bed's CA, scram-sha-256 passwords, a client-certificate-only user, and
//! `log_statement = 'all'` so tests can read every statement the server received.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::certs::{Ca, write_private};
use crate::{free_port, random_hex, run};

/// Superuser of the throwaway cluster.
pub const SUPERUSER: &str = "postgres";
/// A user that can log in only with a client certificate (pg_hba `cert`).
pub const CERT_USER: &str = "certuser";
/// A user that can log in only over TLS, with a password (for sslmode allow/prefer tests).
pub const TLS_ONLY_USER: &str = "tlsonly";

/// What a running cluster looks like to its users.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PostgresInfo {
    pub port: u16,
    pub superuser_password: String,
    pub tls_only_password: String,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub log_file: PathBuf,
    pub bin_dir: PathBuf,
    /// Client certificate and key of CERT_USER.
    pub cert_user_cert: PathBuf,
    pub cert_user_key: PathBuf,
}

impl PostgresInfo {
    /// The superuser URL, verify-full against the bed's CA.
    pub fn superuser_url(&self, ca: &Path) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
            self.superuser_password,
            self.port,
            ca.display()
        )
    }

    /// Runs `psql` as the superuser over the Unix socket (trusted) and returns its output.
    pub fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let out = Command::new(self.bin_dir.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ])
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!(
                "psql failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The server log so far (every statement, with log_statement = 'all').
    pub fn log(&self) -> anyhow::Result<String> {
        Ok(String::from_utf8_lossy(&std::fs::read(&self.log_file)?).into_owned())
    }

    /// Stops the server (fast shutdown) and waits.
    pub fn stop(&self) -> anyhow::Result<()> {
        run(as_postgres(self.bin_dir.join("pg_ctl"))
            .args(["stop", "-w", "-s", "-m", "fast", "-D"])
            .arg(&self.data_dir))
    }

    /// Starts a stopped server again on the same port and waits until it accepts connections.
    pub fn start(&self) -> anyhow::Result<()> {
        run(as_postgres(self.bin_dir.join("pg_ctl"))
            .args(["start", "-w", "-s", "-t", "60", "-D"])
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file))
    }

    /// The postmaster's process id, from postmaster.pid.
    pub fn pid(&self) -> anyhow::Result<u32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid"))?;
        Ok(text.lines().next().unwrap_or_default().trim().parse()?)
    }
}

/// Finds the newest PostgreSQL under /usr/lib/postgresql (or $PG_BIN).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Ok(dir.into());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (run scripts/setup.sh)")?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .context("no initdb under /usr/lib/postgresql/*/bin (run scripts/setup.sh)")
}

fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0\n"))
            .unwrap_or(false)
}

/// initdb refuses to run as root: as root, run PostgreSQL's tools as the `postgres` user.
fn as_postgres(program: PathBuf) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// Creates and starts a cluster in `dir`/pg.
pub fn start(dir: &Path, ca: &Ca) -> anyhow::Result<PostgresInfo> {
    let bin_dir = bin_dir()?;
    let root = dir.join("pg");
    let data_dir = root.join("data");
    let socket_dir = root.join("sock");
    std::fs::create_dir_all(&socket_dir)?;
    let port = free_port()?;
    let superuser_password = random_hex(16)?;
    let tls_only_password = random_hex(16)?;
    write_private(&root.join("pwfile"), &superuser_password)?;

    // NODE_IP: where pods reach this server (relayed), so verify-full holds there too.
    let server = ca.server(
        "pg-server",
        &["localhost", "127.0.0.1", crate::node::NODE_IP],
    )?;
    let cert_user = ca.client("pg-certuser", CERT_USER, None)?;
    if is_root() {
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&root))?;
    }
    run(as_postgres(bin_dir.join("initdb"))
        .arg("-D")
        .arg(&data_dir)
        .args([
            "-U",
            SUPERUSER,
            "-A",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ])
        .arg(format!("--pwfile={}", root.join("pwfile").display())))?;

    // The server's key and certificate live in the data directory, owned by postgres.
    for (from, to) in [
        (&server.cert, "server.crt"),
        (&server.key, "server.key"),
        (&ca.cert_path(), "root.crt"),
    ] {
        std::fs::copy(from, data_dir.join(to))?;
    }
    let conf = format!(
        "\n# dbconn test bed\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{sock}'\n\
         ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'\n\
         password_encryption = 'scram-sha-256'\nlog_statement = 'all'\nlog_connections = on\n\
         log_line_prefix = '%m [%p] %q%u@%d [%a] '\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
         max_connections = 400\nshared_buffers = 64MB\n",
        sock = socket_dir.display()
    );
    append(&data_dir.join("postgresql.conf"), &conf)?;
    let hba = format!(
        "# dbconn test bed\nlocal all all trust\n\
         hostssl all {CERT_USER} 127.0.0.1/32 cert\nhostnossl all {CERT_USER} 127.0.0.1/32 reject\n\
         hostnossl all {TLS_ONLY_USER} 127.0.0.1/32 reject\n\
         host all all 127.0.0.1/32 scram-sha-256\n"
    );
    std::fs::write(data_dir.join("pg_hba.conf"), hba)?;
    if is_root() {
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&root))?;
        run(Command::new("chmod")
            .arg("0600")
            .arg(data_dir.join("server.key")))?;
    }

    let info = PostgresInfo {
        port,
        superuser_password,
        tls_only_password,
        data_dir,
        socket_dir,
        log_file: root.join("postgres.log"),
        bin_dir,
        cert_user_cert: cert_user.cert,
        cert_user_key: cert_user.key,
    };
    // The log file must be writable by postgres.
    std::fs::write(&info.log_file, "")?;
    if is_root() {
        run(Command::new("chown")
            .arg("postgres:postgres")
            .arg(&info.log_file))?;
    }
    info.start()?;
    info.psql(
        "postgres",
        &format!(
            "CREATE ROLE {CERT_USER} LOGIN; CREATE ROLE {TLS_ONLY_USER} LOGIN PASSWORD '{}';",
            info.tls_only_password
        ),
    )?;
    Ok(info)
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
