#!/usr/bin/env bash
# Offline checks of pgsplit's deployment files (issue 6). Run from anywhere:
#
#   deploy/check/validate.sh           # all checks
#   deploy/check/validate.sh --build   # first `cargo build --release --locked`
#
# 1. tools: kubernetes-validate and yamllint in a venv under ${TMPDIR:-/tmp}
#    (installed from PyPI the first time; everything else works offline);
# 2. yamllint (deploy/kubernetes/.yamllint, strict) on every YAML file, the
#    Prometheus rules and their tests and the Grafana provisioning included;
# 3. kustomize_check.py resolves each kustomization (resources, generators,
#    patches and their targets), renders it and checks the Deployment wiring,
#    the restricted Pod Security Standard, the ServiceMonitor and its Service,
#    and the PrometheusRule's fields;
# 4. kubernetes-validate --strict against the Kubernetes 1.30 schemas, on every
#    source manifest and every rendered object of a built-in kind; and on the
#    custom resources (ServiceMonitor, PrometheusRule), which it accepts with a
#    warning that it has no schema for them (step 3 checks them instead);
# 4b. alert rules: prometheus_rules.py (the PrometheusRule has the same rules
#    as deploy/prometheus/pgsplit-rules.yml, each alert has its severity,
#    annotations, a runbook section in docs/operations.md and unit tests firing
#    and not firing), `promtool check rules` and `promtool test rules`
#    (promtool: Debian package prometheus, which .ci/run installs);
# 4c. the Grafana dashboard: grafana_dashboard.py (valid JSON, unique panel
#    ids, every panel on the ${datasource} variable with non-empty queries,
#    every metric name a family of src/metrics.rs, rates over
#    $__rate_interval, a sane grid). That every query returns data from a real
#    pgsplit is `cargo test --test it dashboard`;
# 5. dockerfile_check.py on deploy/Dockerfile and .dockerignore, and Cargo.lock
#    in sync with Cargo.toml (what `cargo build --locked` needs);
# 6. the pgsplit binary, if one is built (PGSPLIT_BIN, else target/release,
#    else target/debug): --version and --help run, and it serves /healthz,
#    /readyz and /metrics with the pod's pgsplit.toml as uid 65532 on a
#    read-only root filesystem (a private mount namespace; needs root), then
#    exits 0 on SIGTERM.
# Exits non-zero, naming the failed check, on any failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
K8S="$ROOT/deploy/kubernetes"
PROM_RULES="$ROOT/deploy/prometheus"
GRAFANA="$ROOT/deploy/grafana"
K8S_VERSION=1.30.0
VENV="${TMPDIR:-/tmp}/pgsplit-deploy-check-venv"
TOOLS=(kubernetes-validate==1.37.0 yamllint==1.38.0)
failures=()
passed=0

say() { printf '%s\n' "$*"; }
pass() { passed=$((passed + 1)); say "ok   $*"; }
failed() { failures+=("$1"); say "FAIL $1" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgsplit-deploy-check.XXXXXX")
cleanup() {
    local rc=$?
    if [[ -n "${PGSPLIT_PID:-}" ]] && kill -0 "$PGSPLIT_PID" 2>/dev/null; then
        kill -KILL "$PGSPLIT_PID" 2>/dev/null || true
    fi
    if [[ $rc -eq 0 ]]; then rm -rf "$WORK"; else say "(rendered manifests and logs kept in $WORK)" >&2; fi
}
trap cleanup EXIT

if [[ "${1:-}" == "--build" ]]; then
    say "== cargo build --release --locked"
    (cd "$ROOT" && cargo build --release --locked)
fi

# ---------------------------------------------------------------- 1. tools
say "== tools ($VENV)"
if ! "$VENV/bin/python" -c 'import kubernetes_validate, yamllint' 2>/dev/null; then
    rm -rf "$VENV"
    python3 -m venv "$VENV" || { say "FAIL cannot create a venv: install python3-venv" >&2; exit 1; }
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${TOOLS[@]}" || {
        say "FAIL cannot install ${TOOLS[*]} from PyPI" >&2
        exit 1
    }
