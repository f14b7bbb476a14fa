//! What the host provides: PostgreSQL binaries, free ports, the server
//! account, files, and quoting for the SQL and config pgsplit-cluster writes.

use super::*;

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

pub(crate) fn is_executable(path: &Path) -> bool {
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
pub(crate) fn effective_uid() -> Result<u32, ClusterError> {
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

pub(crate) fn ensure_account_exists(account: &str) -> Result<(), ClusterError> {
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

pub(crate) fn write_file(path: &Path, contents: &str) -> Result<(), ClusterError> {
    fs::write(path, contents).map_err(io_error(format!("writing {}", path.display())))
}

pub(crate) fn append_file(path: &Path, contents: &str) -> Result<(), ClusterError> {
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .map_err(io_error(format!("appending to {}", path.display())))
}

pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

pub(crate) fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A string literal; `standard_conforming_strings` is on, so backslashes are plain.
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A quoted string value for postgresql.conf.
pub(crate) fn conf_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

pub(crate) fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}
