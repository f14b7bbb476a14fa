//! The `pgsplit` binary: parse flags, load config, init logs, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use pgsplit::app::{App, unix_signals};
use pgsplit::config::{Config, Overrides, PoolMode};

/// PostgreSQL read/write-splitting sidecar proxy.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// TOML config file.
    #[arg(long, env = "PGSPLIT_CONFIG")]
    config: Option<PathBuf>,
    /// Address clients connect to (default 127.0.0.1:6432).
    #[arg(long)]
    listen: Option<String>,
    /// Address of the admin HTTP listener (default 127.0.0.1:9930).
    #[arg(long)]
    admin_listen: Option<String>,
    /// Primary server, as a libpq URL.
    #[arg(long)]
    primary: Option<String>,
    /// Replica server, as a libpq URL (repeatable).
    #[arg(long = "replica")]
    replicas: Vec<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Threads that run client sessions (config `workers`). 1, the default on
    /// machines with 2 cores or fewer, runs everything on one thread like
    /// PgBouncer: a sidecar shares its cores with the app and the servers, and
    /// threads waking each other cost more CPU per query than a second thread
    /// gains. 0 means one per core.
    #[arg(long)]
    workers: Option<usize>,
    /// How long a client keeps a server connection (config `pool.mode`):
    /// `session`, or `transaction` (while a transaction is open, or for one
    /// statement outside one).
    #[arg(long, value_enum)]
    pool_mode: Option<PoolModeArg>,
    #[cfg(feature = "demo")]
    #[command(subcommand)]
    command: Option<Command>,
}

// Only in builds with the `demo` feature (the default; the container image
// leaves it out).
#[cfg(feature = "demo")]
#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Start a throwaway primary + streaming replica and pgsplit in front of them.
    Demo {
        /// Port for pgsplit's client listener.
        #[arg(long, default_value_t = 6432)]
        port: u16,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PoolModeArg {
    Session,
    Transaction,
}

impl From<PoolModeArg> for PoolMode {
    fn from(m: PoolModeArg) -> Self {
        match m {
            PoolModeArg::Session => PoolMode::Session,
            PoolModeArg::Transaction => PoolMode::Transaction,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// EX_USAGE from sysexits.h: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    #[cfg(feature = "demo")]
    if let Some(Command::Demo { port }) = cli.command {
        let Some(runtime) = runtime_or_report(cli.workers) else {
            return ExitCode::FAILURE;
        };
        return match runtime.block_on(demo(port)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pgsplit demo: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let overrides = Overrides {
        workers: cli.workers,
        pool_mode: cli.pool_mode.map(PoolMode::from),
        listen: cli.listen,
        admin_listen: cli.admin_listen,
        primary: cli.primary,
        replicas: cli.replicas,
    };
    let config = match Config::load(cli.config.as_deref(), std::env::vars(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgsplit: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let reload = cli.config.clone().map(|file| (file, overrides.clone()));
    let Some(runtime) = runtime_or_report(config.workers) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(serve(config, reload)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgsplit: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime_or_report(workers: Option<usize>) -> Option<tokio::runtime::Runtime> {
    match build_runtime(workers) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("pgsplit: cannot start the runtime: {e}");
            None
        }
    }
}

/// The tokio runtime for `workers` session threads (see `Cli::workers`).
fn build_runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = match workers {
        None if cores <= 2 => 1,
        None | Some(0) => cores,
        Some(n) => n,
    };
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

async fn serve(config: Config, reload: Option<(PathBuf, Overrides)>) -> anyhow::Result<()> {
    let mut app = App::bind(config).await?;
    if let Some((file, flags)) = reload {
        app = app.reload_from(file, flags);
    }
    app.run(unix_signals()?).await;
    Ok(())
}

/// `pgsplit demo`: a throwaway primary and streaming replica
/// (`pgsplit-cluster`) with pgsplit in front, until Ctrl-C.
#[cfg(feature = "demo")]
async fn demo(port: u16) -> anyhow::Result<()> {
    use pgsplit_cluster::{Cluster, ClusterOptions, Node};
    eprintln!("pgsplit demo: starting a throwaway PostgreSQL primary and streaming replica...");
    let cluster =
        tokio::task::spawn_blocking(|| Cluster::start(ClusterOptions::default())).await??;
    let config = Config::load(
        None,
        std::iter::empty(),
        &Overrides {
            listen: Some(format!("127.0.0.1:{port}")),
            admin_listen: Some("127.0.0.1:0".into()),
            primary: Some(cluster.url(Node::Primary)),
            replicas: vec![cluster.url(Node::Replica)],
            ..Overrides::default()
        },
    )?;
    let app = App::bind(config).await?;
    let addr = app.local_addr();
    let admin = app.admin_addr();
    let url = cluster.url(Node::Primary);
    let proxied = match (url.rfind('@'), url.rfind('/')) {
        (Some(at), Some(slash)) if at < slash => {
            format!("{}@{}{}", &url[..at], addr, &url[slash..])
        }
        _ => url.clone(),
    };
    println!();
    println!("DATABASE_URL={proxied}");
    println!();
    println!(
        "pgsplit on {addr}: writes -> primary 127.0.0.1:{}, provably read-only statements -> replica 127.0.0.1:{} (admin http://{admin}/metrics)",
        cluster.port(Node::Primary),
        cluster.port(Node::Replica)
    );
    println!(
        "try: psql \"$DATABASE_URL\" -c 'SELECT inet_server_port()'   (Ctrl-C stops everything)"
    );
    app.run(unix_signals()?).await;
    eprintln!(
        "pgsplit demo: stopping servers and removing {}",
        cluster.dir().display()
    );
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(())
}
