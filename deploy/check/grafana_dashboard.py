#!/usr/bin/env python3
"""Static checks of pgsplit's Grafana dashboard.

    grafana_dashboard.py [ROOT]

Checks deploy/grafana/pgsplit.json against the metric families pgsplit
exports (the FAMILIES table of src/metrics.rs) and exits 1 with one line per
problem:
  * the file is valid JSON; uid "pgsplit", a schemaVersion, a `datasource`
    variable of type datasource (query prometheus), every variable used in an
    expression defined;
  * panel ids are unique (rows and panels inside collapsed rows included);
  * every panel other than a row uses the datasource `${datasource}`, and so do
    its targets; it has at least one target, each with a refId (unique in the
    panel) and a non-empty expr;
  * every metric name in every expression (and in the variables' queries) is a
    family of FAMILIES; a histogram only as name_bucket, name_sum or
    name_count; rate/irate/increase only over counters and histogram series,
    and over a range of $__rate_interval (or $__range, $__interval);
  * gridPos: integers, inside the 24 columns, no two panels overlapping.
Whether each query returns data from a real pgsplit is the integration test's
job (`cargo test --test it dashboard`).

Python 3 standard library only.
"""

import json
import os
import re
import sys

DASHBOARD = "deploy/grafana/pgsplit.json"
METRICS_RS = "src/metrics.rs"
GRID_COLUMNS = 24
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
RATE_FUNCTIONS = ("rate", "irate", "increase")
RANGE_VARIABLES = ("$__rate_interval", "$__range", "$__interval")
# PromQL words that look like metric names but are not: operators, modifiers
# and aggregations (which may stand before `by (...)` instead of a paren).
KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "bool", "offset", "inf", "nan", "atan2", "start", "end",
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
    "count_values", "bottomk", "topk", "quantile",
}

errors = []


def error(msg):
    errors.append(msg)


def families(root):
    """{name: kind} from the FAMILIES table of src/metrics.rs (kind c, g or h)."""
    with open(os.path.join(root, METRICS_RS), encoding="utf-8") as f:
        text = f.read()
    start = text.find("const FAMILIES")
    end = text.find("];", start)
    if start < 0 or end < 0:
        sys.exit(f"ERROR {METRICS_RS}: no FAMILIES table found")
    found = dict(re.findall(r'"(pgsplit_[a-z0-9_]+)",\s*\'([cgh])\'', text[start:end]))
    if not found:
        sys.exit(f"ERROR {METRICS_RS}: FAMILIES lists no metric")
    return found


def strip_variables(expr):
    """Grafana variables ($x, ${x}, ${x:fmt}, [[x]]) replaced by a neutral token."""
    expr = re.sub(r"\$\{[^}]*\}", "VAR", expr)
    expr = re.sub(r"\[\[[^\]]*\]\]", "VAR", expr)
    return re.sub(r"\$[A-Za-z_][A-Za-z0-9_]*", "VAR", expr)


def variables_used(expr):
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}", expr))
    names |= set(re.findall(r"\[\[([A-Za-z_][A-Za-z0-9_]*)(?::[^\]]*)?\]\]", expr))
    names |= set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", expr))
    return names


