//! The console's commands, read from one simple Query's text. Pure.

/// A console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Servers,
    Pools,
    Clients,
    Stats,
    Config,
    /// New work waits; returns once running transactions have finished, or
    /// after the timeout (seconds).
    Pause(Option<u64>),
    Resume,
    Reload,
    /// Where the statement would go, and why.
    Route(String),
    Help,
    /// An empty query (`;` alone): answered as PostgreSQL does.
    Empty,
}

/// Every command as the console's help and its error list show it.
pub const COMMANDS: &[&str] = &[
    "SHOW SERVERS",
    "SHOW POOLS",
    "SHOW CLIENTS",
    "SHOW STATS",
    "SHOW CONFIG",
    "SHOW ROUTE <statement>",
    "EXPLAIN ROUTE <statement>",
    "SHOW HELP",
    "PAUSE [timeout seconds]",
    "RESUME",
    "RELOAD",
];

/// Why a text is no command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown(pub String);

/// Reads a command. Keywords ignore case; a trailing `;` is allowed; the
/// statement of `SHOW ROUTE` is taken as written (only the final `;` and
/// surrounding blanks dropped).
pub fn parse(text: &str) -> Result<Command, Unknown> {
    let t = text.trim();
    let t = t.strip_suffix(';').unwrap_or(t).trim_end();
    if t.is_empty() {
        return Ok(Command::Empty);
    }
    let mut words = t.split_ascii_whitespace();
    let first = words.next().unwrap_or_default().to_ascii_uppercase();
    let second = words.next().unwrap_or_default().to_ascii_uppercase();
    let rest_after_two = || {
        // The text after the second word, as written.
        let after_first = t.trim_start()[first.len()..].trim_start();
        after_first[second.len()..].trim().to_owned()
    };
    let command = match (first.as_str(), second.as_str()) {
        ("SHOW" | "EXPLAIN", "ROUTE") => {
            let statement = rest_after_two();
            if statement.is_empty() {
                return Err(Unknown(format!("{first} ROUTE needs a statement")));
            }
            return Ok(Command::Route(statement));
        }
        ("SHOW", "SERVERS") => Command::Servers,
        ("SHOW", "POOLS") => Command::Pools,
        ("SHOW", "CLIENTS") => Command::Clients,
        ("SHOW", "STATS") => Command::Stats,
        ("RESUME", "") => Command::Resume,
        ("RELOAD", "") => Command::Reload,
        ("PAUSE", "") => Command::Pause(None),
        ("PAUSE", seconds) => match seconds.parse::<u64>() {
            Ok(n) if n <= 86_400 => Command::Pause(Some(n)),
            _ => {
                return Err(Unknown(format!(
                    "PAUSE takes a timeout in whole seconds (at most 86400), not {seconds:?}"
                )));
            }
        },
        ("SHOW", "CONFIG") => Command::Config,
        ("SHOW", "HELP") | ("HELP", "") => Command::Help,
        _ => return Err(Unknown(format!("unknown command {:?}", short(t)))),
    };
    match words.next() {
        None => Ok(command),
        Some(extra) => Err(Unknown(format!(
            "unexpected {extra:?} after {first} {second}"
        ))),
    }
}

/// The start of a text, for an error message.
fn short(t: &str) -> String {
    let mut s: String = t.chars().take(40).collect();
    if s.len() < t.len() {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        let ok = |s: &str, c: Command| assert_eq!(parse(s), Ok(c), "{s:?}");
        ok("SHOW SERVERS", Command::Servers);
        ok("show servers;", Command::Servers);
        ok("  Show\tPools ; ", Command::Pools);
        ok("SHOW CONFIG", Command::Config);
        ok("show clients", Command::Clients);
        ok("SHOW STATS", Command::Stats);
        ok("pause", Command::Pause(None));
        ok("PAUSE 30;", Command::Pause(Some(30)));
        ok("resume", Command::Resume);
        ok("RELOAD", Command::Reload);
        ok("help", Command::Help);
        ok("SHOW HELP;", Command::Help);
        ok(";", Command::Empty);
        ok("", Command::Empty);
        ok(
            "SHOW ROUTE SELECT * FROM t WHERE a = 'x;y';",
            Command::Route("SELECT * FROM t WHERE a = 'x;y'".into()),
        );
        ok(
            "explain route\n  UPDATE t SET v = 1",
            Command::Route("UPDATE t SET v = 1".into()),
        );
    }

    #[test]
    fn not_commands() {
        for s in [
            "SELECT 1",
            "SHOW",
            "SHOW TABLES",
            "SHOW SERVERS now",
            "SHOW ROUTE",
            "SHOW ROUTE ;",
            "EXPLAIN SELECT 1",
            "DROP TABLE t",
            "PAUSE soon",
            "PAUSE -1",
            "RESUME now",
        ] {
            assert!(parse(s).is_err(), "{s:?}");
        }
        let Err(Unknown(why)) = parse("SHOW SERVERS now") else {
            panic!("accepted")
        };
        assert!(why.contains("\"NOW\"") || why.contains("\"now\""), "{why}");
    }
}
