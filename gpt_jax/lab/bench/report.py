"""bench.py's output: the printed table, the JSON file (docs/design.md "Files") and the chart."""
from __future__ import annotations

import json
import os
import re
from typing import Optional

from gpt_jax.lab.bench.harness import Result, machine_info
from gpt_jax.errors import UserError


def format_value(value: float, unit: str) -> str:
    if unit in ("FLOP/s", "B/s"):
        for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
            if value >= scale:
                return f"{value / scale:.1f} {prefix}{unit}"
    if unit == "skip":
        return "skipped"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "fraction":
        return f"{100 * value:.1f}%"
    if unit == "bytes":
        return f"{value / 2**20:,.1f} MiB"
    return f"{value:,.1f} {unit}"


def format_table(results: list[Result]) -> str:
    lines = [f"{'section':<9} {'name':<44} {'metric':<28} {'value':>18} {'median s':>9} "
             f"{'compile s':>9}"]
    for r in results:
        med = f"{r.median:.4f}" if r.median is not None else ""
        comp = f"{r.compile_s:.1f}" if r.compile_s is not None else ""
        note = ""
        if r.median and r.min is not None and r.median > 0 and (r.max - r.min) / r.median > 0.2:
            note = f"  (wide spread: {r.min:.4f}-{r.max:.4f} s)"
        if r.unit == "skip":   # a peer left out: say why
            note = f"  ({r.config.get('reason', '')})"
        lines.append(f"{r.section:<9} {r.name[:44]:<44} {r.metric[:28]:<28} "
                     f"{format_value(r.value, r.unit):>18} {med:>9} {comp:>9}{note}")
    return "\n".join(lines)


def write_plot(path: str, results: list[Result]) -> None:
    """A PNG: one panel per section, a bar per tokens/s row (whiskers: min-max over repeats),
    the section's ratio rows in its title. Log scale where a panel spans over 50x."""
    import textwrap
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = {}
    for r in results:
        if r.unit == "tokens/s":
            panels.setdefault(r.section, []).append(r)
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                             figsize=(10, 1.5 + 0.4 * sum(len(v) + 2 for v in panels.values())),
                             gridspec_kw={"height_ratios": [len(v) + 1 for v in panels.values()]})
    for ax, (section, bars) in zip(axes[:, 0], panels.items()):
        values = [r.value for r in bars]
        # value = work / median time, so the min-max times map to value * median / time.
        lo = [v - v * r.median / r.max if r.max else 0 for v, r in zip(values, bars)]
        hi = [v * r.median / r.min - v if r.min else 0 for v, r in zip(values, bars)]
        ax.barh(range(len(bars)), values, xerr=[lo, hi], color="tab:blue", ecolor="black")
        ax.set_yticks(range(len(bars)), [r.name for r in bars], fontsize=8)
        ax.invert_yaxis()
        if max(values) > 50 * min(values):
            ax.set_xscale("log")
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:,.1f}", va="center", fontsize=7)
        ax.set_xlabel("tokens/s", fontsize=8)
        ratios = [f"{r.name}: {r.value:.2f}x" for r in results
                  if r.section == section and r.unit == "x"]
        title = section + ("\n" + "\n".join(textwrap.wrap("; ".join(ratios), 120)) if ratios else "")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, results: list[Result], machine: Optional[dict] = None) -> None:
    """The bench JSON; machine: the measuring process's machine_info() when that was another
    process (a suite's steps), else this one's."""
    doc = {"machine": machine or machine_info(), "results": [r.to_dict() for r in results]}
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, path)
    finally:  # a failed write (disk full) leaves no partial file behind
        if os.path.exists(tmp):
            os.remove(tmp)


def table_markers(name: str) -> tuple[str, str]:
    """The HTML comments that fence a suite's table in a markdown file (README.md)."""
    return f"<!-- {name}-table:start -->", f"<!-- {name}-table:end -->"


def _marked_span(text: str, name: str, path: str) -> tuple[int, int]:
    """(start, end) of what lies between the marker lines in text (lines holding the marker
    alone: the README also mentions them in its prose); a UserError unless each marker line
    is there exactly once, start before end."""
    start, end = table_markers(name)
    found = [[m for m in re.finditer(rf"^{re.escape(marker)}[ \t]*$", text, re.MULTILINE)]
             for marker in (start, end)]
    if len(found[0]) != 1 or len(found[1]) != 1 or found[0][0].start() > found[1][0].start():
        raise UserError(f"--table {path} exists but does not hold the lines {start} and {end} "
                        f"(once each, in that order): add them where the table goes, or give "
                        f"a new file")
    return found[0][0].end(), found[1][0].start()


def check_table_file(path: str, name: str) -> None:
    """Refuse, before any benchmark runs, an existing file the table could not go into."""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            _marked_span(f.read(), name, path)


def write_table(path: str, name: str, table: str) -> None:
    """Put `table` between the suite's markers in `path`, leaving every other byte as it was;
    a file that does not exist yet gets the markers and the table. Written whole or not at
    all (a temporary file renamed over it)."""
    start, end = table_markers(name)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        a, b = _marked_span(text, name, path)
        text = text[:a] + "\n" + table.rstrip("\n") + "\n" + text[b:]
    else:
        text = f"{start}\n{table.rstrip()}\n{end}\n"
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
