#!/usr/bin/env bash
# Bounded, coverage-guided fuzzing of every target, on the stable toolchain and
# without cargo-fuzz: the targets are built by cargo with the same LLVM
# sanitizer-coverage instrumentation cargo-fuzz passes (stable codegen flags;
# only AddressSanitizer would need nightly, and pgsplit forbids unsafe code),
# then each runs FUZZ_SECONDS (default 60) from its seeds and regressions.
# .ci/run calls it. A crash fails the run and leaves the input under
# $ARTIFACTS (default target/fuzz-artifacts/<target>/).
#
# Usage: fuzz/ci.sh [target...]      (default: every target)
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH="${FUZZ_SECONDS:-60}"
host="$(rustc -vV | sed -n 's/^host: //p')"
# Build scripts and proc macros are not instrumented: --target keeps
# RUSTFLAGS to the target's own code.
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions" \
  cargo build --locked --release --bins --target "$host" --target-dir target/ci
bin="target/ci/$host/release"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame startup scram classify)
artifacts="${ARTIFACTS:-$PWD/target/fuzz-artifacts}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "$artifacts/$t"
  inputs=("seeds/$t")
  [ -d "regressions/$t" ] && inputs+=("regressions/$t")
  echo "fuzz: $t for ${SECONDS_EACH}s from ${inputs[*]}"
  if ! "$bin/$t" -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -max_len=16384 \
      -artifact_prefix="$artifacts/$t/" -print_final_stats=1 "$work/$t" "${inputs[@]}" \
      > "$work/$t.log" 2>&1; then
    tail -n 40 "$work/$t.log"
    echo "fuzz: $t FAILED; crashing input under $artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^(#[0-9]+ +DONE|Done )' "$work/$t.log" | sed "s/^/fuzz: $t: /"
done
echo "fuzz: all targets ran ${SECONDS_EACH}s without a failure"
