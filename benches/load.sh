#!/usr/bin/env bash
# Load benchmark for pgsplit (issue 7): pgbench against a direct primary, a direct
# replica, PgBouncer (in front of the primary) and pgsplit (release build), on
# loopback, in interleaved rounds; prints median TPS / latency, ratios, where
# pgsplit's reads went, CPU per 1,000 queries, and RSS.
#
# Usage: benches/load.sh [--quick] [--rounds N] [--duration SECONDS] [--scale N]
#                        [--out DIR] [--no-instructions]
#   --quick          smoke run: 1 round, 3 s per run (figures are not meaningful),
#                    no instruction counts
#   --rounds N       interleaved rounds (default 3; the median is over rounds)
#   --duration S     pgbench -T per run (default 10)
#   --scale N        pgbench -i -s (default 10)
#   --out DIR        where run logs, results.tsv and report.md go
#                    (default target/load-bench/<date>-<time>)
#   --report-only DIR  render report.md again from DIR/results.tsv + meta.env
#   --ryw-instructions  also count TPC-B instructions per transaction with
#                    read_your_writes = pod and = off (RYW_TPCB=1, a few minutes)
#   --pool-mode M    pgsplit's [pool] mode: transaction (default; max_size 20,
#                    PgBouncer's default_pool_size here, and also 300 clients and
#                    TPC-B in all three protocols) or session (max_size 100)
#   --no-instructions  skip benches/instructions.sh (user-space instructions per
#                    query of pgsplit and PgBouncer under callgrind, ~5 min; it
#                    needs valgrind, installed with apt-get when running as root)
#
# Needs: cargo, PostgreSQL server binaries + psql + pgbench (Debian `postgresql`,
# `postgresql-client`, `postgresql-contrib`), pgbouncer (installed with apt-get
# when missing and running as root), curl. Run as root (servers and PgBouncer then
# run as the OS user `postgres`) or as an unprivileged user.
#
# Exit status: 0 when every run completed without errors (targets are reported,
# not asserted); non-zero, with a message naming the run and its log, when any
# pgbench run exits non-zero or reports failed/aborted transactions, or when
# anything cannot be started. Every process the script starts is stopped on exit.

set -euo pipefail

ROUNDS=3
DURATION=10
SCALE=10
OUT=""
QUICK=0
REPORT_ONLY=""
INSTRUCTIONS=1
RYW_TPCB=0
POOL_MODE=transaction

usage() { sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; ROUNDS=1; DURATION=3; INSTRUCTIONS=0 ;;
    --no-instructions) INSTRUCTIONS=0 ;;
    --ryw-instructions) RYW_TPCB=1 ;;
    --pool-mode) POOL_MODE="${2:?--pool-mode needs a value}"; shift ;;
    --rounds) ROUNDS="${2:?--rounds needs a value}"; shift ;;
    --duration) DURATION="${2:?--duration needs a value}"; shift ;;
    --scale) SCALE="${2:?--scale needs a value}"; shift ;;
    --out) OUT="${2:?--out needs a value}"; shift ;;
    --report-only) REPORT_ONLY="${2:?--report-only needs a directory}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "load.sh: unknown argument: $1" >&2; usage >&2; exit 64 ;;
  esac
  shift
done
case "$POOL_MODE" in session|transaction) ;; *) echo "load.sh: --pool-mode is session or transaction" >&2; exit 64 ;; esac
for v in "$ROUNDS" "$DURATION" "$SCALE"; do
  case "$v" in ''|*[!0-9]*|0) echo "load.sh: --rounds/--duration/--scale take positive integers" >&2; exit 64 ;; esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
if [ -z "$REPORT_ONLY" ]; then
  OUT="${OUT:-$ROOT/target/load-bench/$(date -u +%Y%m%d-%H%M%S)}"
  mkdir -p "$OUT/runs"
  RESULTS="$OUT/results.tsv"
  : >"$RESULTS"
fi

