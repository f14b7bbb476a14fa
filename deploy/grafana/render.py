#!/usr/bin/env python3
# Draws deploy/grafana/pgsplit.json as a PNG from a real Prometheus, without
# Grafana: each panel's queries over the last minutes (query_range; instant
# queries at the end), laid out by the panels' gridPos, with their titles,
# legends, units, value mappings, thresholds and the dashed limit lines.
#
#   python3 deploy/grafana/render.py --prometheus http://127.0.0.1:9090 \
#       --minutes 15 --out docs/img/dashboard.png
#
# How docs/img/dashboard.png was made: `pgsplit demo` for a primary and a
# replica; in front of them a second pgsplit (`pgsplit --config`) with
# `[tls] mode = "allow"`, `[pool] max_size = 6`, `checkout_timeout = "1s"`,
# scraped every 5s by Prometheus; 15 minutes of traffic through it:
# `pgbench -S -R 120`, `pgbench -b tpcb-like -R 12`, pgbench scripts that
# write then read, run read-only transactions, and transactions that read then
# write (moved to the primary), psql every few seconds over TLS, with a wrong
# password,
# with a temporary table, and calling a STABLE function that fails on replicas
# (a retry); 30 s of 12 sessions holding transactions on the pool of 6 (pool
# exhausted, around -10m in the picture); WAL replay paused on the replica
# for 40 s (`SELECT pg_wal_replay_pause()` as superuser) with a bulk insert
# (lag over both limits, around -6m); then
#   python3 deploy/grafana/render.py --prometheus http://127.0.0.1:19090 \
#       --minutes 15 --until-ago 60 --out docs/img/dashboard.png
# (deploy/local/run.sh starts a demo and a Prometheus on :9090 in one step.)
#
# Needs python3 and matplotlib (pip install matplotlib). Only reads from
# Prometheus.

import argparse
import json
import math
import os
import re
import sys
import time
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import patches  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, MultipleLocator  # noqa: E402
from PIL import Image  # noqa: E402  (a dependency of matplotlib)

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "pgsplit.json")

# Grafana's dark theme, roughly.
BG = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
MUTED = "#8e8e9a"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9",
           "#705da0", "#37872d", "#fade2a", "#447ebc", "#c15c17", "#890f02", "#0a437c"]
NAMED = {"green": "#73bf69", "red": "#f2495c", "orange": "#ff9830", "yellow": "#fade2a",
         "blue": "#5794f2", "purple": "#b877d9", "text": TEXT}

ROW_UNITS = 30  # pixels of one gridPos height unit at dpi 100 (Grafana: 30px)


def color(name):
    return NAMED.get(name, name or TEXT)


# ---------------------------------------------------------------- Prometheus

def api(base, path, params):
    url = f"{base.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{url}: {body}")
    return body["data"]["result"]


def substitute(expr, values):
    def one(m):
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"unknown variable ${name} in {expr!r}")
        return values[name]
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)", one, expr)


def variables(dash, args):
    values = {"__rate_interval": args.rate_interval, "__interval": f"{args.step}s",
              "__range": f"{args.minutes}m"}
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "datasource":
            continue
        if v.get("type") == "query":
            values[v["name"]] = args.instance
        else:
            values[v["name"]] = (v.get("current") or {}).get("value") or v.get("query", "")
    return values


def legend(fmt, metric):
    if not fmt or fmt == "__auto":
        labels = {k: v for k, v in metric.items() if k != "__name__"}
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or metric.get("__name__", "value")
    return re.sub(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt)


def fetch(panel, base, values, start, end, step):
    """[(legend, refId, [(t, v)])] for every series of every target."""
    out = []
    for t in panel.get("targets", []):
        expr = substitute(t["expr"], values)
        if t.get("instant"):
            result = api(base, "/api/v1/query", {"query": expr, "time": end})
            series = [(r["metric"], [r["value"]]) for r in result]
        else:
            result = api(base, "/api/v1/query_range",
                         {"query": expr, "start": start, "end": end, "step": step})
            series = [(r["metric"], r["values"]) for r in result]
        for metric, points in series:
            pts = []
            for ts, v in points:
                t_rel = float(ts) - end
                # A gap in the series (no sample) stays a gap, as Grafana
                # draws it, instead of a line across it.
                if pts and t_rel - pts[-1][0] > 1.5 * step:
                    pts.append((pts[-1][0] + step, float("nan")))
                pts.append((t_rel, float(v)))
            out.append((legend(t.get("legendFormat"), metric), t.get("refId"), pts))
    return out


