#!/usr/bin/env python3
"""Keep pgsplit's two copies of its alerting rules in step, and check them.

    prometheus_rules.py [--write] [ROOT]

deploy/prometheus/pgsplit-rules.yml (a plain Prometheus rules file) is the
source. deploy/kubernetes/base/prometheusrule.yaml carries the same groups as
the `spec` of a PrometheusRule (Prometheus Operator).

--write  rewrites the PrometheusRule's `spec:` from the rules file (the header
         comments and metadata above `spec:` are kept, so labels added there
         for a ruleSelector stay).
default  checks, and exits 1 with one line per problem:
  * the PrometheusRule's spec.groups equal the rules file's groups (parsed, so
    comments and layout do not matter);
  * every alert is named Pgsplit*, has `for`, a severity label (critical or
    warning) and the annotations summary, description and runbook_url;
  * every runbook_url points at a heading of docs/operations.md, by the anchor
    GitHub gives that heading;
  * deploy/prometheus/pgsplit-rules.test.yml (promtool test rules) tests every
    alert at least once firing (exp_alerts not empty) and once not firing
    (exp_alerts empty).
Whether the rules and the tests are valid and pass is promtool's job
(deploy/check/validate.sh runs `promtool check rules` and `promtool test rules`).

Needs PyYAML only.
"""

import os
import re
import sys

import yaml

RULES = "deploy/prometheus/pgsplit-rules.yml"
TESTS = "deploy/prometheus/pgsplit-rules.test.yml"
PROMETHEUSRULE = "deploy/kubernetes/base/prometheusrule.yaml"
OPERATIONS = "docs/operations.md"
RUNBOOK_BASE = "https://github.com/pgsplit/pgsplit/blob/main/docs/operations.md"
SEVERITIES = ("critical", "warning")
ANNOTATIONS = ("summary", "description", "runbook_url")

HEADER = f"""\
# GENERATED from {RULES} by deploy/check/prometheus_rules.py --write:
# edit that file, then run the script; everything from `spec:` on is rewritten
# (deploy/check/validate.sh fails while the two differ).
#
# pgsplit's alerting rules for the Prometheus Operator, in the kustomization's
# namespace. If your Prometheus selects PrometheusRules by label
# (kube-prometheus-stack: `release: <release name>`), add that label under
# metadata.labels here; the script keeps what is above `spec:`.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: pgsplit
  labels:
    app.kubernetes.io/name: pgsplit
    app.kubernetes.io/component: alerts
"""

problems = []


def fail(msg):
    problems.append(msg)


