//! A real Prometheus (Debian package `prometheus`) for the tests: started on a
//! loopback port with its data in a temporary directory, scraping pgsplit
//! admin listeners every second, killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_norway::Value;

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    /// Its HTTP API (`/api/v1/...`), on loopback.
    pub web: SocketAddr,
    log_path: PathBuf,
    // Removed on drop, after the process is gone (field order).
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with one job, `pgsplit`, scraping `/metrics` of every
    /// address in `targets` every second (the `instance` label is the address).
    pub fn start(targets: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: pgsplit\n    scrape_interval: 1s\n    \
                 scrape_timeout: 1s\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let web = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
        let log_path = dir.path().join("prometheus.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("prometheus (Debian package `prometheus`) cannot be run: {e}")
            });
        Prometheus {
            child,
            web,
            log_path,
            _dir: dir,
        }
    }

    /// What Prometheus logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Panics, with its log, if Prometheus has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("prometheus exited ({status}):\n{}", self.log());
        }
    }

    /// GET `path` (with its query string) from the HTTP API: (status, body).
    pub async fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let response = super::http_get(self.web, path).await?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| std::io::Error::other(format!("no end of headers: {response}")))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
        Ok((status, body.to_owned()))
    }

    /// Evaluates `promql` now (`/api/v1/query`): the result vector on
    /// success, else what went wrong (HTTP status, Prometheus' error).
    pub async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", super::percent(promql));
        let (status, body) = self.get(&path).await.map_err(|e| e.to_string())?;
        // JSON is (flow-style) YAML: parse it with the YAML dev-dependency.
        let v: Value = serde_norway::from_str(&body)
            .map_err(|e| format!("HTTP {status}, unreadable answer ({e}): {body}"))?;
        if v.get("status").and_then(Value::as_str) != Some("success") {
            return Err(format!("HTTP {status}: {body}"));
        }
        v.get("data")
            .and_then(|d| d.get("result"))
            .and_then(Value::as_sequence)
            .cloned()
            .ok_or_else(|| format!("no data.result: {body}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
