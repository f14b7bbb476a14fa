//! Running the server programs and psql as the server account, and waiting
//! for what they start.

use super::*;

impl Cluster {
    // ----- running commands -----

    /// A command for `program` run as the server account when this process is root, in
    /// the cluster directory, with libpq's environment cleared.
    pub(crate) fn server_command(&self, program: impl AsRef<OsStr>) -> Command {
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

    pub(crate) fn pg_ctl(&self, action: &str, node: Node) -> Command {
        let mut cmd = self.server_command(self.bindir.join("pg_ctl"));
        cmd.arg(action).arg("-D").arg(self.data_dir(node)).args([
            "-w",
            "-t",
            &PG_CTL_TIMEOUT.as_secs().to_string(),
        ]);
        cmd
    }

    pub(crate) fn psql_command(&self, node: Node, db: &str) -> Command {
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

    pub(crate) fn psql_stdin(
        &self,
        node: Node,
        db: &str,
        sql: &str,
    ) -> Result<String, ClusterError> {
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
    pub(crate) fn run(&self, mut cmd: Command, log: Option<Node>) -> Result<Output, ClusterError> {
        let shown = describe(&cmd);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(io_error(format!("running `{shown}`")))?;
        self.check(shown, out, log)
    }

    pub(crate) fn check(
        &self,
        shown: String,
        out: Output,
        log: Option<Node>,
    ) -> Result<Output, ClusterError> {
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
    pub(crate) fn wait_until(
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
