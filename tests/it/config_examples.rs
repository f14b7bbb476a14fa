//! Every example config in config/ loads, and the binary rejects a bad one with
//! exit code 64 and a line naming the key.

use pgsplit::config::{Config, Overrides};

#[test]
fn every_example_config_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let cfg = Config::load(Some(&path), std::iter::empty(), &Overrides::default())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!cfg.primary.host.is_empty());
            n += 1;
        }
    }
    assert!(n >= 1, "no example configs found in {}", dir.display());
}

#[test]
fn bad_config_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "primary = \"postgres://u:p@127.0.0.1/db\"\n[routing]\nmax_lag = \"soonish\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgsplit"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("routing.max_lag"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgsplit"))
        .args(["--primary", "mysql://nope"])
        .env_remove("PGSPLIT_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("primary"));
}
