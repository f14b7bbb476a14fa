#!/usr/bin/env bash
# A local stand-in for the cluster, on loopback only: a throwaway PostgreSQL
# primary and streaming replica with pgsplit in front (`pgsplit demo`), and a
# real Prometheus scraping pgsplit's /metrics, as the ServiceMonitor does in
# Kubernetes.
#
#   deploy/local/run.sh          # run until Ctrl-C, then clean up everything
#   deploy/local/run.sh --check  # start, send a few queries, check that
#                                # Prometheus sees pgsplit and its routing
#                                # metrics, stop (exit status says how it went)
#
# Needs: PostgreSQL server binaries (Debian: postgresql), psql, and Prometheus
# (Debian: prometheus; installed with apt-get when missing and run as root).
# The pgsplit binary is target/release/pgsplit (built with
# `cargo build --release --locked` when missing or built without the `demo`
# feature), or $PGSPLIT_BIN.
# Ports: PGSPLIT_PORT (default 6432) for clients, PROMETHEUS_PORT (default 9090).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PGSPLIT_PORT=${PGSPLIT_PORT:-6432}
PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090}
CHECK=0
[[ "${1:-}" == "--check" ]] && CHECK=1

say() { printf 'local: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

port_free() {
    python3 -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1",int(sys.argv[1])))' "$1" 2>/dev/null
}
port_free "$PGSPLIT_PORT" || die "port $PGSPLIT_PORT is taken: set PGSPLIT_PORT"
port_free "$PROMETHEUS_PORT" || die "port $PROMETHEUS_PORT is taken: set PROMETHEUS_PORT"

BIN=${PGSPLIT_BIN:-$ROOT/target/release/pgsplit}
has_demo() { [[ -x "$BIN" ]] && "$BIN" demo --help >/dev/null 2>&1; }
# A build without the default `demo` feature (the image's, --no-default-features)
# has no `pgsplit demo`: rebuild target/release/pgsplit with it.
if [[ -z "${PGSPLIT_BIN:-}" ]] && ! has_demo; then
    say "building pgsplit (cargo build --release --locked)..."
    (cd "$ROOT" && cargo build --release --locked)
fi
has_demo || die "$BIN has no \`demo\` subcommand (built with --no-default-features?)"
if ! command -v prometheus >/dev/null; then
    [[ $(id -u) -eq 0 ]] || die "prometheus is not installed: sudo apt-get install prometheus"
    say "installing Prometheus (apt-get install prometheus)..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null; } ||
        die "cannot install prometheus"
fi
command -v psql >/dev/null || die "psql is missing (Debian: postgresql-client)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgsplit-local.XXXXXX")
DEMO_PID=
PROM_PID=
cleanup() {
    trap - EXIT INT TERM
    # Ctrl-C may have closed our output pipe (| tee): finish the cleanup anyway.
    trap '' PIPE
    set +e
    if [[ -n "$PROM_PID" ]] && kill -0 "$PROM_PID" 2>/dev/null; then
        kill -TERM "$PROM_PID" 2>/dev/null || true
        wait "$PROM_PID" 2>/dev/null || true
    fi
    # SIGINT: pgsplit demo stops the proxy, then the servers, and removes them.
    if [[ -n "$DEMO_PID" ]] && kill -0 "$DEMO_PID" 2>/dev/null; then
        say "stopping pgsplit and the PostgreSQL servers..."
        kill -INT "$DEMO_PID" 2>/dev/null || true
        for _ in $(seq 1 300); do kill -0 "$DEMO_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$DEMO_PID" 2>/dev/null || true
        wait "$DEMO_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "starting PostgreSQL primary + replica and pgsplit on 127.0.0.1:$PGSPLIT_PORT..."
"$BIN" demo --port "$PGSPLIT_PORT" >"$WORK/demo.out" 2>"$WORK/demo.log" &
DEMO_PID=$!
# The demo prints "... (admin http://127.0.0.1:PORT/metrics)" once it serves.
ADMIN=
for _ in $(seq 1 1200); do
    ADMIN=$(grep -o 'admin http://[0-9.:]*' "$WORK/demo.out" 2>/dev/null | head -1 | cut -d' ' -f2 || true)
    [[ -n "$ADMIN" ]] && break
    kill -0 "$DEMO_PID" 2>/dev/null || { tail -20 "$WORK/demo.log" >&2; die "pgsplit demo exited"; }
    sleep 0.1
done
[[ -n "$ADMIN" ]] || die "pgsplit demo did not report its admin address within 120s"
DATABASE_URL=$(sed -n 's/^DATABASE_URL=//p' "$WORK/demo.out")
ADMIN_HOSTPORT=${ADMIN#http://}

cat >"$WORK/prometheus.yml" <<EOF
# Written by deploy/local/run.sh: what the ServiceMonitor asks of Prometheus.
global:
  scrape_interval: 2s
  scrape_timeout: 1s
scrape_configs:
  - job_name: pgsplit
    metrics_path: /metrics
    static_configs:
      - targets: ["$ADMIN_HOSTPORT"]
EOF
say "starting Prometheus on 127.0.0.1:$PROMETHEUS_PORT, scraping $ADMIN/metrics..."
prometheus \
    --config.file="$WORK/prometheus.yml" \
    --storage.tsdb.path="$WORK/prometheus-data" \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" \
    >"$WORK/prometheus.log" 2>&1 &
PROM_PID=$!
PROM=http://127.0.0.1:$PROMETHEUS_PORT

# The value of a PromQL instant query, or nothing.
query() {
    python3 - "$PROM" "$1" <<'EOF'
import json, sys, urllib.parse, urllib.request
url = sys.argv[1] + "/api/v1/query?" + urllib.parse.urlencode({"query": sys.argv[2]})
try:
    with urllib.request.urlopen(url, timeout=2) as r:
        result = json.load(r)["data"]["result"]
    print(result[0]["value"][1] if result else "")
except (OSError, ValueError, KeyError, IndexError):
    print("")
EOF
}

up=
for _ in $(seq 1 60); do
    up=$(query 'up{job="pgsplit"}')
    [[ "$up" == 1 ]] && break
    kill -0 "$PROM_PID" 2>/dev/null || { tail -20 "$WORK/prometheus.log" >&2; die "prometheus exited"; }
    sleep 1
done
[[ "$up" == 1 ]] || { tail -20 "$WORK/prometheus.log" >&2; die "Prometheus does not see pgsplit up (up=${up:-none})"; }

cat <<EOF

  pgsplit        DATABASE_URL=$DATABASE_URL
  pgsplit admin  $ADMIN/healthz  $ADMIN/readyz  $ADMIN/metrics
  Prometheus     $PROM/graph   (up{job="pgsplit"} == 1)

  try:  psql "\$DATABASE_URL" -c 'select inet_server_port()'
        then in Prometheus: sum by (route) (pgsplit_units_routed_total)

EOF

if [[ $CHECK -eq 1 ]]; then
    say "check: sending queries through pgsplit..."
    for _ in 1 2 3 4 5; do
        psql "$DATABASE_URL" -qAt -c 'select inet_server_port()' >/dev/null || die "a query through pgsplit failed"
    done
    seen=
    for _ in $(seq 1 30); do
        seen=$(query 'sum(pgsplit_units_routed_total)')
        [[ -n "$seen" && "$seen" != 0 ]] && break
        sleep 1
    done
    [[ -n "$seen" && "$seen" != 0 ]] || die "Prometheus has no pgsplit_units_routed_total after 30s"
    say "check: ok (up{job=\"pgsplit\"} == 1, pgsplit_units_routed_total = $seen)"
    exit 0
fi

say "running; Ctrl-C stops pgsplit, the servers and Prometheus."
wait "$DEMO_PID" || true
DEMO_PID=
