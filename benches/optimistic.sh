#!/usr/bin/env bash
# Optimistic transactions (issue 14), release build, on a primary + replica of
# its own: a web-like mix inside transactions (80% read-only transactions of 3-5
# SELECTs, 20% SELECT + UPDATE), 8 and 64 clients, optimistic_transactions on
# and off. Prints TPS, the share of the read-only transactions' reads that the
# replica ran (from the servers' own pg_stat_statements), the outcomes, the
# replay's mean cost per moved transaction and the mismatch rate. Figures are
# printed, not asserted (shared machines are noisy); BENCHMARKS.md holds a run.
#
# Usage: benches/optimistic.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --test it -- --ignored --nocapture --exact "optimistic::measure_web_mix" 2>&1 |
  grep -v -E '^\s*(Compiling|Finished|Running)|^running|^test result|^$'
