//! Runs a table of libpq connection options against a server directly and
//! through pgsplit with a real libpq 18 (the one psycopg[binary] bundles, see
//! `tests/clients/libpq_options.py`; `.ci/run` installs it) and compares what
//! happened.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// What one connection attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// `ok`, `sqlstate:XXXXX`, `server` (the server refused the connection;
    /// libpq keeps no SQLSTATE for that) or `client` (libpq refused by itself).
    pub outcome: String,
    /// libpq's full protocol version when connected (30000, 30002), else 0.
    pub protocol: u32,
    pub message: String,
}

impl Attempt {
    pub fn connected(&self) -> bool {
        self.outcome == "ok"
    }

    /// The outcome with a server's SQLSTATE cut to its class: 28P01 and 28000
    /// are the same kind of refusal (authentication).
    pub fn kind(&self) -> String {
        match self.outcome.strip_prefix("sqlstate:") {
            Some(code) => format!("refused by the server ({})", code.get(..2).unwrap_or(code)),
            None if self.connected() => "connected".to_owned(),
            None if self.outcome == "server" => "refused by the server".to_owned(),
            None => "refused by libpq".to_owned(),
        }
    }
}

/// Tries each `(name, conninfo)`; returns libpq's version and one attempt per
/// case, in order.
pub async fn attempt_all(cases: &[(String, String)]) -> (u32, Vec<Attempt>) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/libpq_options.py"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    let mut input = String::new();
    for (name, conninfo) in cases {
        input.push_str(&format!("{name}\t{conninfo}\n"));
    }
    let mut stdin = child.stdin.take().unwrap_or_else(|| panic!("stdin"));
    stdin
        .write_all(input.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(stdin);
    let limit = Duration::from_secs(30 + 15 * cases.len() as u64);
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("libpq cases did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "libpq_options.py failed (is psycopg[binary] installed? .ci/run installs it): {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let version = lines
        .next()
        .and_then(|l| l.strip_prefix("libpq\t"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no libpq version in {stdout}"));
    let mut attempts = Vec::new();
    for (line, (name, _)) in lines.zip(cases) {
        let mut f = line.splitn(4, '\t');
        let got_name = f.next().unwrap_or_default();
        assert_eq!(got_name, name, "output out of order: {line}");
        attempts.push(Attempt {
            outcome: f.next().unwrap_or_default().to_owned(),
            protocol: f.next().and_then(|p| p.parse().ok()).unwrap_or(0),
            message: f.next().unwrap_or_default().to_owned(),
        });
    }
    assert_eq!(attempts.len(), cases.len(), "missing outcomes:\n{stdout}");
    (version, attempts)
}

/// The connection options of the compatibility table: those of libpq 18's
/// documentation that apply to a TCP connection, alone or with the setting
/// they need. `sslmode` rows and `verify-*` come from the caller.
pub fn option_rows() -> Vec<(&'static str, String)> {
    let rows: &[(&str, &str)] = &[
        ("defaults", ""),
        ("protocol 3.2", "max_protocol_version=3.2"),
        ("protocol latest", "max_protocol_version=latest"),
        ("min protocol 3.0", "min_protocol_version=3.0"),
        ("channel_binding=require", "channel_binding=require"),
        ("channel_binding=prefer", "channel_binding=prefer"),
        ("channel_binding=disable", "channel_binding=disable"),
        ("require_auth=scram-sha-256", "require_auth=scram-sha-256"),
        ("require_auth=!password", "require_auth=!password"),
        ("require_auth=md5", "require_auth=md5"),
        ("require_auth=none", "require_auth=none"),
        ("gssencmode=prefer", "gssencmode=prefer"),
        ("gssencmode=disable", "gssencmode=disable"),
        (
            "target_session_attrs=read-write",
            "target_session_attrs=read-write",
        ),
        (
            "target_session_attrs=primary",
            "target_session_attrs=primary",
        ),
        ("target_session_attrs=any", "target_session_attrs=any"),
        (
            "target_session_attrs=prefer-standby",
            "target_session_attrs=prefer-standby",
        ),
        (
            "target_session_attrs=read-only",
            "target_session_attrs=read-only",
        ),
        (
            "target_session_attrs=standby",
            "target_session_attrs=standby",
        ),
        ("load_balance_hosts=random", "load_balance_hosts=random"),
        ("sslcertmode=allow", "sslcertmode=allow"),
        ("sslcertmode=disable", "sslcertmode=disable"),
        (
            "keepalives",
            "keepalives=1&keepalives_idle=30&keepalives_interval=5&keepalives_count=3",
        ),
        ("tcp_user_timeout", "tcp_user_timeout=10000"),
        ("connect_timeout", "connect_timeout=5"),
        (
            "application_name",
            "application_name=compat&fallback_application_name=fallback",
        ),
        ("options -c", "options=-c%20statement_timeout%3D5s"),
        ("client_encoding", "client_encoding=UTF8"),
        ("hostaddr", "hostaddr=127.0.0.1"),
        (
            "ssl_min_protocol_version=TLSv1.3",
            "ssl_min_protocol_version=TLSv1.3",
        ),
        (
            "ssl_max_protocol_version=TLSv1.2",
            "ssl_max_protocol_version=TLSv1.2",
        ),
        ("sslcompression", "sslcompression=1"),
    ];
    rows.iter().map(|(n, o)| (*n, (*o).to_owned())).collect()
}

/// `base` (a URL without query) with `common` and `row` options.
pub fn conninfo(base: &str, common: &str, row: &str) -> String {
    let query: Vec<&str> = [common, row]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    if query.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", query.join("&"))
    }
}

/// Runs `rows` against `direct` and `proxied` (URLs without query, with
/// `common` options on both) and asserts each row has the same kind of
/// outcome both ways; prints the table. Returns the attempts through pgsplit.
pub async fn compare(
    label: &str,
    direct: &str,
    proxied: &str,
    common: &str,
    rows: &[(&str, String)],
) -> Vec<Attempt> {
    let mut cases = Vec::new();
    for (name, row) in rows {
        cases.push((format!("direct {name}"), conninfo(direct, common, row)));
        cases.push((format!("pgsplit {name}"), conninfo(proxied, common, row)));
    }
    let (version, attempts) = attempt_all(&cases).await;
    assert!(
        version >= 180_000,
        "libpq {version}: the table needs libpq 18"
    );
    println!("libpq {version}, {label}:");
    let mut mismatches = Vec::new();
    let mut through = Vec::new();
    for (i, (name, _)) in rows.iter().enumerate() {
        let (d, p) = (&attempts[2 * i], &attempts[2 * i + 1]);
        println!(
            "  {name:40} direct: {:28} pgsplit: {}{}",
            d.kind(),
            p.kind(),
            if p.connected() {
                format!(" (protocol {})", p.protocol)
            } else {
                String::new()
            }
        );
        if d.kind() != p.kind() {
            mismatches.push(format!(
                "{name}: direct {} ({}), pgsplit {} ({})",
                d.kind(),
                d.message,
                p.kind(),
                p.message
            ));
        }
        through.push(p.clone());
    }
    assert!(
        mismatches.is_empty(),
        "{label}: outcomes differ:\n{}",
        mismatches.join("\n")
    );
    through
}
