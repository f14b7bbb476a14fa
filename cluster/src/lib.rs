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

    // ----- building -----

    /// Hands the directory to the server account and checks that it can reach it, and that
    /// socket paths fit.
    fn prepare_dir(&self) -> Result<(), ClusterError> {
        let socket = self.dir().join(".s.PGSQL.65535");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ClusterError::InvalidOptions(format!(
                "Unix socket path {} is longer than {MAX_SOCKET_PATH} bytes: point TMPDIR \
                 at a shorter directory",
                socket.display()
            )));
        }
        if let Some(account) = self.run_as {
            let mut chown = Command::new("chown");
            chown.arg(format!("{account}:")).arg(self.dir());
            self.run(chown, None)?;
            let mut probe = self.server_command("test");
            probe.arg("-w").arg(self.dir());
            self.run(probe, None).map_err(|_| {
                ClusterError::InvalidOptions(format!(
                    "the OS user `{account}` cannot write to {} (is a parent directory \
                     private?): point TMPDIR at a directory it can reach, such as /tmp",
                    self.dir().display()
                ))
            })?;
        }
        Ok(())
    }

    fn init_primary(&self, extra_conf: &[String]) -> Result<(), ClusterError> {
        // initdb reads the superuser password from a file; it is removed right after.
        let pwfile = self.dir().join("pwfile");
        write_file(&pwfile, &format!("{}\n", self.password))?;
        fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600))
            .map_err(io_error(format!("restricting {}", pwfile.display())))?;
        if let Some(account) = self.run_as {
            let mut chown = Command::new("chown");
            chown.arg(format!("{account}:")).arg(&pwfile);
            self.run(chown, None)?;
        }
        let mut initdb = self.server_command(self.bindir.join("initdb"));
        initdb
            .arg("-D")
            .arg(self.data_dir(Node::Primary))
            .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()));
        let result = self.run(initdb, None);
        let _ = fs::remove_file(&pwfile);
        result?;

        let data = self.data_dir(Node::Primary);
        let mut conf = format!(
            "\n# Added by pgsplit's cluster harness.\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = {}\n\
             wal_level = replica\n\
             max_wal_senders = 10\n\
             max_replication_slots = 10\n\
             hot_standby = on\n\
             hot_standby_feedback = on\n\
             wal_receiver_status_interval = 1s\n\
             fsync = off\n\
             shared_buffers = 64MB\n\
             max_connections = 200\n\
             password_encryption = 'scram-sha-256'\n\
             logging_collector = off\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n",
            conf_string(&self.dir().to_string_lossy())
        );
        for line in extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        append_file(&data.join("postgresql.conf"), &conf)?;
        // Replaces initdb's file: the order of lines matters and the trust default for
        // loopback TCP would make passwords untested.
        write_file(
            &data.join("pg_hba.conf"),
            "# TYPE  DATABASE     USER  ADDRESS       METHOD\n\
             local   all          all                 trust\n\
             local   replication  all                 trust\n\
             host    all          all   127.0.0.1/32  scram-sha-256\n\
             host    replication  all   127.0.0.1/32  scram-sha-256\n",
        )
    }

    /// Starts a freshly built node on a free port, trying another port if one is taken
    /// between choosing it and the server binding it.
    fn start_on_free_port(&self, node: Node) -> Result<u16, ClusterError> {
        let auto_conf = self.data_dir(node).join("postgresql.auto.conf");
        let mut attempt = 1;
        loop {
            let port = free_loopback_port()?;
            // The last setting of a parameter wins, and postgresql.auto.conf is read last.
            append_file(&auto_conf, &format!("port = {port}\n"))?;
            let log_len = fs::metadata(self.log_file(node)).map_or(0, |m| m.len());
            match self.start_node(node) {
                Ok(()) => return Ok(port),
                Err(_) if attempt < PORT_ATTEMPTS && self.port_was_taken(node, log_len) => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn port_was_taken(&self, node: Node, log_offset: u64) -> bool {
        let log = fs::read(self.log_file(node)).unwrap_or_default();
        let new = log.get(log_offset as usize..).unwrap_or_default();
        String::from_utf8_lossy(new).contains("Address already in use")
    }

    fn create_roles(&self) -> Result<(), ClusterError> {
        let user = quote_ident(&self.user);
        // Sent on stdin so that the password shows neither in `ps` nor in error messages.
        self.psql_stdin(
            Node::Primary,
            "postgres",
            &format!(
                "CREATE ROLE {user} LOGIN PASSWORD {};\n",
                quote_literal(&self.password),
            ),
        )?;
        self.psql(
            Node::Primary,
            "postgres",
            &format!(
                "GRANT pg_read_all_stats, pg_monitor TO {user}; \
                 SELECT pg_create_physical_replication_slot('{REPLICATION_SLOT}')"
            ),
        )?;
        self.psql(
            Node::Primary,
            "postgres",
            &format!("CREATE DATABASE {DATABASE} OWNER {user}"),
        )?;
        self.psql(
            Node::Primary,
            DATABASE,
            &format!("GRANT ALL ON SCHEMA public TO {user}"),
        )
        .map(drop)
    }

    fn clone_replica(&self) -> Result<(), ClusterError> {
        let mut cmd = self.server_command(self.bindir.join("pg_basebackup"));
        cmd.arg("-D")
            .arg(self.data_dir(Node::Replica))
            .args(["-R", "-S", REPLICATION_SLOT, "-X", "stream"])
            // A fast checkpoint instead of waiting for a spread one; no fsync of the copy.
            .args(["-c", "fast", "--no-sync"])
            .args(["-h", "127.0.0.1", "-p", &self.primary_port.to_string()])
            .args(["-U", SUPERUSER])
            .env("PGPASSWORD", &self.password);
        self.run(cmd, Some(Node::Primary)).map(drop)
    }

    /// A detached shell that waits for this process to end, then stops both servers and
    /// removes the directory. It runs in its own process group so that a Ctrl-C aimed at
    /// the test run does not kill it before it has cleaned up.
    fn spawn_watchdog(&self) -> Result<Child, ClusterError> {
        let mut script = format!(
            "while kill -0 {} 2>/dev/null; do sleep 1; done\n",
            std::process::id()
        );
        for node in [Node::Replica, Node::Primary] {
            let data = shell_quote(&self.data_dir(node).to_string_lossy());
            let pg_ctl = shell_quote(&self.bindir.join("pg_ctl").to_string_lossy());
            let run_as = match self.run_as {
                Some(account) => format!("runuser -u {account} -- "),
                None => String::new(),
            };
            script.push_str(&format!(
                "[ -f {data}/postmaster.pid ] && {run_as}{pg_ctl} stop -D {data} -m immediate\n"
            ));
        }
        script.push_str(&format!(
            "rm -rf {}\n",
            shell_quote(&self.dir().to_string_lossy())
        ));
        use std::os::unix::process::CommandExt;
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(io_error("spawning the cluster watchdog (sh)"))
    }

    // ----- running commands -----

    /// A command for `program` run as the server account when this process is root, in
    /// the cluster directory, with libpq's environment cleared.
    fn server_command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = match self.run_as {
            Some(account) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", account, "--"]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        cmd.current_dir(self.dir());
        // PGHOST, PGOPTIONS, PGSSLMODE and friends would change what the tools connect to.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        // English messages; initdb is told the locale explicitly.
        cmd.env("LC_ALL", "C").env("PGCONNECT_TIMEOUT", "10");
        cmd
    }

    fn pg_ctl(&self, action: &str, node: Node) -> Command {
        let mut cmd = self.server_command(self.bindir.join("pg_ctl"));
        cmd.arg(action).arg("-D").arg(self.data_dir(node)).args([
            "-w",
            "-t",
            &PG_CTL_TIMEOUT.as_secs().to_string(),
        ]);
        cmd
    }

    fn psql_command(&self, node: Node, db: &str) -> Command {
        // Debian puts psql in the bindir; elsewhere it may only be on PATH.
        let in_bindir = self.bindir.join("psql");
        let program = if is_executable(&in_bindir) {
            in_bindir.into_os_string()
        } else {
            "psql".into()
        };
        let mut cmd = self.server_command(program);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.dir())
            .args([
                "-p",
                &self.port(node).to_string(),
                "-U",
                SUPERUSER,
                "-d",
                db,
            ]);
        cmd
    }

    fn psql_stdin(&self, node: Node, db: &str, sql: &str) -> Result<String, ClusterError> {
        let mut cmd = self.psql_command(node, db);
        let shown = format!("{} (SQL on stdin)", describe(&cmd));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(io_error(format!("running `{shown}`")))?;
        if let Some(mut stdin) = child.stdin.take() {
            // Small enough for the pipe buffer; dropping stdin ends psql's input.
            stdin
                .write_all(sql.as_bytes())
                .map_err(io_error(format!("writing SQL to `{shown}`")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(io_error(format!("waiting for `{shown}`")))?;
        self.check(shown, out, Some(node))
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Runs `cmd` to completion; a failure carries the tail of stderr and of `log`'s file.
    fn run(&self, mut cmd: Command, log: Option<Node>) -> Result<Output, ClusterError> {
        let shown = describe(&cmd);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(io_error(format!("running `{shown}`")))?;
        self.check(shown, out, log)
    }

    fn check(&self, shown: String, out: Output, log: Option<Node>) -> Result<Output, ClusterError> {
        if out.status.success() {
            return Ok(out);
        }
        let mut detail = String::new();
        for (name, bytes) in [("stderr", &out.stderr), ("stdout", &out.stdout)] {
            let text = String::from_utf8_lossy(bytes);
            if !text.trim().is_empty() {
                detail.push_str(&format!("\n--- {name} ---\n{}", tail(&text)));
            }
        }
        if let Some(node) = log {
            detail.push_str(&self.log_tail(node));
        }
        Err(ClusterError::Command {
            command: shown,
            status: out.status.to_string(),
            detail,
        })
    }

    /// The last lines of the node's server log, formatted for an error message.
    pub fn log_tail(&self, node: Node) -> String {
        let path = self.log_file(node);
        match fs::read(&path) {
            Ok(bytes) if !bytes.is_empty() => format!(
                "\n--- last lines of {} ---\n{}",
                path.display(),
                tail(&String::from_utf8_lossy(&bytes))
            ),
            _ => String::new(),
        }
    }

    /// Polls `check` until it reports true. `check` also describes what it saw, and an
    /// error counts as "not yet" (a server may be restarting); both end up in the timeout.
    fn wait_until(
        &self,
        what: &str,
        mut check: impl FnMut() -> Result<(bool, String), ClusterError>,
    ) -> Result<(), ClusterError> {
        let started = Instant::now();
        let mut last;
        loop {
            match check() {
                Ok((true, _)) => return Ok(()),
                Ok((false, seen)) => last = format!("last seen: {seen}"),
                Err(e) => last = format!("last error: {e}"),
            }
            if started.elapsed() >= REPLICATION_TIMEOUT {
                return Err(ClusterError::Timeout {
                    what: what.to_owned(),
                    waited: started.elapsed(),
                    detail: format!(
                        "\n{last}{}{}",
                        self.log_tail(Node::Primary),
                        self.log_tail(Node::Replica)
                    ),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
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

// ----- finding binaries -----

/// Finds a directory holding `initdb`, `pg_ctl`, `pg_basebackup` and `postgres`: on PATH,
/// else `pg_config --bindir`, else the highest version under `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> Result<PathBuf, ClusterError> {
    let has_all = |dir: &Path| {
        REQUIRED_BINARIES
            .iter()
            .all(|b| is_executable(&dir.join(b)))
    };
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|d| has_all(d))
    {
        return Ok(dir);
    }
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_all(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_all(bin))
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or(ClusterError::BinariesNotFound)
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

// ----- small helpers -----

/// A loopback TCP port that was free a moment ago (bound, then released).
pub fn free_loopback_port() -> Result<u16, ClusterError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(io_error("finding a free loopback port"))
}

/// The effective uid, from `/proc/self/status` (no libc call, hence no `unsafe`), falling
/// back to `id -u` where there is no procfs.
fn effective_uid() -> Result<u32, ClusterError> {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        // "Uid:\treal\teffective\tsaved\tfs"
        let effective = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .and_then(|id| id.parse().ok());
        if let Some(uid) = effective {
            return Ok(uid);
        }
    }
    let out = Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .output()
        .map_err(io_error(
            "running `id -u` to learn whether this process is root",
        ))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| ClusterError::Command {
            command: "id -u".to_owned(),
            status: out.status.to_string(),
            detail: format!(
                "\nunexpected output: {:?}",
                String::from_utf8_lossy(&out.stdout)
            ),
        })
}

fn ensure_account_exists(account: &str) -> Result<(), ClusterError> {
    let found = Command::new("id")
        .args(["-u", account])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if found {
        Ok(())
    } else {
        Err(ClusterError::NoServerAccount)
    }
}

fn write_file(path: &Path, contents: &str) -> Result<(), ClusterError> {
    fs::write(path, contents).map_err(io_error(format!("writing {}", path.display())))
}

fn append_file(path: &Path, contents: &str) -> Result<(), ClusterError> {
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .map_err(io_error(format!("appending to {}", path.display())))
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A string literal; `standard_conforming_strings` is on, so backslashes are plain.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A quoted string value for postgresql.conf.
fn conf_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
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
