"""Write docs/benchmarks.md from the measured results in tests/benchmarks/results/*.json.

    python tests/benchmarks/write_docs.py

Generic on purpose, so a new benchmark or a new field shows up without touching this script: per
results file, a table of its scalar fields (nested ones by dotted name), a table for each list of
records (or dict of records), and a one-line summary of each long list. Where the JSON says where it
was measured (`machine`, `device`, `dtype`), the page says so. The story of an experiment (seed
tables, what was tried, why the settings) lives beside its JSON as `results/<name>.md` and is
linked. tests/test_docs.py fails when docs/benchmarks.md differs from `render()`.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tests" / "benchmarks" / "results"
OUT = ROOT / "docs" / "benchmarks.md"
COMMAND = "python tests/benchmarks/write_docs.py"

# Said once above a file's tables (where and how it ran), not inside them.
WHERE_KEYS = ("machine", "device", "dtype")
HEADER_KEYS = ("benchmark", "command", *WHERE_KEYS)
INLINE_FIELDS = 6  # a dict of at most this many scalars fits in one cell
MAX_FIELDS = 16  # a dict with more entries than this is counted, not listed
MAX_COLUMNS = 12  # a record table shows at most this many fields
SHORT_LIST = 8  # lists of scalars up to this long are written out; longer ones are summarised


def _link(path: Path) -> str:
    """A link from docs/ to `path`, named by its path in the repository."""
    name = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
    return f"[`{name}`]({Path(os.path.relpath(path, OUT.parent)).as_posix()})"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _number(value: int | float) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1e-3:
        return f"{value:.4g}"
    return f"{value:.2e}"


def _scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _number(value)
    text = str(value).replace("|", "\\|").replace("`", "'").replace("\n", " ")
    # Paths, commands and snake_case names read literally; plain words stay plain.
    return f"`{text}`" if any(c in text for c in "/\\_*<>[]=#") else text


def _list_summary(values: list) -> str:
    if not values:
        return "[]"
    if len(values) <= SHORT_LIST:
        return ", ".join(_scalar(v) for v in values)
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) == len(values):
        return (f"{len(values)} values: first {_scalar(values[0])}, last {_scalar(values[-1])}, "
                f"min {_scalar(min(numbers))}, max {_scalar(max(numbers))}, "
                f"mean {_scalar(sum(numbers) / len(numbers))}")
    return ", ".join(_scalar(v) for v in values[:3]) + f", ... ({len(values)} items)"


def _inline(mapping: dict) -> str:
    return ", ".join(f"{k}: {_scalar(v)}" for k, v in mapping.items())


def _cell(value) -> str:
    """One table cell: a scalar, a short dict of scalars, a list summary, or a count."""
    if _is_scalar(value):
        return _scalar(value)
    if isinstance(value, list) and all(_is_scalar(v) for v in value):
        return _list_summary(value)
    if isinstance(value, dict) and len(value) <= INLINE_FIELDS and all(_is_scalar(v) for v in value.values()):
        return _inline(value) if value else "{}"
    kind = "fields" if isinstance(value, dict) else "items"
    return f"{len(value)} {kind} (in the JSON)"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _record_table(records: list[tuple[str | None, dict]]) -> list[str]:
    """Records (dicts) as rows; `key` names each record where they come from a dict of records."""
    columns: list[str] = []
    for _, record in records:
        columns += [k for k in record if k not in columns]
    shown = columns[:MAX_COLUMNS]
    keyed = any(key is not None for key, _ in records)
    header = (["key"] if keyed else []) + [f"`{c}`" if "_" in c else c for c in shown]
    rows = [([_scalar(key)] if keyed else []) + [_cell(r[c]) if c in r else "" for c in shown] for key, r in records]
    lines = _table(header, rows)
    if len(columns) > len(shown):
        lines += ["", f"{len(columns) - len(shown)} more fields in the JSON: {', '.join(columns[len(shown):])}."]
    return lines


def _is_record_map(mapping: dict) -> bool:
    """A dict of dicts of scalars (by step, by difficulty): one table row per entry."""
    return len(mapping) >= 2 and all(
        isinstance(v, dict) and v and all(_is_scalar(x) for x in v.values()) for v in mapping.values())


def _collect(name: str, value, rows: list[list[str]], tables: list[tuple[str, list[str]]]) -> None:
    """Scalars (and short ones) go to `rows`; lists and dicts of records get tables of their own."""
    if (_is_scalar(value) or isinstance(value, list) and all(_is_scalar(v) for v in value)
            or isinstance(value, dict) and len(value) <= INLINE_FIELDS and all(_is_scalar(v) for v in value.values())):
        rows.append([f"`{name}`", _cell(value)])
    elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
        tables.append((name, _record_table([(None, v) for v in value])))
    elif isinstance(value, dict) and _is_record_map(value):
        tables.append((name, _record_table(list(value.items()))))
    elif isinstance(value, dict) and len(value) <= MAX_FIELDS:
        for key, inner in value.items():
            _collect(f"{name}.{key}", inner, rows, tables)
    else:
        rows.append([f"`{name}`", _cell(value)])


def _where(data: dict) -> str:
    """Where the numbers were measured, as far as the JSON says."""
    parts = []
    if data.get("device"):
        parts.append(str(data["device"]) + (f" ({data['dtype']})" if data.get("dtype") else ""))
    elif data.get("dtype"):
        parts.append(f"dtype {data['dtype']}")
    machine = data.get("machine")
    if isinstance(machine, dict):
        for key, value in machine.items():
            if key == "cpus":
                parts.append(f"{value} CPUs")
            elif key in ("platform", "note"):
                parts.append(str(value))
            else:
                parts.append(f"{key} {value}")
    elif machine:
        parts.append(str(machine))
    return "; ".join(parts) if parts else "the JSON does not say"


def _render_file(path: Path, data: dict) -> list[str]:
    lines = [f"### {path.name}", "", f"File: {_link(path)}.", ""]
    narrative = path.with_suffix(".md")
    if narrative.exists() and path.stem != data.get("benchmark"):
        lines += [f"Notes: {_link(narrative)}.", ""]
    lines += [f"Measured on: {_where(data)}.", ""]
    if data.get("command"):
        lines += [f"Command: `{str(data['command']).strip()}`", ""]
    rows: list[list[str]] = []
    tables: list[tuple[str, list[str]]] = []
    for key, value in data.items():
        if key not in HEADER_KEYS:
            _collect(key, value, rows, tables)
    if rows:
        lines += _table(["field", "value"], rows) + [""]
    for name, table in tables:
        lines += [f"`{name}`:", ""] + table + [""]
    return lines


def _load(path: Path) -> dict:
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {"results": data}


def render(results: Path = RESULTS) -> str:
    """docs/benchmarks.md, from every results JSON in `results` (and the notes beside them)."""
    files = sorted(results.glob("*.json"))
    groups: dict[str, list[tuple[Path, dict]]] = {}
    for path in files:
        data = _load(path)
        groups.setdefault(str(data.get("benchmark") or path.stem), []).append((path, data))
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python tests/benchmarks/write_docs.py`; do not edit by hand. -->",
        "",
        f"This page is generated from `tests/benchmarks/results/*.json` by `{COMMAND}`, and",
        "`tests/test_docs.py` fails when it is out of date: after a benchmark writes new results, run",
        "that command. Each file below says where it was measured, as its JSON records it (`machine`,",
        "`device`, `dtype`), and the command that measured it. What an experiment tried, its seeds and its",
        "reading are in the notes beside the JSON (`tests/benchmarks/results/<name>.md`), linked per benchmark.",
        "",
        "Success rates and shares are fractions (0.189 is 18.9%); `_s` fields are seconds.",
        "",
    ]
    lines += [f"- [{name}](#{_anchor(name)}) ({len(entries)} file{'s' if len(entries) > 1 else ''})"
              for name, entries in sorted(groups.items())]
    lines.append("")
    known = {path.stem for path in files} | set(groups)
    for name, entries in sorted(groups.items()):
        lines += [f"## {name}", ""]
        script = results.parent / f"{name}.py"
        narrative = results / f"{name}.md"
        if script.exists():
            lines += [f"Script: {_link(script)} (its docstring says what it measures and how).", ""]
        if narrative.exists():
            lines += [f"Notes: {_link(narrative)}.", ""]
        entries.sort(key=lambda e: (e[0].stem != name, e[0].stem))
        for path, data in entries:
            lines += _render_file(path, data)
    orphans = [p for p in sorted(results.glob("*.md")) if p.stem not in known]
    if orphans:
        lines += ["## Notes without a results JSON", "",
                  "Measurements written down by hand, with no benchmark script writing JSON for them yet:", ""]
        for path in orphans:
            title = next((t.lstrip("# ").strip() for t in path.read_text().splitlines() if t.startswith("#")),
                         path.stem)
            lines.append(f"- {_link(path)}: {title}")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