def metric_names(expr):
    """The metric names an expression selects: identifiers that are not
    functions, keywords, label names, string contents or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"'(?:[^'\\]|\\.)*'", "''", text)
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # ranges and subqueries
    # Label lists of aggregations and vector matching.
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", text
    )
    names = []
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = m.group(0)
        before = text[: m.start()]
        if before and (before[-1].isdigit() or before[-1] == "."):
            continue  # a number's exponent or a duration's unit (1e3, 5m)
        if re.match(r"\s*\(", text[m.end():]):
            continue  # a function call
        if word.lower() in KEYWORDS or word == "VAR":
            continue
        names.append(word)
    return names


def family_of(name, known):
    """(family, kind) for a series name, or None."""
    if name in known:
        return name, known[name]
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and known.get(name[: -len(suffix)]) == "h":
            return name[: -len(suffix)], "h"
    return None


def check_expr(where, expr, known, defined):
    for var in sorted(variables_used(expr) - defined):
        if not var.startswith("__"):
            error(f"{where}: uses undefined variable ${var}")
    for var in sorted(v for v in variables_used(expr) if v.startswith("__")):
        if f"${var}" not in RANGE_VARIABLES:
            error(f"{where}: uses ${var}; only {', '.join(RANGE_VARIABLES)} are expected")
    plain = strip_variables(expr)
    names = metric_names(plain)
    if not names and "vector(" not in plain:
        error(f"{where}: selects no metric: {expr!r}")
    for name in names:
        fam = family_of(name, known)
        if fam is None:
            error(f"{where}: {name} is not a metric pgsplit exports (src/metrics.rs FAMILIES)")
        elif fam[1] == "h" and name == fam[0]:
            error(f"{where}: histogram {name} used without _bucket, _sum or _count")
    # rate(metric{...}[range]) and friends.
    for m in re.finditer(r"\b(" + "|".join(RATE_FUNCTIONS) + r")\s*\(", expr):
        inner = expr[m.end():]
        sel = re.match(r"\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*\[([^\]]*)\]", inner)
        if not sel:
            error(f"{where}: {m.group(1)}() not over a plain range selector")
            continue
        name, rng = sel.group(1), sel.group(3).strip()
        fam = family_of(name, known)
        if fam is not None and fam[1] == "g":
            error(f"{where}: {m.group(1)}() over the gauge {name}")
        if fam is not None and fam[1] == "c" and not name.endswith("_total"):
            error(f"{where}: counter {name} without _total")
        if rng not in RANGE_VARIABLES:
            error(f"{where}: {m.group(1)}({name}[{rng}]): use $__rate_interval (or $__range)")


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels") or [])


def check_grid(panels):
    boxes = []
    for p in panels:
        where = f"panel {p.get('id')} {p.get('title')!r}"
        g = p.get("gridPos")
        if not isinstance(g, dict):
            error(f"{where}: no gridPos")
            continue
        vals = [g.get(k) for k in ("x", "y", "w", "h")]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            error(f"{where}: gridPos x, y, w, h must be integers: {g}")
            continue
        x, y, w, h = vals
        if x < 0 or y < 0 or w < 1 or h < 1 or x + w > GRID_COLUMNS:
            error(f"{where}: gridPos outside the {GRID_COLUMNS}-column grid: {g}")
        if p.get("type") == "row" and (x, w, h) != (0, GRID_COLUMNS, 1):
            error(f"{where}: a row spans the full width with height 1: {g}")
        for other, (ox, oy, ow, oh) in boxes:
            if x < ox + ow and ox < x + w and y < oy + oh and oy < y + h:
                error(f"{where}: overlaps {other}")
        boxes.append((where, (x, y, w, h)))


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..")
    known = families(root)
    path = os.path.join(root, DASHBOARD)
    try:
        with open(path, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        print(f"ERROR {DASHBOARD}: {e}")
        return 1

    if dash.get("uid") != "pgsplit":
        error(f"uid is {dash.get('uid')!r}, expected 'pgsplit'")
    if not isinstance(dash.get("schemaVersion"), int):
        error("no schemaVersion")
    if dash.get("id") is not None:
        error("id must be null (Grafana assigns it when provisioning)")

    variables = (dash.get("templating") or {}).get("list") or []
    defined = {v.get("name") for v in variables}
    ds = [v for v in variables if v.get("name") == "datasource"]
    if not ds or ds[0].get("type") != "datasource" or ds[0].get("query") != "prometheus":
        error("needs a variable `datasource` of type datasource with query prometheus")
    for v in variables:
        if v.get("type") != "query":
            continue
        where = f"variable {v.get('name')}"
        if (v.get("datasource") or {}).get("uid") != "${datasource}":
            error(f"{where}: datasource must be ${{datasource}}")
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\)\s*", q or "")
        if not m:
            error(f"{where}: expected label_values(<selector>, <label>), got {q!r}")
        else:
            check_expr(where, m.group(1), known, defined)

    panels = dash.get("panels") or []
    seen = {}
    for p in all_panels(panels):
        pid = p.get("id")
        if not isinstance(pid, int):
            error(f"panel {p.get('title')!r}: id must be an integer")
        elif pid in seen:
            error(f"panel id {pid} used by {seen[pid]!r} and {p.get('title')!r}")
        else:
            seen[pid] = p.get("title")
    check_grid(panels)
    for row in panels:
        if row.get("type") == "row" and row.get("collapsed"):
            check_grid(row.get("panels") or [])

    exprs = 0
    for p in all_panels(panels):
        if p.get("type") == "row":
            if p.get("targets"):
                error(f"row {p.get('title')!r} has targets")
            continue
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if not p.get("title"):
            error(f"{where}: no title")
        if (p.get("datasource") or {}).get("uid") != "${datasource}":
            error(f"{where}: datasource must be ${{datasource}}, is {p.get('datasource')}")
        targets = p.get("targets") or []
        if not targets:
            error(f"{where}: no targets")
        refs = set()
        for t in targets:
            ref = t.get("refId")
            twhere = f"{where} target {ref}"
            if not ref or ref in refs:
                error(f"{twhere}: missing or repeated refId")
            refs.add(ref)
            if (t.get("datasource") or {}).get("uid") not in (None, "${datasource}"):
                error(f"{twhere}: datasource must be ${{datasource}}")
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                error(f"{twhere}: empty expr")
                continue
            exprs += 1
            check_expr(twhere, expr, known, defined)

    for e in errors:
        print(f"ERROR {DASHBOARD}: {e}")
    if errors:
        return 1
    panel_count = sum(1 for p in all_panels(panels) if p.get("type") != "row")
    print(f"{DASHBOARD}: {panel_count} panels, {exprs} queries over {len(known)} metric families: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
