"""`benchmarks.serving_validation.replace_section`: a benchmark rewrites its own section of RESULTS.md and keeps the
dated notes beneath it."""

from __future__ import annotations

from pathlib import Path

from benchmarks.serving_validation import replace_section

OLD = """# moesim benchmark results

## 26. Before

text 26

## 27. The engines (issue 19)

Command: old run.

| a | b |
|---|---|
| 1 | 2 |

### 2026-12-06: what changed, and why

history one

### 2026-12-07: more

history two

## 28. After

text 28
"""


def test_a_section_keeps_its_dated_subsections(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(OLD)
    replace_section(path, 27, "## 27. The engines (issue 19)\n\nCommand: new run.\n\n| a | b |\n|---|---|\n| 3 | 4 |\n")
    new = path.read_text()
    assert "Command: new run." in new and "Command: old run." not in new and "| 3 | 4 |" in new
    # the history is kept, in order, after the new table, and the neighbours are untouched
    assert new.index("| 3 | 4 |") < new.index("### 2026-12-06") < new.index("history two") < new.index("## 28. After")
    assert "text 26" in new and "text 28" in new and new.count("## 27.") == 1
    # a subsection the new text carries itself is not doubled
    replace_section(path, 27, "## 27. The engines\n\nnew\n\n### 2026-12-07: more\n\nhistory two, rewritten\n")
    again = path.read_text()
    assert again.count("### 2026-12-07: more") == 1 and "history two, rewritten" in again
    assert "### 2026-12-06: what changed" in again
    # a section not there yet goes at the end
    replace_section(path, 40, "## 40. New\n\nfresh\n")
    assert path.read_text().rstrip().endswith("fresh")
