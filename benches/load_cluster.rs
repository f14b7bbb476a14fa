//! Helper for `benches/load.sh`, not a benchmark: starts the throwaway primary +
//! streaming replica of `pgsplit_cluster`, prints what the script needs as
//! `KEY=value` lines followed by `READY`, and keeps the cluster up until its
//! standard input closes (the script holds a pipe open; when the script exits,
//! however it exits, the pipe closes and the cluster is stopped and removed).
//!
//! It does nothing unless `PGSPLIT_LOAD_CLUSTER=serve` is set, so a plain
//! `cargo bench` that runs every bench target does not start servers.

use std::io::{Read, Write};

use pgsplit_cluster::{Cluster, ClusterOptions, Node};

fn main() {
    if std::env::var("PGSPLIT_LOAD_CLUSTER").as_deref() != Ok("serve") {
        eprintln!("load_cluster: helper for benches/load.sh (set PGSPLIT_LOAD_CLUSTER=serve)");
        return;
    }
    let opts = ClusterOptions {
        // pgbench -s 10 is ~160 MB; room for the pools of pgsplit and PgBouncer
        // (idle ones included) plus direct pgbench clients.
        extra_conf: vec![
            "shared_buffers = 256MB".to_owned(),
            "max_connections = 400".to_owned(),
        ],
        ..ClusterOptions::default()
    };
    let cluster = match Cluster::start(opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("load_cluster: cannot start the cluster: {e}");
            std::process::exit(1);
        }
    };
    let mut out = std::io::stdout().lock();
    let lines = [
        ("PRIMARY_URL", cluster.url(Node::Primary)),
        ("REPLICA_URL", cluster.url(Node::Replica)),
        ("PRIMARY_PORT", cluster.port(Node::Primary).to_string()),
        ("REPLICA_PORT", cluster.port(Node::Replica).to_string()),
        ("DB_USER", cluster.user().to_owned()),
        ("DB_PASSWORD", cluster.password().to_owned()),
        ("DB_NAME", pgsplit_cluster::DATABASE.to_owned()),
        ("CLUSTER_DIR", cluster.dir().display().to_string()),
    ];
    for (k, v) in lines {
        let _ = writeln!(out, "{k}={v}");
    }
    let _ = writeln!(out, "READY");
    let _ = out.flush();
    drop(out);
    // Block until the script closes our stdin (or dies).
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin().lock();
    while let Ok(n) = stdin.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
    drop(cluster);
}
