#!/usr/bin/env bash
# Instructions per query of pgsplit and PgBouncer, counted by callgrind: user-space
# instructions do not depend on what else the machine runs, so these figures are
# repeatable where TPS and CPU seconds on a shared 2-core machine are not. They
# leave out the kernel (socket work is about the same for both proxies, see
# BENCHMARKS.md) and say nothing about waiting.
#
# Called by benches/load.sh after its rounds (it owns the cluster and PgBouncer's
# config); runnable alone against any running primary + replica:
#
#   PRIMARY_URL=postgres://u:p@127.0.0.1:5432/db REPLICA_URL=postgres://127.0.0.1:5433/db \
#   PGBOUNCER_INI=/path/pgbouncer.ini PGBOUNCER_PORT=6433 SPLIT_BIN=target/release/pgsplit \
#   OUT=/tmp/ir benches/instructions.sh
#
# (SPLIT_BIN: pgsplit refuses unknown PGSPLIT_* variables in its environment.)
# PGBOUNCER_INI is optional (PgBouncer is skipped without it); its listen_port
# must be PGBOUNCER_PORT, its `<db>_session` entry serves `-M prepared`. Needs
# valgrind (Debian package valgrind), pgbench and psql; the libpq environment
# (PGHOST, PGUSER, PGPASSWORD, PGDATABASE) must log in to both proxies.
#
# Method: for each workload, the counter delta over 500 and over 2,500 pgbench
# transactions per client (4 clients; 1 for TPC-B); their difference divided by
# the extra transactions is the cost of one more query, free of connection
# setup and start-up. Output:
# OUT/instructions.tsv (target, workload, instructions per query) and a table
# on stdout. RYW_TPCB=1 adds TPC-B per transaction with read_your_writes =
# pod and = off (two more pgsplit runs under callgrind, a few minutes).

set -euo pipefail

: "${PRIMARY_URL:?}" "${REPLICA_URL:?}" "${SPLIT_BIN:?}" "${OUT:?}"
command -v valgrind >/dev/null 2>&1 || { echo "instructions.sh: valgrind not found" >&2; exit 69; }
mkdir -p "$OUT"
TSV="$OUT/instructions.tsv"
: >"$TSV"
DB="${PGDATABASE:-app}"
RUN_AS=()
if [ "$(id -u)" -eq 0 ]; then RUN_AS=(runuser -u postgres --); fi

VG_PGSPLIT=""
VG_BOUNCER=""
stop() {
  local pid
  for pid in $VG_PGSPLIT $VG_BOUNCER; do
    kill -INT "$pid" 2>/dev/null || true
  done
  for pid in $VG_PGSPLIT $VG_BOUNCER; do
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
trap stop EXIT

free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 30000))
    ss -Htln "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
  done
}

# Total instructions so far of a process running under callgrind (all threads).
instructions() { # pid [runner...]
  local pid="$1"
  shift
  "$@" callgrind_control -e Ir "$pid" 2>/dev/null |
    awk '$1 == "Th" { gsub(",", "", $3); s += $3; n++ } END { if (n) printf "%.0f\n", s; else print "" }'
}

# Cost of one more transaction: (delta over LONG - delta over SHORT) per query.
measure() { # target pid port db workload "pgbench args" [runner...]
  local target="$1" pid="$2" port="$3" db="$4" name="$5" args="$6" a b d1 d2 short=500 long=2500
  local c="${CLIENTS:-4}"
  shift 6
  # shellcheck disable=SC2086
  pgbench -n $args -c "$c" -j 2 -t 100 -p "$port" "$db" >"$OUT/warm-$target-$name.log" 2>&1 ||
    { echo "instructions.sh: pgbench $name against $target failed: $(tail -3 "$OUT/warm-$target-$name.log")" >&2; exit 1; }
  if [[ "$args" == *-C* ]]; then short=50; long=250; fi
  for n in $short $long; do
    a="$(instructions "$pid" "$@")"
    # shellcheck disable=SC2086
    pgbench -n $args -c "$c" -j 2 -t "$n" -p "$port" "$db" >"$OUT/run-$target-$name-$n.log" 2>&1 ||
      { echo "instructions.sh: pgbench $name against $target failed: $(tail -3 "$OUT/run-$target-$name-$n.log")" >&2; exit 1; }
    b="$(instructions "$pid" "$@")"
    [ -n "$a" ] && [ -n "$b" ] || { echo "instructions.sh: cannot read callgrind counters of $target" >&2; exit 1; }
    if [ "$n" = "$short" ]; then d1=$((b - a)); else d2=$((b - a)); fi
  done
  printf '%s\t%s\t%s\n' "$target" "$name" "$(((d2 - d1) / (c * (long - short))))" >>"$TSV"
}

WORKLOADS=(
  "select-simple|-S -M simple"
  "select-extended|-S -M extended"
  "select-prepared|-S -M prepared"
  "churn-select (per connection)|-C -S -M simple"
)

ready() { # port pid-or-empty
  for ((i = 0; i < 600; i++)); do
    psql -X -At -p "$1" -d "$DB" -c "SELECT 1" >/dev/null 2>&1 && return 0
    if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then return 1; fi
    sleep 0.2
  done
  return 1
}

PORT="$(free_port)"
ADMIN="$(free_port)"
RUST_LOG=warn PGSPLIT_PRIMARY="$PRIMARY_URL" PGSPLIT_REPLICAS="$REPLICA_URL" \
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$SPLIT_BIN" \
  --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" >"$OUT/pgsplit-callgrind.log" 2>&1 9>&- &
