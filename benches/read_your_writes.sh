#!/usr/bin/env bash
# Read-your-writes measurements (issue 13), in release builds, each against a
# primary + replica of its own:
#   1. where the reads of a 9-SELECT/1-UPDATE pgbench workload go (replica
#      share from the servers' own pg_stat_statements), and TPS, at 8 and 64
#      clients, read_your_writes = pod / session / off;
#   2. pgbench TPC-B with read_your_writes = pod vs off: TPS and pgsplit's CPU
#      per transaction.
# Figures are printed, not asserted (shared machines are noisy); BENCHMARKS.md
# holds a run.
#
# Usage: benches/read_your_writes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for test in measure_replica_share_with_writes measure_read_your_writes_cost; do
  cargo test --release --test it -- --ignored --nocapture --exact "consistency::$test" 2>&1 |
    grep -v -E '^\s*(Compiling|Finished|Running)|^running|^test result|^$'
done
