//! A throwaway PostgreSQL primary with a streaming hot-standby replica.
//!
//! Used by the integration tests (DESIGN.md §8) and by `pgsplit demo`. [`Cluster::start`]
//! runs `initdb` in a fresh temporary directory, starts the primary on a free loopback
//! port, creates the application role and database, clones the replica with
//! `pg_basebackup -R` through a physical replication slot, starts it, and returns once the
//! replica streams. Everything is blocking `std::process` work; call it from a blocking
//! context (or `spawn_blocking`) when inside an async runtime.
//!
//! PostgreSQL refuses to run as root, so when this process is root every server command
//! runs as the OS user `postgres` through `runuser`, in a directory that user owns.
//!
//! Cleanup happens twice over: [`Drop`] stops both servers and removes the directory, and a
//! detached watchdog shell does the same once this process is gone. The watchdog matters
//! because a test binary may be killed, and Rust never drops statics such as the shared
//! test cluster.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

mod commands;
mod host;
mod setup;

use host::*;
pub use host::{find_bindir, free_loopback_port};

/// The database owned by the application role.
pub const DATABASE: &str = "app";
/// The physical replication slot the replica streams from.
pub const REPLICATION_SLOT: &str = "replica_slot_1";
/// The bootstrap superuser; it has the same password as the application role.
pub const SUPERUSER: &str = "postgres";
/// The OS account servers run as when this process is root.
const SERVER_ACCOUNT: &str = "postgres";
/// The binaries a cluster cannot be built without.
const REQUIRED_BINARIES: [&str; 4] = ["initdb", "pg_ctl", "pg_basebackup", "postgres"];

