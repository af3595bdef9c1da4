"""`bench.py --compare OLD.json`: this run's rows against a saved run's, row by row.

A row is matched by (section, name, metric, unit). Its ratio is new / old, turned so that above
1 is better: throughputs, FLOP/s, fractions and ours-over-peer ratios are better higher; times
and bytes are better lower. A row is flagged slower only when it lost more than the two runs'
own spread: each timed row carries the min and max of its repeats, so (max - min) / median is
how much that row moved between calls of one run; a loss inside the larger of the two spreads
is noise, not a regression. Derived rows (ratios, compile times) carry no spread and are shown,
never flagged.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from gpt_jax.errors import UserError
from gpt_jax.lab.bench.harness import Result

LOWER_IS_BETTER = {"s", "ms", "bytes"}
NOT_COMPARED = {"tests", "skip"}       # counts of passed/failed tests, peers left out


@dataclass
class Change:
    """One matched row: better is the new/old ratio turned so that > 1 is better; spread the
    larger relative spread of the two runs (None when a row has none)."""
    new: Result
    old: Result
    better: float
    spread: Optional[float]

    @property
    def slower(self) -> bool:
        return self.spread is not None and self.better < 1.0 - self.spread


def load_results(path: str) -> list[Result]:
    """The rows of a bench JSON (report.write_json), or one UserError line."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise UserError(f"--compare {path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:
        raise UserError(f"--compare {path}: not a bench JSON ({e})") from None
    rows = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(rows, list):
        raise UserError(f"--compare {path}: not a bench JSON (no \"results\" list): pass a "
                        f"file that bench.py --json wrote")
    try:
        return [Result(**row) for row in rows]
    except TypeError as e:
        raise UserError(f"--compare {path}: a row is not a bench result ({e})") from None


def relative_spread(r: Result) -> Optional[float]:
    if r.median is None or r.min is None or r.max is None or not r.median > 0:
        return None
    return (r.max - r.min) / r.median


def compare(new: list[Result], old: list[Result]) -> tuple[list[Change], list[Result]]:
    """(the matched rows in new's order, new's rows that the old run lacks)."""
    by_key = {(r.section, r.name, r.metric, r.unit): r for r in old}
    changes, unmatched = [], []
    for r in new:
        if r.unit in NOT_COMPARED:
            continue
        o = by_key.get((r.section, r.name, r.metric, r.unit))
        if o is None or not o.value or not r.value:
            unmatched.append(r)
            continue
        ratio = r.value / o.value
        better = 1.0 / ratio if r.unit in LOWER_IS_BETTER else ratio
        spreads = [s for s in (relative_spread(r), relative_spread(o)) if s is not None]
        changes.append(Change(r, o, better, max(spreads) if len(spreads) == 2 else None))
    return changes, unmatched


def format_changes(changes: list[Change], unmatched: list[Result], old_path: str) -> str:
    lines = [f"against {old_path}: new / old, turned so that above 1 is better",
             f"{'section':<10} {'name':<44} {'metric':<28} {'better':>8} {'spread':>7}"]
    for c in changes:
        spread = "-" if c.spread is None else f"{c.spread:.0%}"
        flag = "  SLOWER beyond the spread" if c.slower else ""
        lines.append(f"{c.new.section:<10} {c.new.name[:44]:<44} {c.new.metric[:28]:<28} "
                     f"{c.better:>7.3f}x {spread:>7}{flag}")
    slower = sum(c.slower for c in changes)
    lines.append(f"{len(changes)} rows compared, {slower} slower beyond their spread"
                 + (f", {len(unmatched)} not in {old_path}" if unmatched else ""))
    return "\n".join(lines)