# ---------------------------------------------------------------- units

def fmt_value(v, unit, decimals=None):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "NaN"
    a = abs(v)
    if unit == "percentunit":
        return f"{v * 100:.{1 if decimals is None else decimals}f}%"
    if unit == "s":
        if a == 0:
            return "0 s"
        if a < 1e-3:
            return f"{v * 1e6:.0f} µs"
        if a < 1:
            return f"{v * 1e3:.3g} ms"
        return f"{v:.3g} s"
    if unit == "bytes":
        for size, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if a >= size:
                return f"{v / size:.3g} {name}"
        return f"{v:.0f} B"
    suffix = {"ops": " ops/s", "cps": " c/s", "reqps": " req/s"}.get(unit, "")
    if a >= 1000:
        return f"{v / 1000:.3g}K{suffix}"
    if decimals is not None:
        return f"{v:.{decimals}f}{suffix}"
    if a == 0 or a >= 10 or float(v).is_integer():
        return f"{v:.0f}{suffix}"
    return f"{v:.2g}{suffix}"


def mapped(v, mappings):
    for m in mappings or []:
        if m.get("type") == "value":
            key = f"{v:g}" if v is not None and not math.isnan(v) else None
            hit = (m.get("options") or {}).get(key)
            if hit:
                return hit.get("text"), hit.get("color")
    return None, None


def threshold_color(v, thresholds):
    steps = (thresholds or {}).get("steps") or []
    c = TEXT
    for s in steps:
        if s.get("value") is None or (v is not None and not math.isnan(v) and v >= s["value"]):
            c = color(s.get("color"))
    return c


# ---------------------------------------------------------------- drawing

def style_axes(ax):
    ax.set_facecolor(PANEL)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color(BORDER)
    ax.tick_params(colors=MUTED, labelsize=7, length=2)
    ax.grid(True, color=BORDER, linewidth=0.5)


def draw_timeseries(ax, panel, data, minutes, legend_cols, tick_px):
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    unit = defaults.get("unit", "short")
    custom = defaults.get("custom", {})
    stacked = (custom.get("stacking") or {}).get("mode") == "normal"
    limits = set()
    for o in panel.get("fieldConfig", {}).get("overrides", []):
        if (o.get("matcher") or {}).get("id") == "byName":
            limits.add(o["matcher"]["options"])
    style_axes(ax)
    handles = []
    # Stacked series add up on one time grid (a missing point counts 0).
    grid = sorted({t for _, _, pts in data for t, _ in pts})
    base = {t: 0.0 for t in grid}
    for i, (name, _, pts) in enumerate(data):
        c = PALETTE[i % len(PALETTE)]
        if name in limits:
            (h,) = ax.plot([t / 60 for t, _ in pts], [v for _, v in pts], color=NAMED["red"],
                           linestyle=(0, (4, 3)), linewidth=1.2, label=name)
        elif stacked:
            values = {t: v for t, v in pts if not math.isnan(v)}
            bottom = [base[t] for t in grid]
            for t in grid:
                base[t] += values.get(t, 0.0)
            top = [base[t] for t in grid]
            xs = [t / 60 for t in grid]
            ax.fill_between(xs, bottom, top, color=c, alpha=0.35, linewidth=0)
            (h,) = ax.plot(xs, top, color=c, linewidth=1, label=name)
        else:
            xs = [t / 60 for t, _ in pts]
            ys = [v for _, v in pts]
            (h,) = ax.plot(xs, ys, color=c, linewidth=1.1, label=name)
            # NaN (a gap) leaves a gap in the fill too.
            ax.fill_between(xs, 0, ys, color=c, alpha=0.08, linewidth=0)
        handles.append(h)
    ax.set_xlim(-minutes, 0)
    ax.xaxis.set_major_locator(MaxNLocator(6, integer=True))
    if "min" in defaults:
        ax.set_ylim(bottom=defaults["min"])
    if "max" in defaults:
        ax.set_ylim(top=defaults["max"])
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.0f}m" if abs(x) > 0.01 else "now"))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: fmt_value(y, unit)))
    top = ax.get_ylim()[1]
    if unit == "bytes" and top > 0:
        # Steps of a power of two, as bytes are read (1 MiB, 2 MiB, 4 MiB...).
        step = 2 ** math.ceil(math.log2(top / 4))
        ax.yaxis.set_major_locator(MultipleLocator(step))
    else:
        ax.yaxis.set_major_locator(MaxNLocator(4))
    if handles:
        # Below the plot, as Grafana draws it: at most two rows.
        shown = handles[: 2 * legend_cols]
        ax.legend(handles=shown, loc="upper left", bbox_to_anchor=(0, -tick_px), fontsize=6.5,
                  frameon=False, labelcolor=TEXT, ncol=legend_cols, handlelength=1.2,
                  columnspacing=1.2, borderaxespad=0, handletextpad=0.4)
    else:
        ax.text(0.5, 0.5, "No data", color=MUTED, ha="center", va="center", transform=ax.transAxes)