log() { printf '[load %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf '\nload.sh: FAILED: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------- report

# Everything the report needs besides results.tsv, so that `--report-only DIR`
# can render it again.
render_report() {

  {
    echo "# pgsplit load benchmark, $RUN_DATE"
    echo "# $MACHINE; load average at the end of the runs: $LOADAVG"
    echo "# rounds $ROUNDS, pgbench -T $DURATION -j 2, scale $SCALE; $ELAPSED s of runs; $VERSIONS"
    if [ "$QUICK" -eq 1 ]; then echo "# QUICK MODE: 1 round of 3 s, figures are a smoke test only"; fi
    echo
  } >"$OUT/report.md"

  awk -F'\t' -v rounds="$ROUNDS" \
    -v rss_idle="$PGSPLIT_RSS_IDLE" -v b_rss_idle="$BOUNCER_RSS_IDLE" \
    -v rss_idlec="$PGSPLIT_RSS_IDLE_CLIENTS" -v b_rss_idlec="$BOUNCER_RSS_IDLE_CLIENTS" \
    -v idle_clients="$IDLE_CLIENTS" -v idle_gauge="$IDLE_GAUGE" \
    -v rss_end="$PGSPLIT_RSS_END" -v b_rss_end="$BOUNCER_RSS_END" \
    -v xcp="$((XC_PRIMARY1 - XC_PRIMARY0))" -v xcr="$((XC_REPLICA1 - XC_REPLICA0))" '
  function median(list,    n, a, i, j, t) {
    n = split(list, a, " ")
    if (n == 0) return ""
    for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  function add(k, v) { if (k in vals) vals[k] = vals[k] " " v; else vals[k] = v }
  function rounded(list,    n, a, i, out) {
    n = split(list, a, " ")
    out = ""
    for (i = 1; i <= n; i++) out = out (i > 1 ? ", " : "") sprintf("%.0f", a[i])
    return out
  }
  function ratio(a, b) { return (a == "" || b == "" || b + 0 == 0) ? "n/a" : sprintf("%.2f", a / b) }
  function fmt(x, p) { return x == "" ? "n/a" : sprintf(p, x) }
  function atleast(r, min) { return (r != "n/a" && r + 0 >= min) ? "MET" : "MISSED" }
  function atmost(r, max) { return (r != "n/a" && r + 0 <= max) ? "MET" : "MISSED" }
  {
    w = $2; t = $3
    if (!(w in seen)) { seen[w] = 1; order[++nw] = w }
    add(w SUBSEP t SUBSEP "tps", $4)
    add(w SUBSEP t SUBSEP "lat", $5)
    if (t == "pgsplit" || t == "pgbouncer") {
      cpu[w, t] += $8; q[w, t] += $7
      if ($9 + 0 > rss64[w, t]) rss64[w, t] = $9 + 0
      if ($9 + 0 > maxrss[t]) maxrss[t] = $9 + 0
    }
    if (t == "pgsplit") { rp[w] += $10; rr[w] += $11 }
  }
  END {
    print "## Throughput (median of " rounds " rounds; TPS, latency average in ms)"
    print ""
    print "| workload | primary | replica | PgBouncer | pgsplit | pgsplit/primary | pgsplit/replica | pgsplit/PgBouncer |"
    print "|---|---|---|---|---|---|---|---|"
    for (i = 1; i <= nw; i++) {
      w = order[i]
      for (k = 1; k <= 4; k++) {
        t = (k == 1) ? "primary" : (k == 2) ? "replica" : (k == 3) ? "pgbouncer" : "pgsplit"
        key = w SUBSEP t SUBSEP "tps"
        m[t] = (key in vals) ? median(vals[key]) : ""
        l[t] = (w SUBSEP t SUBSEP "lat" in vals) ? median(vals[w SUBSEP t SUBSEP "lat"]) : ""
        cell[t] = (m[t] == "") ? "n/a" : sprintf("%.0f (%.2f)", m[t], l[t])
      }
      printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", w, cell["primary"], cell["replica"], cell["pgbouncer"], cell["pgsplit"], ratio(m["pgsplit"], m["primary"]), ratio(m["pgsplit"], m["replica"]), ratio(m["pgsplit"], m["pgbouncer"])
      med[w, "pgsplit"] = m["pgsplit"]; med[w, "pgbouncer"] = m["pgbouncer"]; med[w, "primary"] = m["primary"]
    }
    print ""
    print "Per-round TPS (pgsplit / PgBouncer / primary):"
    print ""
    for (i = 1; i <= nw; i++) {
      w = order[i]
      printf "- %s: pgsplit [%s], PgBouncer [%s], primary [%s]\n", w, rounded(vals[w SUBSEP "pgsplit" SUBSEP "tps"]), rounded(vals[w SUBSEP "pgbouncer" SUBSEP "tps"]), rounded(vals[w SUBSEP "primary" SUBSEP "tps"])
    }
    print ""
    print "## Proxy CPU (user+system seconds of the proxy process per 1,000 queries, all rounds)"
    print ""
    print "| workload | pgsplit ms/1k queries | PgBouncer ms/1k queries | pgsplit/PgBouncer |"
    print "|---|---|---|---|"
    for (i = 1; i <= nw; i++) {
      w = order[i]
      a = (q[w, "pgsplit"] > 0) ? 1e6 * cpu[w, "pgsplit"] / q[w, "pgsplit"] : ""
      b = (q[w, "pgbouncer"] > 0) ? 1e6 * cpu[w, "pgbouncer"] / q[w, "pgbouncer"] : ""
      printf "| %s | %s | %s | %s |\n", w, fmt(a, "%.1f"), fmt(b, "%.1f"), ratio(a, b)
      cpuq[w] = ratio(a, b)
    }
    print ""
    print "(ms of CPU per 1,000 queries = us per query; TPC-B-like counts 7 statements per transaction.)"
    print ""
    print "## Where pgsplit sent its units (pgsplit_units_routed_total deltas during pgsplit runs)"
    print ""
    print "| workload | to primary | to replica | replica share |"
    print "|---|---|---|---|"
    for (i = 1; i <= nw; i++) {
      w = order[i]
      if (!(w SUBSEP "pgsplit" SUBSEP "tps" in vals)) continue
      tot = rp[w] + rr[w]
      share = (tot > 0) ? sprintf("%.1f%%", 100 * rr[w] / tot) : "n/a"
      printf "| %s | %d | %d | %s |\n", w, rp[w], rr[w], share
    }
    print ""
    printf "pg_stat_database xact_commit over all rounds (every target): primary +%d, replica +%d.\n", xcp, xcr
    print ""
    print "## Memory (VmRSS)"
    print ""
    print "| | pgsplit | PgBouncer |"
    print "|---|---|---|"
    printf "| idle, before any client | %.1f MB | %.1f MB |\n", rss_idle / 1024, b_rss_idle / 1024
    printf "| with %d idle clients | %.1f MB (%.1f KB per client) | %.1f MB (%.1f KB per client) |\n", idle_clients, rss_idlec / 1024, (rss_idlec - rss_idle) / idle_clients, b_rss_idlec / 1024, (b_rss_idlec - b_rss_idle) / idle_clients
    printf "| under 64 clients (max mid-run sample) | %.1f MB | %.1f MB |\n", maxrss["pgsplit"] / 1024, maxrss["pgbouncer"] / 1024
    printf "| idle, after all runs | %.1f MB | %.1f MB |\n", rss_end / 1024, b_rss_end / 1024
    print ""
    if (idle_gauge != "") printf "(pgsplit_client_connections during the idle-client sample: %s; each pgsplit client also holds a pooled server connection.)\n\n", idle_gauge
    print "## Targets (issue 7)"
    print ""
    split("select-simple-c8 select-extended-c8 select-prepared-c8", sel, " ")
    for (i = 1; i <= 3; i++) {
      w = sel[i]
      rb = ratio(med[w, "pgsplit"], med[w, "pgbouncer"]); rd = ratio(med[w, "pgsplit"], med[w, "primary"])
      printf "- %s: pgsplit/PgBouncer %s (>= 1.00: %s), pgsplit/direct primary %s (>= 0.75: %s)\n", w, rb, atleast(rb, 1.0), rd, atleast(rd, 0.75)
    }
    w = "churn-select-c8"; rb = ratio(med[w, "pgsplit"], med[w, "pgbouncer"])
    printf "- %s: pgsplit/PgBouncer %s (>= 1.00: %s)\n", w, rb, atleast(rb, 1.0)
    for (i = 1; i <= nw; i++) {
      w = order[i]; r = cpuq[w]
      printf "- CPU per query %s: pgsplit/PgBouncer %s (<= 1.20: %s)\n", w, r, atmost(r, 1.2)
    }
    printf "- idle RSS %.1f MB (< 20 MB: %s)\n", rss_idle / 1024, atmost(rss_idle, 20 * 1024 - 1)
    pc = (rss_idlec - rss_idle) / idle_clients
    printf "- per idle client %.1f KB (< 100 KB: %s)\n", pc, atmost(pc, 99.99)
  }' "$RESULTS" >>"$OUT/report.md"
  if [ -s "$OUT/instructions.md" ]; then
    {
      echo
      echo "## User-space instructions per query (callgrind, benches/instructions.sh)"
      echo
      echo "Repeatable on a shared machine; kernel work (about the same for both proxies) not included."
      echo
      cat "$OUT/instructions.md"
    } >>"$OUT/report.md"
  fi
  echo
  cat "$OUT/report.md"
  echo
}

if [ -n "$REPORT_ONLY" ]; then
  OUT="$REPORT_ONLY"
  RESULTS="$OUT/results.tsv"
  if [ ! -f "$OUT/meta.env" ] || [ ! -f "$RESULTS" ]; then
    echo "load.sh: no results.tsv/meta.env in $OUT" >&2
    exit 64
  fi
  # shellcheck disable=SC1091
  . "$OUT/meta.env"
  render_report
  exit 0
fi

# ---------------------------------------------------------------- processes

WORK=""
CLUSTER_PID=""
PGSPLIT_PID=""
BOUNCER_RUNNER_PID=""
BOUNCER_PID=""
PGBENCH_PID=""
SAMPLER_PID=""

stop_pid() { # pid signal seconds
  local pid="$1" sig="$2" secs="$3" i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill "-$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  stop_pid "$SAMPLER_PID" TERM 1
  stop_pid "$PGBENCH_PID" TERM 5
  stop_pid "$PGSPLIT_PID" TERM 10
  stop_pid "$BOUNCER_PID" TERM 10
  stop_pid "$BOUNCER_RUNNER_PID" TERM 5
  if [ -n "$CLUSTER_PID" ]; then
    # Closing the helper's stdin makes it stop both servers and remove their
    # directory; wait for that to finish.
    exec 9>&-
    for ((i = 0; i < 600; i++)); do
      kill -0 "$CLUSTER_PID" 2>/dev/null || break
      sleep 0.1
    done
    stop_pid "$CLUSTER_PID" TERM 5
  fi
  [ -n "$WORK" ] && rm -rf "$WORK"
  if [ "$rc" -ne 0 ]; then
    echo "load.sh: exit $rc; logs in $OUT" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- prerequisites

for cmd in cargo psql pgbench curl awk; do
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd not found (pgbench/psql: Debian packages postgresql-contrib, postgresql-client)"
done
if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing pgbouncer (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; } ||
      die "cannot install pgbouncer"
  else
    die "pgbouncer not found (Debian package pgbouncer)"
  fi
fi
PGBOUNCER_BIN="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
RUN_AS=()
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || die "running as root needs the OS user postgres (Debian package postgresql)"
  RUN_AS=(runuser -u postgres --)
fi
CLK_TCK="$(getconf CLK_TCK)"

log "building pgsplit (release) and the cluster helper"
cargo build --release --locked --bin pgsplit >&2 || die "cargo build --release failed"
PGSPLIT_BIN="$ROOT/target/release/pgsplit"
HELPER="$(cargo bench --locked --no-run --bench load_cluster 2>&1 |
  sed -n 's/.*Executable .*(\(.*load_cluster-[^)]*\)).*/\1/p' | tail -1)"
[ -n "$HELPER" ] || die "cannot build benches/load_cluster.rs (cargo bench --no-run --bench load_cluster)"
case "$HELPER" in /*) ;; *) HELPER="$ROOT/$HELPER" ;; esac
[ -x "$HELPER" ] || die "cluster helper not found at $HELPER"

WORK="$(mktemp -d /tmp/pgsplit-load.XXXXXX)"
chmod 755 "$WORK"

free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 30000))
    if ! ss -Htln "sport = :$p" 2>/dev/null | grep -q .; then
      echo "$p"
      return
    fi
  done
}

# ---------------------------------------------------------------- cluster

log "starting primary + streaming replica"
mkfifo "$WORK/cluster.in"
PGSPLIT_LOAD_CLUSTER=serve "$HELPER" <"$WORK/cluster.in" >"$WORK/cluster.out" 2>"$OUT/cluster.log" &
CLUSTER_PID=$!
exec 9>"$WORK/cluster.in"
for ((i = 0; i < 1200; i++)); do
  grep -qx READY "$WORK/cluster.out" 2>/dev/null && break
  kill -0 "$CLUSTER_PID" 2>/dev/null || die "cluster helper exited: $(tail -5 "$OUT/cluster.log")"
  sleep 0.1
done
grep -qx READY "$WORK/cluster.out" || die "cluster did not start in 120 s: $(tail -5 "$OUT/cluster.log")"
while IFS='=' read -r key value; do
  case "$key" in
    PRIMARY_URL) PRIMARY_URL="$value" ;;
    REPLICA_URL) REPLICA_URL="$value" ;;
    PRIMARY_PORT) PRIMARY_PORT="$value" ;;
    REPLICA_PORT) REPLICA_PORT="$value" ;;
    DB_USER) DB_USER="$value" ;;
    DB_PASSWORD) DB_PASSWORD="$value" ;;
    DB_NAME) DB_NAME="$value" ;;
  esac
done <"$WORK/cluster.out"

# libpq environment for psql and pgbench; nothing inherited.
unset PGSERVICE PGSSLMODE PGOPTIONS PGPASSFILE PGCONNECT_TIMEOUT PGAPPNAME
export PGHOST=127.0.0.1 PGUSER="$DB_USER" PGPASSWORD="$DB_PASSWORD" PGDATABASE="$DB_NAME"

sql() { # port sql
  psql -X -At -v ON_ERROR_STOP=1 -p "$1" -d "$DB_NAME" -c "$2"
}

# ---------------------------------------------------------------- data

log "pgbench -i -s $SCALE on the primary"
pgbench -i -s "$SCALE" -q -p "$PRIMARY_PORT" "$DB_NAME" >"$OUT/pgbench-init.log" 2>&1 9>&- ||
  die "pgbench -i failed: $(tail -5 "$OUT/pgbench-init.log")"

wait_replica() {
  local lsn i
  lsn="$(sql "$PRIMARY_PORT" "SELECT pg_current_wal_lsn()")"
  for ((i = 0; i < 600; i++)); do
    [ "$(sql "$REPLICA_PORT" "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn")" = t ] && return 0
    sleep 0.1
  done
  die "replica did not replay up to $lsn in 60 s"
}
wait_replica

# ---------------------------------------------------------------- PgBouncer

BOUNCER_PORT="$(free_port)"
BDIR="$WORK/pgbouncer"
mkdir -p "$BDIR"
# The role's SCRAM secret from pg_authid (PgBouncer's recommended setup: it then
# verifies clients without deriving keys from a plain password, and passes the
# client's proof on to the server).
SCRAM_SECRET="$(printf "SELECT rolpassword FROM pg_authid WHERE rolname = :'u'\n" |
  PGUSER=postgres psql -X -At -v ON_ERROR_STOP=1 -v u="$DB_USER" -p "$PRIMARY_PORT" -d "$DB_NAME")"
case "$SCRAM_SECRET" in SCRAM-SHA-256\$*) ;; *) die "cannot read the SCRAM secret of $DB_USER" ;; esac
printf '"%s" "%s"\n' "$DB_USER" "$SCRAM_SECRET" >"$BDIR/userlist.txt"
cat >"$BDIR/pgbouncer.ini" <<EOF
[databases]
; transaction pooling for simple/extended; prepared statements need session
; pooling in PgBouncer 1.18 (pgbench -M prepared connects to app_session)
$DB_NAME = host=127.0.0.1 port=$PRIMARY_PORT dbname=$DB_NAME
${DB_NAME}_session = host=127.0.0.1 port=$PRIMARY_PORT dbname=$DB_NAME pool_mode=session pool_size=80

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $BDIR/userlist.txt
pool_mode = transaction
max_client_conn = 400
default_pool_size = 20
logfile = $BDIR/pgbouncer.log
pidfile = $BDIR/pgbouncer.pid
log_connections = 0
log_disconnections = 0
ignore_startup_parameters = extra_float_digits
EOF
chmod 600 "$BDIR/userlist.txt"
if [ ${#RUN_AS[@]} -gt 0 ]; then chown -R postgres: "$BDIR"; fi
log "starting PgBouncer on 127.0.0.1:$BOUNCER_PORT"
"${RUN_AS[@]}" "$PGBOUNCER_BIN" "$BDIR/pgbouncer.ini" >"$OUT/pgbouncer.stderr" 2>&1 9>&- &
BOUNCER_RUNNER_PID=$!
for ((i = 0; i < 100; i++)); do
  [ -s "$BDIR/pgbouncer.pid" ] && BOUNCER_PID="$(cat "$BDIR/pgbouncer.pid")" && break
  kill -0 "$BOUNCER_RUNNER_PID" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$BOUNCER_PID" ] || ! kill -0 "$BOUNCER_PID" 2>/dev/null; then
  die "PgBouncer did not start: $(cat "$OUT/pgbouncer.stderr" "$BDIR/pgbouncer.log" 2>/dev/null | tail -5)"
fi
for ((i = 0; i < 50; i++)); do
  sql "$BOUNCER_PORT" "SELECT 1" >/dev/null 2>&1 && break
  sleep 0.1
done
sql "$BOUNCER_PORT" "SELECT 1" >/dev/null || die "cannot query through PgBouncer"

# ---------------------------------------------------------------- pgsplit

PGSPLIT_PORT="$(free_port)"
ADMIN_PORT="$(free_port)"
log "starting pgsplit on 127.0.0.1:$PGSPLIT_PORT (admin $ADMIN_PORT), $POOL_MODE pooling"
POOL_ENV=(PGSPLIT_POOL_MODE="$POOL_MODE")
if [ "$POOL_MODE" = transaction ]; then POOL_ENV+=(PGSPLIT_POOL_MAX_SIZE=20); else POOL_ENV+=(PGSPLIT_POOL_MAX_SIZE=100); fi
env "${POOL_ENV[@]}" RUST_LOG=warn PGSPLIT_PRIMARY="$PRIMARY_URL" PGSPLIT_REPLICAS="$REPLICA_URL" \
  "$PGSPLIT_BIN" --listen "127.0.0.1:$PGSPLIT_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  >"$OUT/pgsplit.stdout" 2>"$OUT/pgsplit.log" 9>&- &
PGSPLIT_PID=$!
METRICS_URL="http://127.0.0.1:$ADMIN_PORT/metrics"
replica_usable() {
  curl -sf "$METRICS_URL" 2>/dev/null |
    awk -v p=":$REPLICA_PORT" '/^pgsplit_server_usable/ && index($0, p) && $NF == 1 { ok = 1 } END { exit !ok }'
}
for ((i = 0; i < 300; i++)); do
  kill -0 "$PGSPLIT_PID" 2>/dev/null || die "pgsplit exited: $(tail -5 "$OUT/pgsplit.log")"
  curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && replica_usable && break
  sleep 0.1
done
replica_usable || die "pgsplit not ready with a usable replica in 30 s: $(tail -5 "$OUT/pgsplit.log")"
sql "$PGSPLIT_PORT" "SELECT 1" >/dev/null || die "cannot query through pgsplit"

# ---------------------------------------------------------------- measuring

cpu_ticks() { # pid -> utime + stime, in clock ticks
  local s
  s="$(cat "/proc/$1/stat" 2>/dev/null)" || { echo 0; return; }
  s="${s##*) }"
  # shellcheck disable=SC2086
  set -- $s
  echo $((${12} + ${13}))
}
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
routed() { # -> "primary replica" unit counts from pgsplit's metrics
  curl -sf "$METRICS_URL" | awk '
    /^pgsplit_units_routed_total/ { if ($0 ~ /route="replica"/) r += $NF; else p += $NF }
    END { printf "%d %d\n", p, r }'
}
client_gauge() {
  curl -sf "$METRICS_URL" | awk '/^pgsplit_client_connections[ {]/ { print $NF }' | head -1
}
xact_commit() { # port -> xact_commit of the app database
  sql "$1" "SELECT pg_stat_clear_snapshot(); SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()" | tail -1
}

# Idle footprint before any load.
sleep 1
PGSPLIT_RSS_IDLE="$(rss_kb "$PGSPLIT_PID")"
BOUNCER_RSS_IDLE="$(rss_kb "$BOUNCER_PID")"
log "idle RSS: pgsplit ${PGSPLIT_RSS_IDLE} kB, PgBouncer ${BOUNCER_RSS_IDLE} kB"

# Idle client connections: pgbench clients whose script only sleeps, so each
# holds an authenticated connection that sends nothing.
IDLE_CLIENTS=50
printf '\\sleep 5 s\n' >"$WORK/idle.sql"
IDLE_RSS=0
IDLE_GAUGE=""
idle_clients_rss() { # port pid -> sets IDLE_RSS (and IDLE_GAUGE for pgsplit)
  local port="$1" pid="$2"
  pgbench -n -c "$IDLE_CLIENTS" -j 2 -T 7 -f "$WORK/idle.sql" -p "$port" "$DB_NAME" >"$WORK/idle.log" 2>&1 9>&- &
  PGBENCH_PID=$!
  sleep 4
  IDLE_RSS="$(rss_kb "$pid")"
  if [ "$port" = "$PGSPLIT_PORT" ]; then
    IDLE_GAUGE="$(client_gauge)"
  fi
  wait "$PGBENCH_PID" || die "idle-client pgbench against port $port failed: $(tail -5 "$WORK/idle.log")"
  PGBENCH_PID=""
}
idle_clients_rss "$PGSPLIT_PORT" "$PGSPLIT_PID"
PGSPLIT_RSS_IDLE_CLIENTS="$IDLE_RSS"
idle_clients_rss "$BOUNCER_PORT" "$BOUNCER_PID"
BOUNCER_RSS_IDLE_CLIENTS="$IDLE_RSS"
log "with $IDLE_CLIENTS idle clients: pgsplit ${PGSPLIT_RSS_IDLE_CLIENTS} kB (client gauge ${IDLE_GAUGE:-?}), PgBouncer ${BOUNCER_RSS_IDLE_CLIENTS} kB"

# ---------------------------------------------------------------- workloads

# name | pgbench arguments | statements per transaction | targets
WORKLOADS=(
  "select-simple-c8|-S -M simple -c 8|1|primary replica pgbouncer pgsplit"
  "select-extended-c8|-S -M extended -c 8|1|primary replica pgbouncer pgsplit"
  "select-prepared-c8|-S -M prepared -c 8|1|primary replica pgbouncer pgsplit"
  "select-simple-c64|-S -M simple -c 64|1|primary replica pgbouncer pgsplit"
  "select-extended-c64|-S -M extended -c 64|1|primary replica pgbouncer pgsplit"
  "select-prepared-c64|-S -M prepared -c 64|1|primary replica pgbouncer pgsplit"
  "tpcb-simple-c8|-M simple -c 8|7|primary pgbouncer pgsplit"
  "churn-select-c8|-C -S -M simple -c 8|1|primary replica pgbouncer pgsplit"
)
# Transaction pooling: many clients on 20 server connections, as an
# application's pools are. PgBouncer 1.18 cannot run -M prepared in
# transaction mode (pgbench fails at once: prepared statement "P_0" already
# exists / does not exist), so those rows are pgsplit's alone; the c8/c64
# prepared rows above use PgBouncer in session mode. Direct servers are left
# out at 300 clients. TPC-B -M prepared only at 8 clients: pgbench 15 prepares
# each statement with a blocking PQprepare on first use, which stalls every
# client of its thread; with more clients than server connections, the
# clients holding them (mid-transaction, on that thread) cannot go on, and the
# blocked Parse waits out checkout_timeout. A pgbench artifact that any
# transaction pooler meets; applications prepare asynchronously or per
# connection.
if [ "$POOL_MODE" = transaction ]; then
  WORKLOADS+=(
    "tpcb-extended-c8|-M extended -c 8|7|primary pgbouncer pgsplit"
    "tpcb-prepared-c8|-M prepared -c 8|7|primary pgbouncer pgsplit"
    "tpcb-simple-c64|-M simple -c 64|7|primary pgbouncer pgsplit"
    "tpcb-extended-c64|-M extended -c 64|7|primary pgbouncer pgsplit"
    "select-simple-c300|-S -M simple -c 300|1|pgbouncer pgsplit"
    "select-extended-c300|-S -M extended -c 300|1|pgbouncer pgsplit"
    "select-prepared-c300|-S -M prepared -c 300|1|pgsplit"
    "tpcb-simple-c300|-M simple -c 300|7|pgbouncer pgsplit"
    "tpcb-extended-c300|-M extended -c 300|7|pgbouncer pgsplit"
  )
fi

target_port() {
  case "$1" in
    primary) echo "$PRIMARY_PORT" ;;
    replica) echo "$REPLICA_PORT" ;;
    pgbouncer) echo "$BOUNCER_PORT" ;;
    pgsplit) echo "$PGSPLIT_PORT" ;;
  esac
}
target_pid() {
  case "$1" in
    pgbouncer) echo "$BOUNCER_PID" ;;
    pgsplit) echo "$PGSPLIT_PID" ;;
    *) echo "" ;;
  esac
}

# Runs one pgbench; appends a line to results.tsv:
# round workload target tps latency_ms transactions queries cpu_s rss_kb routed_primary routed_replica
run_one() { # round workload args stmts target seconds
  local round="$1" name="$2" args="$3" stmts="$4" target="$5" secs="$6"
  local port pid db logf rc=0 c0=0 c1=0 r0="0 0" r1="0 0" rss=0
  port="$(target_port "$target")"
  pid="$(target_pid "$target")"
  db="$DB_NAME"
  if [ "$target" = pgbouncer ] && [[ "$args" == *"-M prepared"* ]]; then
    db="${DB_NAME}_session"
  fi
  logf="$OUT/runs/r${round}-${name}-${target}.log"
  if [ -n "$pid" ]; then c0="$(cpu_ticks "$pid")"; fi
  if [ "$target" = pgsplit ]; then r0="$(routed)"; fi
  if [ -n "$pid" ] && [[ "$args" == *"-c 64"* ]]; then
    (sleep $((secs / 2 + 1)); rss_kb "$pid" >"$WORK/rss.sample") 9>&- &
    SAMPLER_PID=$!
  fi
  # shellcheck disable=SC2086
  pgbench -n $args -j 2 -T "$secs" -p "$port" "$db" >"$logf" 2>&1 9>&- &
  PGBENCH_PID=$!
  wait "$PGBENCH_PID" || rc=$?
  PGBENCH_PID=""
  if [ -n "$pid" ]; then c1="$(cpu_ticks "$pid")"; fi
  if [ "$target" = pgsplit ]; then r1="$(routed)"; fi
  if [ -n "$SAMPLER_PID" ]; then
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
    rss="$(cat "$WORK/rss.sample" 2>/dev/null || echo 0)"
  fi
  local tps lat txns failed
  tps="$(awk '/^tps = / { print $3; exit }' "$logf")"
  lat="$(awk '/^latency average = / { print $4; exit }' "$logf")"
  txns="$(awk -F': ' '/^number of transactions actually processed/ { split($2, a, "/"); print a[1]; exit }' "$logf")"
  failed="$(awk -F': ' '/^number of failed transactions/ { split($2, a, " "); print a[1]; exit }' "$logf")"
  if [ "$rc" -ne 0 ] || [ -z "$tps" ] || [ -z "$txns" ] || [ "${txns:-0}" -eq 0 ] ||
    [ "${failed:-0}" != 0 ] || grep -qiE 'error|abort' "$logf"; then
    {
      echo "--- $logf"
      tail -15 "$logf"
      echo "--- pgsplit log tail"
      tail -5 "$OUT/pgsplit.log"
    } >&2
    die "pgbench $name against $target (round $round): exit $rc, transactions ${txns:-?}, failed ${failed:-?}; see $logf"
  fi
  local cpu
  cpu="$(awk -v a="$c0" -v b="$c1" -v t="$CLK_TCK" 'BEGIN { printf "%.3f", (b - a) / t }')"
  read -r rp0 rr0 <<<"$r0"
  read -r rp1 rr1 <<<"$r1"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$target" "$tps" "$lat" \
    "$txns" "$((txns * stmts))" "$cpu" "$rss" "$((rp1 - rp0))" "$((rr1 - rr0))" >>"$RESULTS"
  log "r$round $name $target: tps $tps, latency $lat ms${pid:+, cpu ${cpu}s}"
}

# Warm-up: caches, pools, prepared plans; not recorded.
log "warm-up"
for target in primary replica pgbouncer pgsplit; do
  pgbench -n -S -c 8 -j 2 -T 2 -p "$(target_port "$target")" "$DB_NAME" >"$OUT/runs/warmup-$target.log" 2>&1 9>&- ||
    die "warm-up against $target failed: $(tail -5 "$OUT/runs/warmup-$target.log")"
done

XC_PRIMARY0="$(xact_commit "$PRIMARY_PORT")"
XC_REPLICA0="$(xact_commit "$REPLICA_PORT")"
STARTED=$SECONDS
for ((round = 1; round <= ROUNDS; round++)); do
  log "round $round of $ROUNDS"
  for spec in "${WORKLOADS[@]}"; do
    IFS='|' read -r name args stmts targets <<<"$spec"
    read -r -a tl <<<"$targets"
    # Rotate the order of targets each round so that drift on the shared
    # machine does not always favour the same one.
    n=${#tl[@]}
    for ((k = 0; k < n; k++)); do
      target="${tl[$(((k + round - 1) % n))]}"
      run_one "$round" "$name" "$args" "$stmts" "$target" "$DURATION"
      # TPC-B writes: let the replica catch up before the next run.
      if [[ "$name" == tpcb* ]]; then wait_replica; fi
    done
  done
done
ELAPSED=$((SECONDS - STARTED))
sleep 2
if [ "$INSTRUCTIONS" -eq 1 ]; then
  if ! command -v valgrind >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing valgrind (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null 2>&1 || true
  fi
  if command -v valgrind >/dev/null 2>&1; then
    log "instructions per query under callgrind (benches/instructions.sh)"
    IR_PORT="$(free_port)"
    sed -e "s/^listen_port = .*/listen_port = $IR_PORT/" \
      -e "s#^pidfile = .*#pidfile = $BDIR/pgbouncer-ir.pid#" \
      -e "s#^logfile = .*#logfile = $BDIR/pgbouncer-ir.log#" \
      "$BDIR/pgbouncer.ini" >"$BDIR/pgbouncer-ir.ini"
    if [ ${#RUN_AS[@]} -gt 0 ]; then chown postgres: "$BDIR/pgbouncer-ir.ini"; fi
    PRIMARY_URL="$PRIMARY_URL" REPLICA_URL="$REPLICA_URL" SPLIT_BIN="$PGSPLIT_BIN" RYW_TPCB="$RYW_TPCB" \
      PGBOUNCER_INI="$BDIR/pgbouncer-ir.ini" PGBOUNCER_PORT="$IR_PORT" OUT="$OUT/instructions" \
      "$ROOT/benches/instructions.sh" >"$OUT/instructions.md" 9>&- ||
      die "benches/instructions.sh failed; see $OUT/instructions"
  else
    log "valgrind not found: no instruction counts (Debian package valgrind)"
  fi
fi
XC_PRIMARY1="$(xact_commit "$PRIMARY_PORT")"
XC_REPLICA1="$(xact_commit "$REPLICA_PORT")"
PGSPLIT_RSS_END="$(rss_kb "$PGSPLIT_PID")"
BOUNCER_RSS_END="$(rss_kb "$BOUNCER_PID")"

RUN_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
MACHINE="$(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM"
LOADAVG="$(cut -d' ' -f1-3 /proc/loadavg)"
VERSIONS="$(pgbench --version); $("$PGBOUNCER_BIN" --version | head -1); pgsplit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted src changes'), $POOL_MODE pooling"
declare -p ROUNDS DURATION SCALE QUICK RUN_DATE MACHINE LOADAVG ELAPSED VERSIONS \
  PGSPLIT_RSS_IDLE BOUNCER_RSS_IDLE PGSPLIT_RSS_IDLE_CLIENTS BOUNCER_RSS_IDLE_CLIENTS \
  IDLE_CLIENTS IDLE_GAUGE PGSPLIT_RSS_END BOUNCER_RSS_END \
  XC_PRIMARY0 XC_PRIMARY1 XC_REPLICA0 XC_REPLICA1 >"$OUT/meta.env"
render_report
log "raw results: $RESULTS; logs: $OUT/runs; report: $OUT/report.md"
