"""docs/reliability.md names only tests that exist: each row's test is how to rerun it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"


def defined_tests() -> dict[str, set[str]]:
    """Test function names by file (relative to the repository)."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        names = set(re.findall(r"^(?:async )?def (test_\w+)\(", path.read_text(), re.M))
        found[str(path.relative_to(ROOT))] = names
    return found


def named_in_doc(text: str) -> list[tuple[str | None, str]]:
    """(file or None, test name) for every backticked test reference in `text`."""
    refs: list[tuple[str | None, str]] = []
    for token in re.findall(r"`([^`]+)`", text):
        if m := re.fullmatch(r"(tests/[\w/]+\.py)::(test_\w+)", token):
            refs.append((m.group(1), m.group(2)))
        elif m := re.fullmatch(r"::?(test_\w+)|(test_\w+)", token):
            refs.append((None, m.group(1) or m.group(2)))
    return refs


def missing(text: str, tests: dict[str, set[str]]) -> list[str]:
    everywhere = set().union(*tests.values())
    return [
        f"{file}::{name}" if file else name
        for file, name in named_in_doc(text)
        if (name not in tests.get(file, set()) if file else name not in everywhere)
    ]


def test_every_test_the_reliability_table_names_exists() -> None:
    text = DOC.read_text()
    assert len(named_in_doc(text)) >= 25, "the table names its tests in backticks"
    assert missing(text, defined_tests()) == []


def test_the_check_finds_a_renamed_test() -> None:
    tests = {"tests/web/test_x.py": {"test_real"}}
    assert missing("`tests/web/test_x.py::test_gone` `test_real` `::test_other`", tests) == [
        "tests/web/test_x.py::test_gone",
        "test_other",
    ]