def draw_stat(ax, panel, data):
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    opts = panel.get("options", {})
    unit = defaults.get("unit", "short")
    ax.set_axis_off()
    if not data:
        ax.text(0.5, 0.45, defaults.get("noValue", "No data"), color=MUTED if "noValue" not in defaults else TEXT,
                ha="center", va="center", fontsize=16, transform=ax.transAxes)
        return
    n = len(data)
    for i, (name, _, pts) in enumerate(data):
        last = next((v for _, v in reversed(pts) if not math.isnan(v)), float("nan"))
        text, mcolor = mapped(last, defaults.get("mappings"))
        c = color(mcolor) if mcolor else threshold_color(last, defaults.get("thresholds"))
        shown = text if text is not None else fmt_value(last, unit, defaults.get("decimals"))
        x0, w = i / n, 1 / n
        background = opts.get("colorMode") == "background"
        if background:
            ax.add_patch(patches.FancyBboxPatch((x0 + 0.01, 0.04), w - 0.02, 0.9, boxstyle="round,pad=0,rounding_size=0.02",
                                                transform=ax.transAxes, facecolor=c, edgecolor="none", alpha=0.85))
            c = "#ffffff"
        mode = opts.get("textMode", "auto")
        if mode == "name":
            main, sub = name, None
        elif mode == "value_and_name" or n > 1:
            main, sub = shown, name
        else:
            main, sub = shown, None
        size = 17 if n == 1 else max(9, 15 - 2 * n)
        # Long text (a server name) shrinks to fit its tile.
        size = min(size, 1.6 * (w * ax.bbox.width / 100 * 72) / max(len(main), 1))
        ax.text(x0 + w / 2, 0.42 if sub else 0.45, main, color=c, ha="center", va="center",
                fontsize=size, fontweight="bold", transform=ax.transAxes)
        if sub:
            ax.text(x0 + w / 2, 0.8, sub, color="#ffffff" if background else MUTED, ha="center",
                    va="center", fontsize=7, transform=ax.transAxes)
        if opts.get("graphMode") == "area" and n == 1 and len(pts) > 1:
            xs = [p[0] for p in pts]
            ys = [0 if math.isnan(p[1]) else p[1] for p in pts]
            lo, hi = min(ys), max(ys)
            span = (hi - lo) or 1
            inset = ax.inset_axes([0, 0, 1, 0.3])
            inset.set_axis_off()
            inset.fill_between(xs, [(y - lo) / span for y in ys], color=c, alpha=0.2, linewidth=0)
            inset.set_xlim(xs[0], xs[-1])
            inset.set_ylim(0, 1.05)


def draw_bargauge(ax, panel, data):
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    unit = defaults.get("unit", "short")
    ax.set_axis_off()
    rows = [(name, pts[-1][1]) for name, _, pts in data if pts]
    if not rows:
        ax.text(0.5, 0.5, "No data", color=MUTED, ha="center", va="center", transform=ax.transAxes)
        return
    top = max(v for _, v in rows) or 1
    n = len(rows)
    h = min(0.8 / n, 0.22)
    for i, (name, v) in enumerate(rows):
        y = 0.92 - (i + 1) * (h + 0.03)
        ax.text(0.0, y + h / 2, name, color=TEXT, fontsize=7, va="center", transform=ax.transAxes)
        ax.add_patch(patches.Rectangle((0.22, y), 0.66, h, transform=ax.transAxes, facecolor=BORDER))
        frac = max(0.0, min(1.0, v / top))
        ax.add_patch(patches.Rectangle((0.22, y), 0.66 * frac, h, transform=ax.transAxes,
                                       facecolor=NAMED["orange"] if frac > 0.5 else NAMED["yellow"]))
        ax.text(0.9, y + h / 2, fmt_value(v, unit, defaults.get("decimals")), color=TEXT, fontsize=8,
                va="center", transform=ax.transAxes)