def load(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def rules_body(text):
    """The rules file from its `groups:` line on (leading comments dropped)."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("groups:"):
            return lines[i:]
    raise SystemExit(f"{RULES}: no top-level `groups:` line")


def render(rules_text, current):
    """The PrometheusRule text for `rules_text`, keeping `current`'s head."""
    head = HEADER
    if current is not None:
        cut = re.search(r"^spec:\s*$", current, re.M)
        if cut:
            head = current[: cut.start()]
    body = "".join(("  " + line) if line.strip() else "\n" for line in rules_body(rules_text))
    return head + "spec:\n" + body


def github_anchors(markdown):
    """Anchors GitHub generates for the headings of a Markdown text."""
    anchors, seen = set(), {}
    in_fence = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        m = None if in_fence else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        text = re.sub(r"`([^`]*)`", r"\1", m.group(1)).lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def alerts_of(groups):
    for g in groups or []:
        for r in (g or {}).get("rules") or []:
            if "alert" in r:
                yield r


def diff_groups(plain, crd):
    """One line per difference between two lists of rule groups."""
    if not isinstance(crd, list):
        return [f"{PROMETHEUSRULE}: spec.groups is not a list"]
    out = []
    pn = [g.get("name") for g in plain]
    cn = [g.get("name") for g in crd]
    if pn != cn:
        out.append(f"group names differ: {RULES} has {pn}, {PROMETHEUSRULE} has {cn}")
    for pg, cg in zip(plain, crd):
        if {k: v for k, v in pg.items() if k != "rules"} != {k: v for k, v in cg.items() if k != "rules"}:
            out.append(f"group {pg.get('name')!r}: settings differ")
        pr, cr = pg.get("rules") or [], cg.get("rules") or []
        name = lambda r: r.get("alert") or r.get("record")  # noqa: E731
        if [name(r) for r in pr] != [name(r) for r in cr]:
            out.append(
                f"group {pg.get('name')!r}: rules differ: {[name(r) for r in pr]} vs {[name(r) for r in cr]}"
            )
            continue
        for a, b in zip(pr, cr):
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    out.append(f"rule {name(a)}: {key} differs")
    return out


def check(root):
    missing = [p for p in (RULES, TESTS, OPERATIONS) if not os.path.isfile(os.path.join(root, p))]
    if missing:
        fail(f"missing under {os.path.abspath(root)}: {', '.join(missing)}")
        return
    rules = load(os.path.join(root, RULES))
    groups = (rules or {}).get("groups")
    if not isinstance(groups, list) or not groups:
        fail(f"{RULES}: no rule groups")
        return

    # 1. The PrometheusRule has the same groups.
    pr_path = os.path.join(root, PROMETHEUSRULE)
    if not os.path.isfile(pr_path):
        fail(f"{PROMETHEUSRULE} does not exist (deploy/check/prometheus_rules.py --write)")
    else:
        pr = load(pr_path) or {}
        if pr.get("apiVersion") != "monitoring.coreos.com/v1" or pr.get("kind") != "PrometheusRule":
            fail(f"{PROMETHEUSRULE}: not a monitoring.coreos.com/v1 PrometheusRule")
        diffs = diff_groups(groups, (pr.get("spec") or {}).get("groups"))
        for d in diffs:
            fail(f"{PROMETHEUSRULE} differs from {RULES}: {d}")
        if diffs:
            fail(f"run deploy/check/prometheus_rules.py --write to regenerate {PROMETHEUSRULE}")

    # 2. Every alert follows the conventions, its runbook exists.
    with open(os.path.join(root, OPERATIONS), encoding="utf-8") as f:
        anchors = github_anchors(f.read())
    names = []
    for r in alerts_of(groups):
        name = r["alert"]
        names.append(name)
        if not re.fullmatch(r"Pgsplit[A-Z][A-Za-z0-9]*", str(name)):
            fail(f"{RULES}: alert {name!r} is not named Pgsplit<CamelCase>")
        if "for" not in r:
            fail(f"{RULES}: {name}: no `for`")
        sev = (r.get("labels") or {}).get("severity")
        if sev not in SEVERITIES:
            fail(f"{RULES}: {name}: severity {sev!r} is not one of {SEVERITIES}")
        ann = r.get("annotations") or {}
        for key in ANNOTATIONS:
            if not str(ann.get(key, "")).strip():
                fail(f"{RULES}: {name}: no {key} annotation")
        url = str(ann.get("runbook_url", ""))
        base, _, anchor = url.partition("#")
        if base != RUNBOOK_BASE:
            fail(f"{RULES}: {name}: runbook_url {url!r} is not {RUNBOOK_BASE}#<anchor>")
        elif anchor not in anchors:
            fail(f"{RULES}: {name}: runbook_url anchor #{anchor} is not a heading of {OPERATIONS}")
    if len(set(names)) != len(names):
        fail(f"{RULES}: an alert name is used twice: {names}")

    # 3. The unit tests cover every alert, firing and not firing.
    tests = load(os.path.join(root, TESTS)) or {}
    fires, quiet = set(), set()
    for t in tests.get("tests") or []:
        for case in t.get("alert_rule_test") or []:
            (fires if case.get("exp_alerts") else quiet).add(case.get("alertname"))
    for name in names:
        if name not in fires:
            fail(f"{TESTS}: no test case where {name} fires")
        if name not in quiet:
            fail(f"{TESTS}: no test case where {name} does not fire")
    for name in (fires | quiet) - set(names):
        fail(f"{TESTS}: tests alert {name!r}, which {RULES} does not define")
    if not problems:
        print(f"  {RULES} and {PROMETHEUSRULE}: {len(names)} alerts, same rules, runbooks and tests present")


def main(argv):
    args = [a for a in argv[1:] if a != "--write"]
    write = len(args) != len(argv) - 1
    root = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    if write:
        with open(os.path.join(root, RULES), encoding="utf-8") as f:
            rules_text = f.read()
        path = os.path.join(root, PROMETHEUSRULE)
        current = None
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                current = f.read()
        new = render(rules_text, current)
        if new != current:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
            print(f"wrote {PROMETHEUSRULE}")
        else:
            print(f"{PROMETHEUSRULE} is up to date")
        return 0
    check(root)
    for p in problems:
        print(f"ERROR {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
