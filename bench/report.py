"""Rendering a run as Markdown: the machine, the targets, then each section's table and notes."""

from __future__ import annotations

from collections.abc import Sequence

from bench.common import Section


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [len(c) for c in columns]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [
        line(columns),
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        *(line(r) for r in rows),
    ]


def render(
    machine: Sequence[tuple[str, str]],
    sections: Sequence[Section],
    *,
    quick: bool,
    total_seconds: float,
    load_at_end: str,
    command: str,
) -> str:
    out = ["# tracker-agent benchmark results", ""]
    out.append(
        f"Written by `{command}` ({'quick smoke run, small counts' if quick else 'full run'}) "
        f"in {total_seconds:.0f} s. Every figure is measured next to its baseline in the same "
        "run; ratio = tracker-agent / baseline. Benchmarks print numbers; they assert nothing."
    )
    out += ["", "## Machine", ""]
    out += _table(["", ""], [*machine, ("load average at end", load_at_end)])
    targets = [t for s in sections for t in s.targets]
    if targets:
        out += ["", "## Targets", ""]
        rows = [[t.name, t.goal, t.measured, "met" if t.met else "MISSED"] for t in targets]
        out += _table(["target", "goal", "measured", "result"], rows)
    for section in sections:
        out += ["", f"## {section.title}", ""]
        out += _table(section.columns, section.rows)
        if section.notes:
            out.append("")
            out += [f"- {note}" for note in section.notes]
        stolen = "" if section.stolen is None else f"; CPU stolen by the host {section.stolen:.0%}"
        out.append(f"- (section ran {section.seconds:.0f} s{stolen})")
    return "\n".join(out) + "\n"
