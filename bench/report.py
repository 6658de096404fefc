"""Run records (one JSON object per run) and the comparison table."""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any, Optional

from bench.scenarios import SCENARIOS

Record = dict[str, Any]


def make_record(
    scenario: str,
    label: str,
    target: str,
    params: dict[str, Any],
    figures: dict[str, Any],
    status: str,
    error: Optional[str],
    seconds: float,
) -> Record:
    return {
        "scenario": scenario,
        "label": label,
        "target": target,
        "status": status,  # "ok", "failed" or "skipped"
        "error": error,
        "params": params,
        "figures": figures,
        "seconds": round(seconds, 1),
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def to_json_line(record: Record) -> str:
    return json.dumps(record, sort_keys=False, default=str)


def table(records: Sequence[Record], targets: Sequence[str]) -> str:
    """A Markdown table: one row per figure, one column per target, then ratios.

    Ratios are "first target / other target" for the first target that has
    results (chatsvc when it ran); whether higher or lower is better is given
    per row.
    """
    present = [t for t in targets if any(r["target"] == t for r in records)]
    ran = [t for t in present if any(r["target"] == t and r["status"] == "ok" for r in records)]
    subject = ran[0] if ran else (present[0] if present else "")
    baselines = [t for t in present if t != subject]
    header = ["run", "figure", "better", *present, *(f"{subject}/{b}" for b in baselines)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    labels: list[tuple[str, str]] = []
    for record in records:
        key = (record["scenario"], record["label"])
        if key not in labels:
            labels.append(key)
    for scenario, label in labels:
        by_target = {
            r["target"]: r for r in records if r["scenario"] == scenario and r["label"] == label
        }
        problems = [
            f"{t}: {r['status']} ({r['error']})"
            for t, r in by_target.items()
            if r["status"] != "ok"
        ]
        for figure in SCENARIOS[scenario].figures:
            values = [_figure(by_target.get(t), figure.key) for t in present]
            if all(v is None for v in values):
                continue
            ratios = [
                _ratio(
                    _figure(by_target.get(subject), figure.key),
                    _figure(by_target.get(b), figure.key),
                )
                if figure.better
                else ""
                for b in baselines
            ]
            cells = [label, figure.key, figure.better, *map(_fmt, values), *ratios]
            lines.append("| " + " | ".join(cells) + " |")
        for problem in problems:
            cells = [label, "status", "", problem] + [""] * (len(header) - 4)
            lines.append("| " + " | ".join(_escape(c) for c in cells) + " |")
    return "\n".join(lines)


def _figure(record: Optional[Record], key: str) -> Any:
    if record is None or record["status"] != "ok":
        return None
    return record["figures"].get(key)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    return _escape(str(value))


def _ratio(subject: Any, baseline: Any) -> str:
    numbers = (int, float)
    if (
        isinstance(subject, bool)
        or isinstance(baseline, bool)
        or not isinstance(subject, numbers)
        or not isinstance(baseline, numbers)
        or baseline == 0
    ):
        return ""
    return f"{subject / baseline:.2f}x"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
