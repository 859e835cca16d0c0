"""bench/perf.py's JSON as a picture: req/s, CPU per request, p50 and p99 against connections,
one line per system; and as the Markdown tables of docs/performance.md.

`python bench/perf_plot.py [JSON] [PNG]` (defaults: bench/results/perf.json, docs/performance.png;
perf.py calls it after a run) draws the PNG; `python bench/perf_plot.py --tables [JSON]` prints
the tables. Needs matplotlib (the bench extra).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullLocator

BENCH = Path(__file__).resolve().parent
# One look per system; the granian rows dashed, in their app's colour.
STYLES: dict[str, dict[str, Any]] = {
    "direct": {"color": "black", "marker": "o"},
    "forwarder": {"color": "tab:blue", "marker": "s"},
    "forwarder+granian": {"color": "tab:blue", "marker": "s", "linestyle": "--"},
    "nanogate": {"color": "tab:red", "marker": "D", "linewidth": 2.5},
    "nanogate x2": {"color": "tab:orange", "marker": "D"},
    "nanogate+granian": {"color": "tab:red", "marker": "D", "linestyle": "--"},
    "litellm": {"color": "tab:green", "marker": "^"},
    "portkey": {"color": "tab:purple", "marker": "v"},
}
PANELS = (
    ("rps", "requests/s"),
    ("server_cpu_ms_per_req", "CPU ms per request, the system's own processes"),
    ("p50_ms", "p50 latency, ms"),
    ("p99_ms", "p99 latency, ms"),
)


def plot(source: Path, target: Path) -> None:
    doc = json.loads(source.read_text())
    rows = doc["results"]
    labels = list(dict.fromkeys(row["target"] for row in rows))
    levels = sorted({row["concurrency"] for row in rows})
    fig, grid = plt.subplots(2, 2, figsize=(14, 10))
    axes = list(grid.flat)
    for ax, (key, title) in zip(axes, PANELS, strict=True):
        for label in labels:
            mine = sorted((r for r in rows if r["target"] == label), key=lambda r: r["concurrency"])
            points = [(r["concurrency"], r[key]) for r in mine if r.get(key) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, label=label, **STYLES.get(label, {}))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(levels)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.set_xlabel("connections (closed loop)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    env = doc["environment"]
    fig.suptitle(
        f"small text generateContent: {env['nproc']} cores ({env['cpu_model']}) shared by "
        f"client, servers and nginx; {env['started']}",
        fontsize=11,
    )
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(names), frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    plt.close(fig)
    print(f"wrote {target}")


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def tables(source: Path) -> str:
    """Markdown: one table per figure (systems by connections), then the ratios."""
    doc = json.loads(source.read_text())
    rows = doc["results"]
    labels = list(dict.fromkeys(row["target"] for row in rows))
    levels = sorted({row["concurrency"] for row in rows})
    by = {(row["target"], row["concurrency"]): row for row in rows}
    head = "| connections | " + " | ".join(map(str, levels)) + " |"
    rule = "|---|" + "---:|" * len(levels)
    figures = (
        ("requests/s", lambda r: _cell(r["rps"], 0)),
        ("p50 / p99 ms", lambda r: f"{_cell(r['p50_ms'], 2)} / {_cell(r['p99_ms'], 1)}"),
        ("CPU ms per request (the system's own processes)",
         lambda r: _cell(r["server_cpu_ms_per_req"], 3)),
    )  # fmt: skip
    out = []
    for title, show in figures:
        out += [f"**{title}**", "", head, rule]
        for label in labels:
            cells = [show(by[label, c]) if (label, c) in by else "-" for c in levels]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    summary = doc["summary"]
    names = list(next(iter(summary.values())))
    out += ["**ratios** (req/s over req/s; the last row in ms)", "", head, rule]
    for name in names:
        cells = [_cell(summary[str(c)].get(name), 2) for c in levels]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--tables"]:
        print(tables(Path(args[1]) if len(args) > 1 else BENCH / "results" / "perf.json"))
        sys.exit(0)
    source = Path(args[0]) if args else BENCH / "results" / "perf.json"
    target = Path(args[1]) if len(args) > 1 else BENCH.parent / "docs" / "performance.png"
    plot(source, target)
