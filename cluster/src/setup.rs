//! Building a cluster: the directory, the primary, the roles, the replica,
//! the watchdog.

use super::*;

impl Cluster {
    // ----- building -----

    /// Hands the directory to the server account and checks that it can reach it, and that
    /// socket paths fit.
    pub(crate) fn prepare_dir(&self) -> Result<(), ClusterError> {
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

    pub(crate) fn init_primary(&self, extra_conf: &[String]) -> Result<(), ClusterError> {
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
    pub(crate) fn start_on_free_port(&self, node: Node) -> Result<u16, ClusterError> {
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

    pub(crate) fn port_was_taken(&self, node: Node, log_offset: u64) -> bool {
        let log = fs::read(self.log_file(node)).unwrap_or_default();
        let new = log.get(log_offset as usize..).unwrap_or_default();
        String::from_utf8_lossy(new).contains("Address already in use")
    }

    pub(crate) fn create_roles(&self) -> Result<(), ClusterError> {
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

    pub(crate) fn clone_replica(&self) -> Result<(), ClusterError> {
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
    pub(crate) fn spawn_watchdog(&self) -> Result<Child, ClusterError> {
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
}