def render(dash, args):
    end = time.time() - args.until_ago
    start = end - args.minutes * 60
    values = variables(dash, args)
    panels = dash["panels"]
    rows_total = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    width_px = args.width
    height_px = rows_total * ROW_UNITS + 40
    fig = plt.figure(figsize=(width_px / 100, height_px / 100), dpi=100, facecolor=BG)
    top_px = 40
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(end))
    fig.text(0.01, 1 - 20 / height_px, f"{dash.get('title', 'dashboard')}  ·  {args.minutes} minutes to {until}  ·  "
             f"instance=~\"{args.instance}\"", color=TEXT, fontsize=11, fontweight="bold", va="center")

    def rect(g):
        """The gridPos box in pixels from the top left: x, y, width, height."""
        x = g["x"] / 24 * width_px
        w = g["w"] / 24 * width_px
        y = top_px + g["y"] * ROW_UNITS
        h = g["h"] * ROW_UNITS
        return x, y, w, h

    errors = []
    for p in panels:
        x, y, w, h = rect(p["gridPos"])
        if p.get("type") == "row":
            fig.text((x + 6) / width_px, 1 - (y + h / 2) / height_px, p.get("title", ""), color=TEXT,
                     fontsize=10, fontweight="bold", va="center")
            continue
        frame = fig.add_axes([(x + 3) / width_px, 1 - (y + h - 3) / height_px, (w - 6) / width_px,
                              (h - 6) / height_px])
        frame.set_xticks([])
        frame.set_yticks([])
        frame.set_facecolor(PANEL)
        for s in frame.spines.values():
            s.set_color(BORDER)
        frame.text(0.012 * 24 / p["gridPos"]["w"], 1 - 11 / (h - 6), p.get("title", ""), color=TEXT,
                   fontsize=8, fontweight="bold", va="center", transform=frame.transAxes)
        try:
            data = fetch(p, args.prometheus, values, start, end, args.step)
        except Exception as e:  # a broken query: say so in the panel and at the end
            errors.append(f"{p.get('title')}: {e}")
            frame.text(0.5, 0.5, "query error", color=NAMED["red"], ha="center", transform=frame.transAxes)
            continue
        kind = p.get("type")
        if kind == "timeseries":
            left = 52
            cols = max(1, int((w - left) // 170))
            rows = min(2, math.ceil(len(data) / cols)) if data else 0
            bottom = 18 + 12 * rows + 4  # tick labels, legend rows
            ax_h = h - 36 - bottom
            ax = fig.add_axes([(x + left) / width_px, 1 - (y + h - bottom) / height_px,
                               (w - left - 14) / width_px, ax_h / height_px])
            draw_timeseries(ax, p, data, args.minutes, cols, 16 / ax_h)
        else:
            ax = fig.add_axes([(x + 8) / width_px, 1 - (y + h - 8) / height_px, (w - 16) / width_px,
                               (h - 30) / height_px])
            (draw_stat if kind == "stat" else draw_bargauge)(ax, p, data)
    fig.savefig(args.out, dpi=100, facecolor=BG)
    plt.close(fig)
    # 256 colours are plenty for flat panels and thin lines: a third of the size.
    with Image.open(args.out) as img:
        img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    return errors


def main():
    ap = argparse.ArgumentParser(description="Draw deploy/grafana/pgsplit.json from a Prometheus as a PNG.")
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    ap.add_argument("--minutes", type=int, default=15, help="time range, ending now")
    ap.add_argument("--until-ago", type=int, default=0, help="end the time range this many seconds ago")
    ap.add_argument("--step", type=int, default=10, help="seconds between points")
    ap.add_argument("--rate-interval", default="1m", help="what $__rate_interval becomes")
    ap.add_argument("--instance", default=".*", help="regex for the instance variable")
    ap.add_argument("--width", type=int, default=1600, help="picture width in pixels")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "img", "dashboard.png"))
    ap.add_argument("--dashboard", default=DASHBOARD)
    args = ap.parse_args()
    with open(args.dashboard, encoding="utf-8") as f:
        dash = json.load(f)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    errors = render(dash, args)
    print(f"wrote {args.out} ({os.path.getsize(args.out) // 1024} KB)")
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
