#!/usr/bin/env python3
"""The README's race tables from a race's bench.json (``shmwal bench --out DIR`` writes it).

    python scripts/race_markdown.py bench_out/race/bench.json

Every cell: the median of the repeats, its ratio to the best peer of the same run, and the
spread of the repeats ((max - min) / median), so a reader sees how much a figure moves.
"""

from __future__ import annotations

import json
import sys

sys.path.insert(0, __file__.rsplit("/scripts/", 1)[0])

from shmwal.bench.report import size_label  # noqa: E402


def _spread(row) -> str:
    figures = [f for f in row.get("trials") or [] if f]
    figure = row["p50_us"] if row["kind"] == "latency" else row["msgs_per_s"]
    if len(figures) < 2 or not figure:
        return ""
    return f", ±{(max(figures) - min(figures)) / figure / 2:.0%}"


def _cell(row, unit: str) -> str:
    if row["status"] != "ok":
        return row["status"]
    ratio = f" ({row['vs_best_peer']:.2f}×{_spread(row)})" if row.get("vs_best_peer") else _spread(row)
    if unit == "MB/s":
        return f"{row['mb_per_s']:,.0f}{ratio}"
    if unit == "us":
        p99 = f" / {row['p99_us']:,.1f}" if row.get("p99_us") else ""
        return f"{row['p50_us']:,.1f}{p99}{ratio}"
    return f"{row['msgs_per_s']:,.0f}{ratio}"


def _grid(rows, key, columns, unit_of) -> list[str]:
    contenders = list(dict.fromkeys(r["contender"] for r in rows))
    by = {(r["contender"], key(r)): r for r in rows}
    lines = ["| | " + " | ".join(label for label, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name in contenders:
        cells = [(_cell(by[(name, c)], unit_of(c)) if (name, c) in by else "") for _, c in columns]
        if any(cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main(path: str) -> int:
    with open(path) as f:
        data = json.load(f)
    rows = [r for r in data["rows"] if r["status"] not in ("n/a", "SKIPPED")]
    out = []
    throughput = [r for r in rows if r["kind"] in ("throughput", "latency")]
    sizes = sorted({r["size"] for r in throughput})
    columns = [(f"{size_label(s)} msgs/s", ("throughput", s)) for s in sizes if s < 65536]
    columns += [(f"{size_label(s)} MB/s", ("throughput-mb", s)) for s in sizes if s >= 65536]
    columns += [(f"latency p50 / p99 µs ({size_label(s)})", ("latency", s)) for s in sizes[:1]]
    keyed = []
    for r in throughput:
        keyed.append(((r["kind"], r["size"]), r))
        if r["kind"] == "throughput" and r["size"] >= 65536:
            keyed.append((("throughput-mb", r["size"]), r))
    out.append("**1 producer → 1 consumer** (median of the repeats; × the best peer of the same run, ± half "
               "the repeats' spread)")
    out += _grid([dict(r, _key=k) for k, r in keyed], lambda r: r["_key"], columns,
                 lambda c: {"throughput": "msgs", "throughput-mb": "MB/s", "latency": "us"}[c[0]])
    scaling = [r for r in rows if r["kind"] == "scaling"]
    if scaling:
        scenarios = list(dict.fromkeys(r["scenario"] for r in scaling))
        out += ["", f"**Scaling at {size_label(scaling[0]['size'])}** (msgs/s; groups: deliveries/s)"]
        out += _grid(scaling, lambda r: r["scenario"], [(s, s) for s in scenarios], lambda c: "msgs")
    objects = [r for r in rows if r["kind"] == "objects"]
    if objects:
        labels = list(dict.fromkeys(r["scenario"] for r in objects))
        out += ["", "**Python objects** (objects/s, each queue pickling)"]
        out += _grid(objects, lambda r: r["scenario"], [(s, s) for s in labels], lambda c: "msgs")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "bench_out/bench.json"))