VG_PGSPLIT=$!
ready "$PORT" "$VG_PGSPLIT" ||
  { echo "instructions.sh: pgsplit under callgrind did not start: $(tail -3 "$OUT/pgsplit-callgrind.log")" >&2; exit 1; }
# Reads go to the replica once its health probes pass.
for ((i = 0; i < 300; i++)); do
  curl -sf "http://127.0.0.1:$ADMIN/metrics" 2>/dev/null | grep -q '^pgsplit_server_usable{.*} 1' && break
  sleep 0.2
done
for spec in "${WORKLOADS[@]}"; do
  IFS='|' read -r name args <<<"$spec"
  measure pgsplit "$VG_PGSPLIT" "$PORT" "$DB" "$name" "$args"
done

# With RYW_TPCB=1: TPC-B instructions per transaction with read_your_writes
# = pod and = off (issue 13's CPU target: pod within off + 5%), each on a
# pgsplit of its own under callgrind.
if [ "${RYW_TPCB:-0}" = 1 ]; then
  kill -INT "$VG_PGSPLIT" 2>/dev/null || true
  wait "$VG_PGSPLIT" 2>/dev/null || true
  for ryw in pod off; do
    PORT="$(free_port)"
    ADMIN="$(free_port)"
    RUST_LOG=warn PGSPLIT_PRIMARY="$PRIMARY_URL" PGSPLIT_REPLICAS="$REPLICA_URL" \
      PGSPLIT_ROUTING_READ_YOUR_WRITES="$ryw" \
      valgrind --tool=callgrind --callgrind-out-file=/dev/null "$SPLIT_BIN" \
      --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" >"$OUT/pgsplit-callgrind-$ryw.log" 2>&1 9>&- &
    VG_PGSPLIT=$!
    ready "$PORT" "$VG_PGSPLIT" ||
      { echo "instructions.sh: pgsplit ($ryw) under callgrind did not start" >&2; exit 1; }
    for ((i = 0; i < 300; i++)); do
      curl -sf "http://127.0.0.1:$ADMIN/metrics" 2>/dev/null | grep -q '^pgsplit_server_usable{.*} 1' && break
      sleep 0.2
    done
    # One client: with several, they queue on the same pgbench_branches row
    # and how the server's replies split into reads moves the count by up to
    # 25% between runs; alone, it repeats within about 1%.
    CLIENTS=1 measure "pgsplit-ryw-$ryw" "$VG_PGSPLIT" "$PORT" "$DB" "tpcb-extended (per transaction)" "-M extended"
    CLIENTS=1 measure "pgsplit-ryw-$ryw" "$VG_PGSPLIT" "$PORT" "$DB" "tpcb-simple (per transaction)" "-M simple"
    kill -INT "$VG_PGSPLIT" 2>/dev/null || true
    wait "$VG_PGSPLIT" 2>/dev/null || true
  done
  VG_PGSPLIT=""
fi

if [ -n "${PGBOUNCER_INI:-}" ]; then
  BIN="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
  "${RUN_AS[@]}" valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" "$PGBOUNCER_INI" \
    >"$OUT/pgbouncer-callgrind.log" 2>&1 9>&- &
  ready "$PGBOUNCER_PORT" || { echo "instructions.sh: PgBouncer under callgrind did not start" >&2; exit 1; }
  # PgBouncer's pid file names the process valgrind runs in.
  PIDFILE="$(awk -F' *= *' '$1 == "pidfile" { print $2 }' "$PGBOUNCER_INI")"
  VG_BOUNCER="$(cat "$PIDFILE")"
  for spec in "${WORKLOADS[@]}"; do
    IFS='|' read -r name args <<<"$spec"
    db="$DB"
    if [[ "$args" == *prepared* ]]; then db="${DB}_session"; fi
    measure pgbouncer "$VG_BOUNCER" "$PGBOUNCER_PORT" "$db" "$name" "$args" "${RUN_AS[@]}"
  done
fi

if [ "${RYW_TPCB:-0}" = 1 ]; then
  echo "| TPC-B workload | read_your_writes = pod | = off | pod/off |"
  echo "|---|---|---|---|"
  awk -F'\t' '
    $1 ~ /^pgsplit-ryw-/ { v[$1, $2] = $3; if (!($2 in seen)) { seen[$2] = 1; order[++n] = $2 } }
    END {
      for (i = 1; i <= n; i++) {
        w = order[i]; a = v["pgsplit-ryw-pod", w]; b = v["pgsplit-ryw-off", w]
        printf "| %s | %s | %s | %s |\n", w, a, b, (b == "" || b == 0 ? "n/a" : sprintf("%.3f", a / b))
      }
    }' "$TSV"
  echo
fi
echo "| workload | pgsplit instructions | PgBouncer instructions | pgsplit/PgBouncer |"
echo "|---|---|---|---|"
awk -F'\t' '
  $1 == "pgsplit" || $1 == "pgbouncer" { v[$1, $2] = $3; if (!($2 in seen)) { seen[$2] = 1; order[++n] = $2 } }
  END {
    for (i = 1; i <= n; i++) {
      w = order[i]; a = v["pgsplit", w]; b = v["pgbouncer", w]
      printf "| %s | %s | %s | %s |\n", w, a, (b == "" ? "n/a" : b), (b == "" || b == 0 ? "n/a" : sprintf("%.2f", a / b))
    }
  }' "$TSV"