/// How long `pg_ctl` may wait for a server to start, stop or promote.
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for the replica to stream or to replay up to the primary.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two polls of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Ports tried when the chosen free port is taken before the server binds it.
const PORT_ATTEMPTS: usize = 3;
/// Lines of stderr or server log quoted in an error.
const TAIL_LINES: usize = 25;
/// `sun_path` is 108 bytes on Linux, including the trailing NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Characters kept verbatim in the user-info part of a URI (RFC 3986 unreserved).
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why a cluster could not be found, started or driven.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No directory holds all of the server binaries.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup, postgres) not found on \
         PATH, via pg_config, or under /usr/lib/postgresql/*/bin: install the Debian package \
         `postgresql`"
    )]
    BinariesNotFound,
    /// Running as root, but there is no unprivileged account to run the servers as.
    #[error(
        "running as root, and PostgreSQL refuses to: the OS user `postgres` to run the \
         servers as does not exist (install the Debian package `postgresql`, which creates \
         it, or run as an unprivileged user)"
    )]
    NoServerAccount,
    /// The options cannot produce a working cluster.
    #[error("invalid cluster options: {0}")]
    InvalidOptions(String),
    /// A file-system or process-spawning operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A command ran and failed; `detail` holds the tail of its stderr and of the server log.
    #[error("`{command}` failed ({status}){detail}")]
    Command {
        command: String,
        status: String,
        detail: String,
    },
    /// A condition did not become true in time; `detail` says what was seen last.
    #[error("timed out after {waited:?} waiting for {what}{detail}")]
    Timeout {
        what: String,
        waited: Duration,
        detail: String,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

/// One of the two servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    Primary,
    Replica,
}

impl Node {
    /// The node's name, also the name of its data directory and (with `.log`) its log file.
    pub fn name(self) -> &'static str {
        match self {
            Node::Primary => "primary",
            Node::Replica => "replica",
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What to build.
#[derive(Clone)]
pub struct ClusterOptions {
    /// The application role: LOGIN, not superuser, owner of database [`DATABASE`].
    pub user: String,
    /// Password of the application role and of the superuser [`SUPERUSER`].
    pub password: String,
    /// Lines appended to the primary's `postgresql.conf`; the replica inherits them.
    pub extra_conf: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            user: "pgsplit".to_owned(),
            password: random_password(),
            extra_conf: Vec::new(),
        }
    }
}

impl fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("extra_conf", &self.extra_conf)
            .finish()
    }
}

impl ClusterOptions {
    fn validate(&self) -> Result<(), ClusterError> {
        let invalid = |why: &str| Err(ClusterError::InvalidOptions(why.to_owned()));
        if self.user.is_empty() {
            return invalid("user is empty");
        }
        if self.user == SUPERUSER {
            return invalid("user must differ from the superuser `postgres`");
        }
        if self.password.is_empty() {
            return invalid("password is empty");
        }
        if self.password.contains(['\n', '\r']) {
            // initdb reads the superuser password as the first line of a file.
            return invalid("password contains a line break");
        }
        Ok(())
    }
}

/// 128 bits from std's randomly keyed SipHash: unpredictable enough for a loopback cluster
/// and free of any dependency.
fn random_password() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::from("pgsplit-");
    for round in 0..2u64 {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(round);
        hasher.write_u32(std::process::id());
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        out.push_str(&format!("{:016x}", hasher.finish()));
    }
    out
}

/// A running primary and streaming replica in a temporary directory.
///
/// All methods take `&self`, so one cluster can be shared by the tests of a binary. Tests
/// that stop or promote a node should start a cluster of their own.
pub struct Cluster {
    bindir: PathBuf,
    /// `Some("postgres")` when this process is root and servers must run as that account.
    run_as: Option<&'static str>,
    user: String,
    password: String,
    primary_port: u16,
    replica_port: u16,
    watchdog: Option<Child>,
    /// Declared last: fields drop after `Drop::drop`, so the servers are stopped before the
    /// directory is removed.
    dir: tempfile::TempDir,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir.path())
            .field("bindir", &self.bindir)
            .field("run_as", &self.run_as)
            .field("user", &self.user)
            .field("primary_port", &self.primary_port)
            .field("replica_port", &self.replica_port)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Builds and starts the primary and the replica; returns once the replica streams.
    pub fn start(opts: ClusterOptions) -> Result<Cluster, ClusterError> {
        opts.validate()?;
        let bindir = find_bindir()?;
        let run_as = if effective_uid()? == 0 {
            ensure_account_exists(SERVER_ACCOUNT)?;
            Some(SERVER_ACCOUNT)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("pgsplit-cluster-")
            .tempdir()
            .map_err(io_error("creating the cluster's temporary directory"))?;
        // From here on, dropping `cluster` on an error stops whatever was started.
        let mut cluster = Cluster {
            bindir,
            run_as,
            user: opts.user,
            password: opts.password,
            primary_port: 0,
            replica_port: 0,
            watchdog: None,
            dir,
        };
        cluster.prepare_dir()?;
        cluster.watchdog = Some(cluster.spawn_watchdog()?);
        cluster.init_primary(&opts.extra_conf)?;
        cluster.primary_port = cluster.start_on_free_port(Node::Primary)?;
        cluster.create_roles()?;
        cluster.clone_replica()?;
        cluster.replica_port = cluster.start_on_free_port(Node::Replica)?;
        cluster.wait_streaming()?;
        Ok(cluster)
    }

    /// The node's TCP port on 127.0.0.1 (its Unix socket lives in [`Cluster::dir`]).
    pub fn port(&self, node: Node) -> u16 {
        match node {
            Node::Primary => self.primary_port,
            Node::Replica => self.replica_port,
        }
    }

    /// libpq URI for the application role and database on `node`.
    pub fn url(&self, node: Node) -> String {
        self.url_for(&self.user, node)
    }

    /// libpq URI for the superuser [`SUPERUSER`] on database [`DATABASE`] of `node`.
    pub fn superuser_url(&self, node: Node) -> String {
        self.url_for(SUPERUSER, node)
    }

    fn url_for(&self, user: &str, node: Node) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{DATABASE}",
            utf8_percent_encode(user, USERINFO),
            utf8_percent_encode(&self.password, USERINFO),
            self.port(node)
        )
    }

    /// The application role.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Password of the application role and of the superuser.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The temporary directory: data directories, logs and Unix sockets.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the server binaries were found.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The node's data directory.
    pub fn data_dir(&self, node: Node) -> PathBuf {
        self.dir().join(node.name())
    }

    /// The node's server log (written by `pg_ctl -l`).
    pub fn log_file(&self, node: Node) -> PathBuf {
        self.dir().join(format!("{}.log", node.name()))
    }

    /// Runs `sql` as the superuser over the node's Unix socket, with `psql -At` and
    /// `ON_ERROR_STOP`; returns trimmed stdout. Several statements in `sql` run as one
    /// transaction, so `CREATE DATABASE` and the like need a call of their own.
    pub fn psql(&self, node: Node, db: &str, sql: &str) -> Result<String, ClusterError> {
        let mut cmd = self.psql_command(node, db);
        cmd.arg("-c").arg(sql);
        let out = self.run(cmd, Some(node))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Stops `node`: `-m immediate` (a crash, no shutdown checkpoint) or `-m fast`.
    pub fn stop(&self, node: Node, immediate: bool) -> Result<(), ClusterError> {
        let mode = if immediate { "immediate" } else { "fast" };
        let mut cmd = self.pg_ctl("stop", node);
        cmd.args(["-m", mode]);
        self.run(cmd, Some(node)).map(drop)
    }

    /// Starts a stopped `node` and waits until it accepts connections.
    pub fn start_node(&self, node: Node) -> Result<(), ClusterError> {
        let mut cmd = self.pg_ctl("start", node);
        cmd.arg("-l").arg(self.log_file(node));
        self.run(cmd, Some(node)).map(drop)
    }

    /// Promotes a standby (normally [`Node::Replica`]) and waits until it accepts writes.
    pub fn promote(&self, node: Node) -> Result<(), ClusterError> {
        self.run(self.pg_ctl("promote", node), Some(node)).map(drop)
    }

    /// Waits until the primary reports a streaming standby and the replica is in recovery.
    pub fn wait_streaming(&self) -> Result<(), ClusterError> {
        self.wait_until("the replica to stream from the primary", || {
            let standbys = self.psql(
                Node::Primary,
                "postgres",
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            )?;
            let in_recovery = self.psql(Node::Replica, "postgres", "SELECT pg_is_in_recovery()")?;
            let ready = standbys != "0" && in_recovery == "t";
            Ok((
                ready,
                format!("streaming standbys: {standbys}, replica in recovery: {in_recovery}"),
            ))
        })
    }

    /// Waits until the replica has replayed everything the primary had written when called.
    /// Times out while replay is paused.
    pub fn wait_caught_up(&self) -> Result<(), ClusterError> {
        let target = self.psql(Node::Primary, "postgres", "SELECT pg_current_wal_lsn()")?;
        let check = format!(
            "SELECT pg_last_wal_replay_lsn(), pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"
        );
        self.wait_until(&format!("the replica to replay up to {target}"), || {
            let row = self.psql(Node::Replica, "postgres", &check)?;
            let (replayed, done) = row.split_once('|').unwrap_or((&row, ""));
            Ok((done == "t", format!("replica replayed up to {replayed}")))
        })
    }

    /// Pauses WAL replay on the replica, so that it falls behind the primary for real.
    pub fn pause_replay(&self) -> Result<(), ClusterError> {
        self.psql(Node::Replica, "postgres", "SELECT pg_wal_replay_pause()")
            .map(drop)
    }

    /// Resumes WAL replay on the replica.
    pub fn resume_replay(&self) -> Result<(), ClusterError> {
        self.psql(Node::Replica, "postgres", "SELECT pg_wal_replay_resume()")
            .map(drop)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Replica first, so the primary does not log a lost standby; errors are moot here.
        for node in [Node::Replica, Node::Primary] {
            if self.data_dir(node).join("postmaster.pid").exists() {
                let _ = self.stop(node, true);
            }
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        // `dir` (the TempDir) is removed when the fields drop, right after this.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_percent_encodes_the_password() {
        assert_eq!(
            utf8_percent_encode("a b@c:d/e%f-g.h_i~j", USERINFO).to_string(),
            "a%20b%40c%3Ad%2Fe%25f-g.h_i~j"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(shell_quote("/tmp/a'b"), "'/tmp/a'\\''b'");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let kept = tail(&text);
        assert_eq!(kept.lines().count(), TAIL_LINES);
        assert!(kept.ends_with("line 99"));
    }

    #[test]
    fn options_are_validated() {
        let mut opts = ClusterOptions::default();
        assert!(opts.validate().is_ok());
        assert!(opts.password.len() >= 32);
        assert!(!format!("{opts:?}").contains(&opts.password));
        opts.user = SUPERUSER.to_owned();
        assert!(opts.validate().is_err());
    }

    #[test]
    fn missing_binaries_name_the_package() {
        let message = ClusterError::BinariesNotFound.to_string();
        assert!(!message.contains('\n'));
        assert!(message.contains("`postgresql`"));
    }
}