fi
PY="$VENV/bin/python"
say "     $("$VENV/bin/kubernetes-validate" --version 2>&1 | tail -1), $("$VENV/bin/yamllint" --version)"

# ---------------------------------------------------------------- 2. yamllint
say "== yamllint"
if "$VENV/bin/yamllint" --strict -c "$K8S/.yamllint" "$K8S" "$PROM_RULES" "$GRAFANA"; then
    pass "yamllint: $(find "$K8S" "$PROM_RULES" "$GRAFANA" -name '*.yaml' -o -name '*.yml' | wc -l) files"
else
    failed "yamllint"
fi

# ---------------------------------------------------------------- 3. kustomize
say "== kustomizations"
mapfile -t KDIRS < <(find "$K8S" -name kustomization.yaml -printf '%h\n' | sort)
if [[ ${#KDIRS[@]} -eq 0 ]]; then
    failed "no kustomization.yaml under $K8S"
elif (cd "$ROOT" && "$PY" deploy/check/kustomize_check.py "$WORK/rendered" "${KDIRS[@]#"$ROOT"/}"); then
    pass "kustomize_check: ${#KDIRS[@]} kustomizations resolved and rendered"
else
    failed "kustomize_check (see ERROR lines above)"
fi

# ---------------------------------------------------------------- 4. schemas
say "== kubernetes-validate --strict -k $K8S_VERSION"
manifests=()
if [[ -f "$WORK/rendered/sources.txt" ]]; then
    while IFS= read -r f; do manifests+=("$ROOT/$f"); done <"$WORK/rendered/sources.txt"
    while IFS= read -r f; do manifests+=("$f"); done < <(find "$WORK/rendered" -mindepth 2 -maxdepth 2 -name '*.yaml' | sort)
fi
if [[ ${#manifests[@]} -eq 0 ]]; then
    failed "kubernetes-validate: nothing to validate (kustomize_check wrote no output)"
elif (cd "$ROOT" && "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${manifests[@]}"); then
    pass "kubernetes-validate: ${#manifests[@]} files (sources and rendered) valid for Kubernetes $K8S_VERSION"
else
    failed "kubernetes-validate"
fi
# Custom resources: kubernetes-validate has no schema for them, so it only
# warns (exit 0); an ERROR or a non-zero exit would still fail here.
custom=()
if [[ -d "$WORK/rendered" ]]; then
    while IFS= read -r f; do custom+=("$f"); done < <(find "$WORK/rendered" -path '*/custom/*.yaml' | sort)
fi
while IFS= read -r f; do custom+=("$f"); done < <(find "$K8S" -name '*.yaml' -exec grep -l '^apiVersion: monitoring.coreos.com/' {} + | sort)
if [[ ${#custom[@]} -eq 0 ]]; then
    failed "kubernetes-validate: no custom resources found"
elif (cd "$ROOT" && "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${custom[@]}" >"$WORK/custom-validate.log" 2>&1) &&
    ! grep -q '^ERROR' "$WORK/custom-validate.log"; then
    pass "kubernetes-validate: ${#custom[@]} custom resources accepted ($(grep -c '^WARN' "$WORK/custom-validate.log") warnings: no schema for monitoring.coreos.com kinds; kustomize_check checks them)"
else
    cat "$WORK/custom-validate.log" >&2
    failed "kubernetes-validate (custom resources)"
fi

# ---------------------------------------------------------------- 4b. alert rules
say "== alert rules (deploy/prometheus)"
if "$PY" "$ROOT/deploy/check/prometheus_rules.py" "$ROOT"; then
    pass "prometheus_rules: PrometheusRule in step with the rules file, runbooks and tests for every alert"
else
    failed "prometheus_rules (see ERROR lines above)"
fi
if ! command -v promtool >/dev/null; then
    failed "promtool not found (Debian: apt-get install prometheus)"
else
    if promtool check rules "$PROM_RULES/pgsplit-rules.yml" >"$WORK/promtool-check.log" 2>&1; then
        pass "promtool check rules: $(grep -o '[0-9]* rules found' "$WORK/promtool-check.log")"
    else
        cat "$WORK/promtool-check.log" >&2
        failed "promtool check rules deploy/prometheus/pgsplit-rules.yml"
    fi
    if promtool test rules "$PROM_RULES/pgsplit-rules.test.yml" >"$WORK/promtool-test.log" 2>&1; then
        pass "promtool test rules: $(grep -c 'alertname:' "$PROM_RULES/pgsplit-rules.test.yml") alert test cases"
    else
        cat "$WORK/promtool-test.log" >&2
        failed "promtool test rules deploy/prometheus/pgsplit-rules.test.yml"
    fi
fi

# ---------------------------------------------------------------- 4c. dashboard
say "== Grafana dashboard (deploy/grafana)"
if "$PY" "$ROOT/deploy/check/grafana_dashboard.py" "$ROOT"; then
    pass "grafana_dashboard: panels, datasource, metric names and grid of pgsplit.json"
else
    failed "grafana_dashboard (see ERROR lines above)"
fi

# ---------------------------------------------------------------- 5. image
say "== Dockerfile"
if "$PY" "$ROOT/deploy/check/dockerfile_check.py" "$ROOT"; then
    pass "Dockerfile rules"
else
    failed "Dockerfile rules"
fi
if command -v cargo >/dev/null; then
    if (cd "$ROOT" && cargo metadata --locked --offline --format-version 1 >/dev/null 2>"$WORK/cargo-metadata.err"); then
        pass "Cargo.lock matches Cargo.toml (cargo build --locked will not re-resolve)"
    elif grep -q -- "--locked" "$WORK/cargo-metadata.err"; then
        cat "$WORK/cargo-metadata.err" >&2
        failed "Cargo.lock is out of date: cargo build --release --locked in the image would fail"
    else
        say "skip Cargo.lock check: cargo metadata --offline failed for another reason:" >&2
        cat "$WORK/cargo-metadata.err" >&2
    fi
fi

# ---------------------------------------------------------------- 6. binary
say "== binary"
BIN="${PGSPLIT_BIN:-}"
if [[ -z "$BIN" ]]; then
    for cand in "$ROOT/target/release/pgsplit" "$ROOT/target/debug/pgsplit"; do
        if [[ -x "$cand" ]]; then BIN=$cand; break; fi
    done
fi
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_status() {
    "$PY" - "$1" <<'EOF'
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        body = r.read().decode(errors="replace")
        print(r.status, "pgsplit_" in body)
except urllib.error.HTTPError as e:
    print(e.code, False)
except OSError:
    print(0, False)
EOF
}

if [[ -n "$BIN" && ! -x "$BIN" ]]; then
    failed "PGSPLIT_BIN=$BIN is not an executable file"
elif [[ -z "$BIN" ]]; then
    say "skip binary checks: no pgsplit binary built (cargo build --release --locked, or --build)"
else
    say "     $BIN"
    if "$BIN" --version >/dev/null && "$BIN" --help >/dev/null; then
        pass "pgsplit --version / --help: $("$BIN" --version)"
    else
        failed "pgsplit --version / --help"
    fi

    # The container's conditions, without a container: uid/gid 65532, no
    # capabilities, no_new_privs, a read-only root filesystem and a read-only
    # /dev/shm, so any write to disk fails; the pod's own pgsplit.toml, with the
    # servers and ports overridden by the environment (as in the pod).
    if [[ $(id -u) -ne 0 ]]; then
        say "skip read-only-root run: needs root for a private mount namespace"
    elif ! unshare --mount --propagation private true 2>/dev/null; then
        say "skip read-only-root run: unshare --mount is not permitted here"
    else
        RUN="$WORK/run"
        mkdir -p "$RUN"
        cp "$BIN" "$RUN/pgsplit"
        cp "$K8S/base/pgsplit.toml" "$RUN/pgsplit.toml"
        chmod 0755 "$WORK" "$RUN" "$RUN/pgsplit"
        chmod 0644 "$RUN/pgsplit.toml"
        LISTEN_PORT=$(free_port)
        ADMIN_PORT=$(free_port)
        ADMIN="http://127.0.0.1:$ADMIN_PORT"
        # Nothing listens on port 1: no primary, so /readyz must say 503.
        env -i PATH=/usr/bin:/bin \
            PGSPLIT_LISTEN="127.0.0.1:$LISTEN_PORT" \
            PGSPLIT_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" \
            PGSPLIT_PRIMARY="postgres://portfolio:check-only@127.0.0.1:1/portfolio?sslmode=disable" \
            PGSPLIT_REPLICAS="postgres://127.0.0.1:1/portfolio?sslmode=disable" \
            unshare --mount --propagation private -- sh -c '
                mount --bind / / && mount -o remount,bind,ro / &&
                mount -t tmpfs -o ro,size=4k tmpfs /dev/shm &&
                exec setpriv --reuid 65532 --regid 65532 --clear-groups --inh-caps=-all \
                    --no-new-privs "$0" --config "$1" --log-format json' \
            "$RUN/pgsplit" "$RUN/pgsplit.toml" 2>"$RUN/stderr.log" &
        PGSPLIT_PID=$!
        health=0
        for _ in $(seq 1 100); do
            read -r health _ < <(http_status "$ADMIN/healthz")
            [[ "$health" == 200 ]] && break
            kill -0 "$PGSPLIT_PID" 2>/dev/null || break
            sleep 0.1
        done
        read -r ready _ < <(http_status "$ADMIN/readyz")
        read -r metrics has_pgsplit < <(http_status "$ADMIN/metrics")
        if [[ "$health" == 200 && "$ready" == 503 && "$metrics" == 200 && "$has_pgsplit" == True ]]; then
            pass "read-only root, uid 65532: /healthz 200, /readyz 503 without a primary, /metrics serves pgsplit_*"
        else
            failed "read-only root, uid 65532: /healthz $health, /readyz $ready, /metrics $metrics (pgsplit_* present: $has_pgsplit); stderr in $RUN/stderr.log"
            tail -5 "$RUN/stderr.log" >&2 || true
        fi
        if grep -qi 'read-only file system' "$RUN/stderr.log"; then
            failed "pgsplit tried to write to the read-only root filesystem"
        fi
        # SIGTERM: drain (no clients here) and exit 0, well within the grace.
        kill -TERM "$PGSPLIT_PID" 2>/dev/null || true
        rc=timeout
        for _ in $(seq 1 350); do
            if ! kill -0 "$PGSPLIT_PID" 2>/dev/null; then
                set +e
                wait "$PGSPLIT_PID"
                rc=$?
                set -e
                break
            fi
            sleep 0.1
        done
        PGSPLIT_PID=
        if [[ "$rc" == 0 ]]; then
            pass "SIGTERM: pgsplit exited 0"
        else
            failed "SIGTERM: pgsplit exit status $rc (expected 0 within 35s)"
        fi
    fi
fi

# ---------------------------------------------------------------- summary
say ""
if [[ ${#failures[@]} -gt 0 ]]; then
    say "failed checks:" >&2
    for f in "${failures[@]}"; do say "  - $f" >&2; done
    say "validate.sh: $passed passed, ${#failures[@]} failed"
    exit 1
fi
say "validate.sh: $passed passed, 0 failed"
