"""The docs hold together: docs/benchmarks.md is what the results JSON renders to, every relative
link points at a file (and heading) that exists, and the README stays a short user README."""

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "tests/benchmarks/results").glob("*.md"))]
README_MAX_LINES = 200

_FENCE = re.compile(r"^\s*```.*?^\s*```", re.DOTALL | re.MULTILINE)
_LINK = re.compile(r"\[(?:[^\[\]]|`[^`]*`)*\]\(([^()\s]+)\)")


def _write_docs():
    spec = importlib.util.spec_from_file_location("write_docs", ROOT / "tests/benchmarks/write_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmarks_page_is_generated_from_the_results_json():
    page = ROOT / "docs" / "benchmarks.md"
    assert page.exists() and page.read_text() == _write_docs().render(), (
        "docs/benchmarks.md is stale: run `python tests/benchmarks/write_docs.py` and commit the result")


def test_benchmarks_page_renders_unknown_fields_and_says_where_they_were_measured(tmp_path):
    (tmp_path / "new_bench.json").write_text(json.dumps({
        "benchmark": "new_bench", "device": "NVIDIA H200", "machine": {"cpus": 16, "platform": "Linux"},
        "speedup": 1.23456, "nested": {"deeper": {"x": 1, "y": [1, 2, 3]}}, "curve": list(range(20)),
        "runs": [{"seed": 0, "success": 0.5}, {"seed": 1, "success": 0.25, "extra": None}],
        "by_step": {"1": {"acc": 0.5}, "2": {"acc": 0.75}}, "command": "python new_bench.py"}))
    (tmp_path / "new_bench.md").write_text("# The story\n")
    (tmp_path / "handwritten.md").write_text("# A measurement without JSON\n")
    page = _write_docs().render(tmp_path)
    for expected in ["## new_bench", "Measured on: NVIDIA H200; 16 CPUs; Linux.", "Command: `python new_bench.py`",
                     "| `speedup` | 1.235 |", "| `nested.deeper.y` | 1, 2, 3 |", "20 values: first 0, last 19",
                     "| seed | success | extra |", "| 1 | 0.25 | null |", "| 2 | 0.75 |", "new_bench.md)",
                     "handwritten.md): A measurement without JSON"]:
        assert expected in page, expected


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1, -2 for repeats."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", _FENCE.sub("", markdown), re.MULTILINE):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


def _broken_links(page: Path) -> list[str]:
    text = page.read_text()
    broken = []
    for target in _LINK.findall(_FENCE.sub("", text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved.read_text()):
            shown = resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved.name
            broken.append(f"{target}: no heading #{anchor} in {shown}")
    return broken


def test_relative_links_point_at_files_and_headings_that_exist():
    broken = {str(p.relative_to(ROOT)): b for p in PAGES if (b := _broken_links(p))}
    assert not broken, f"broken links: {broken}"


def test_link_checker_catches_a_missing_file_and_a_missing_heading(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n## Two words\n\n[ok](#two-words) [gone](missing.md) [bad](#nowhere)\n"
                    "```bash\n[not a link](missing-too.md)\n```\n")
    assert _broken_links(page) == ["missing.md: no such file", "#nowhere: no heading #nowhere in page.md"]


def test_readme_is_a_short_user_readme():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, (f"README.md has {lines} lines (at most {README_MAX_LINES}): move reference "
                                      "to docs/ and experiment notes beside their JSON in tests/benchmarks/results/")
