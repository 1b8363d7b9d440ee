"""Results: one ``Row`` per (spec, contender); ratios to the best peer; table, JSON, PNG."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

BAD = ("FAILED", "TIMEOUT", "ERROR")   # any of these makes the run exit non-zero


@dataclass
class Row:
    kind: str
    scenario: str
    size: int
    producers: int
    consumers: int
    separate_groups: bool
    contender: str
    family: str              # "peer" | "shmwal"
    status: str              # ok | FAILED | TIMEOUT | ERROR | SKIPPED | n/a
    detail: str = ""
    messages: int = 0        # deliveries expected (every group counts for separate groups)
    received: int = 0
    elapsed_s: float | None = None   # producers' first send -> consumers' last receive
    msgs_per_s: float | None = None
    mb_per_s: float | None = None    # 1 MB = 10**6 bytes of payload
    p50_us: float | None = None
    p99_us: float | None = None
    max_us: float | None = None
    vs_best_peer: float | None = None       # > 1: better than the best peer (msgs/s or p50)
    vs_best_peer_p99: float | None = None   # latency rows: the same for p99
    trials: list = field(default_factory=list)   # the figure of every repeat (--repeat)
    command: str = ""        # reproduces this row's cell: this contender and the peers it is compared with

    @property
    def figure(self) -> float | None:
        """What repeats are ranked by: msgs/s, or p50 latency."""
        return self.p50_us if self.kind == "latency" else self.msgs_per_s

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def progress_line(self) -> str:
        what = f"{self.kind:<10} {self.scenario:<14} {size_label(self.size):>7}  {self.contender:<28}"
        if not self.ok:
            return f"{what} {self.status}: {self.detail.strip().splitlines()[-1] if self.detail else ''}"
        if self.kind == "latency":
            return f"{what} p50 {self.p50_us:,.1f} us  p99 {self.p99_us:,.1f} us"
        return f"{what} {self.msgs_per_s:,.0f} msgs/s  {self.mb_per_s:,.1f} MB/s"


def size_label(size: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


# ---------------------------------------------------------------- ratios

def _cell(row: Row) -> tuple:
    return (row.kind, row.size, row.producers, row.consumers, row.separate_groups)


def add_ratios(rows: list[Row]) -> None:
    """Each ok row's figure over the best peer's in the same cell (same kind, size, shape).

    Oriented so that > 1 always means better than the best peer: msgs/s divided by the best
    peer's; for latency, the best peer's p50 (p99) divided by the row's.
    """
    peers: dict[tuple, list[Row]] = {}
    for row in rows:
        if row.ok and row.family == "peer":
            peers.setdefault(_cell(row), []).append(row)
    for row in rows:
        best = peers.get(_cell(row))
        if not row.ok or not best:
            continue
        if row.kind == "latency":
            if row.p50_us:
                row.vs_best_peer = min(p.p50_us for p in best) / row.p50_us
            if row.p99_us:
                row.vs_best_peer_p99 = min(p.p99_us for p in best) / row.p99_us
        elif row.msgs_per_s:
            row.vs_best_peer = row.msgs_per_s / max(p.msgs_per_s for p in best)


# ---------------------------------------------------------------- text tables

def _num(value, fmt=",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _table(title: str, header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def fmt(cells):
        # first two columns left-aligned (labels), the rest right-aligned (numbers)
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(fmt(header))
    return "\n".join([f"== {title} ==", fmt(header), rule, *map(fmt, lines)])


def _spread(row: Row) -> str:
    """How far apart the repeats were: (max - min) / median, the run-to-run noise."""
    figures = [f for f in row.trials if f]
    if len(figures) < 2 or not row.figure:
        return "-"
    return f"{(max(figures) - min(figures)) / row.figure:.0%}"


def _status(row: Row) -> str:
    return "ok" if row.ok else row.status


def tables(rows: list[Row]) -> str:
    out = []
    shown = [r for r in rows if r.status != "n/a"]
    thr = [r for r in shown if r.kind == "throughput"]
    if thr:
        out.append(_table(
            "Throughput, 1 producer -> 1 consumer (x best peer: >1 is faster; spread: repeats' (max-min)/median)",
            ["size", "contender", "msgs/s", "MB/s", "x best peer", "spread", "check"],
            [[size_label(r.size), r.contender, _num(r.msgs_per_s), _num(r.mb_per_s, ",.1f"),
              _ratio(r.vs_best_peer), _spread(r), _status(r)] for r in thr]))
    lat = [r for r in shown if r.kind == "latency"]
    if lat:
        out.append(_table(
            "One-way latency, paced sends, consumer blocked (x best peer: >1 is lower)",
            ["size", "contender", "p50 us", "p99 us", "max us", "x best p50", "x best p99", "spread", "check"],
            [[size_label(r.size), r.contender, _num(r.p50_us, ",.1f"), _num(r.p99_us, ",.1f"),
              _num(r.max_us, ",.1f"), _ratio(r.vs_best_peer), _ratio(r.vs_best_peer_p99), _spread(r),
              _status(r)] for r in lat]))
    scl = [r for r in rows if r.kind == "scaling"]
    if scl:
        out.append(_table(
            f"Scaling at {size_label(scl[0].size)} (work: consumers share; groups: each gets all, msgs/s counts deliveries)",
            ["scenario", "contender", "msgs/s", "MB/s", "x best peer", "spread", "check"],
            [[r.scenario, r.contender, _num(r.msgs_per_s), _num(r.mb_per_s, ",.1f"),
              _ratio(r.vs_best_peer), _spread(r), _status(r)] for r in scl]))
    obj = [r for r in shown if r.kind == "objects"]
    if obj:
        out.append(_table(
            "Python objects, 1 producer -> 1 consumer, each queue pickling (x best peer: >1 is faster)",
            ["object", "contender", "objects/s", "MB/s", "x best peer", "spread", "check"],
            [[_object_label(r), r.contender, _num(r.msgs_per_s), _num(r.mb_per_s, ",.1f"),
              _ratio(r.vs_best_peer), _spread(r), _status(r)] for r in obj]))
    commands = list(dict.fromkeys(r.command for r in shown if r.command))
    if commands:
        out.append("== Reproduce (one command per cell: its contenders and the peers they are compared with) ==\n"
                   + "\n".join(commands))
    problems = [r for r in rows if r.status in BAD or r.status == "SKIPPED"]
    if problems:
        out.append("== Not ok ==")
        seen_skips = set()
        for r in problems:
            if r.status == "SKIPPED":
                if r.contender in seen_skips:
                    continue
                seen_skips.add(r.contender)
            first = r.detail.strip().splitlines()[-1] if r.detail.strip() else ""
            out.append(f"{r.status:<8} {r.kind} {r.scenario} {size_label(r.size)} {r.contender}: {first}")
    return "\n\n".join(out)


def _object_label(row: Row) -> str:
    item = row.scenario.rsplit(" ", 1)[-1]
    return f"{size_label(row.size)} {item}" if item == "array" else f"small {item} ({size_label(row.size)})"


# ---------------------------------------------------------------- files

def write_json(rows: list[Row], meta: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": [asdict(r) for r in rows]}, f, indent=2)
        f.write("\n")


def _grouped_bars(ax, groups: list, series: dict[str, list], colors: dict, ylabel: str,
                  marks: dict[str, list] | None = None, log=True) -> None:
    """One bar per contender in each group; ``marks`` (e.g. p99) drawn as ticks over the bars."""
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [math.nan if v is None else v for v in values], width, label=name, color=colors[name])
        if marks:
            ax.scatter(xs, [math.nan if v is None else v for v in marks[name]], marker="_", s=200, color="black")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)


def _series(rows: list[Row], groups: list, key, value) -> dict[str, list]:
    names = list(dict.fromkeys(r.contender for r in rows))
    cells = {(r.contender, key(r)): value(r) for r in rows}
    return {n: [cells.get((n, g)) for g in groups] for n in names}


def _panels(rows: list[Row]):
    """(title, x labels, bar series, tick series or None, y label, log scale) per chart."""
    thr = [r for r in rows if r.kind == "throughput"]
    if thr:
        sizes = sorted({r.size for r in thr})
        yield ("Throughput, 1 producer -> 1 consumer", [size_label(s) for s in sizes],
               _series(thr, sizes, lambda r: r.size, lambda r: r.msgs_per_s), None, "msgs/s", True)
    lat = [r for r in rows if r.kind == "latency"]
    if lat:
        sizes = sorted({r.size for r in lat})
        yield ("One-way latency, paced (bar: p50, tick: p99)", [size_label(s) for s in sizes],
               _series(lat, sizes, lambda r: r.size, lambda r: r.p50_us),
               _series(lat, sizes, lambda r: r.size, lambda r: r.p99_us), "us", True)
    scl = [r for r in rows if r.kind == "scaling"]
    if scl:
        shapes = list(dict.fromkeys(r.scenario for r in scl))
        yield (f"Scaling at {size_label(scl[0].size)} (groups: deliveries/s)", shapes,
               _series(scl, shapes, lambda r: r.scenario, lambda r: r.msgs_per_s), None, "msgs/s", True)
    obj = [r for r in rows if r.kind == "objects"]
    if obj:
        labels = list(dict.fromkeys(_object_label(r) for r in obj))
        yield ("Python objects, pickled by each queue, 1 producer -> 1 consumer", labels,
               _series(obj, labels, _object_label, lambda r: r.msgs_per_s), None, "objects/s", True)


def write_png(rows: list[Row], path: str) -> str | None:
    """The chart; returns why it was not drawn (matplotlib missing, nothing ok), or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")   # no display here
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib not importable: {exc}"
    ok = [r for r in rows if r.ok]
    panels = list(_panels(ok))
    if not panels:
        return "no ok rows to chart"
    # One colour per contender across all panels.
    names = list(dict.fromkeys(r.contender for r in ok))
    # tab10 repeats from the 11th contender on (zero-copy looked like multiprocessing.Queue).
    palette = plt.get_cmap("tab10" if len(names) <= 10 else "tab20").colors
    colors = {name: palette[i % len(palette)] for i, name in enumerate(names)}
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 4.5 * len(panels)), squeeze=False)
    for ax, (title, groups, series, marks, ylabel, log) in zip(axes[:, 0], panels):
        _grouped_bars(ax, groups, series, colors, ylabel, marks, log)
        ax.set_title(title)
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def finish(rows: list[Row], meta: dict, out_dir: str, png: bool = True) -> str:
    """Ratios, files; returns the text to print."""
    add_ratios(rows)
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "bench.json")
    write_json(rows, meta, json_path)
    text = [tables(rows), "", f"JSON: {json_path}"]
    if png:
        png_path = os.path.join(out_dir, "bench.png")
        why_not = write_png(rows, png_path)
        text.append(f"PNG:  {png_path}" if why_not is None else f"PNG:  not written ({why_not})")
    return "\n".join(text)
