"""Reader-facing documents: README commands, links that resolve, schema descriptions as contracts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
#: phrases that cite past measurements; those belong in docs/decisions.md, not in a key's contract
EVIDENCE = re.compile(r"benchmarks/|\bmeasured (on|in)\b", re.IGNORECASE)


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, flags=re.M)}


def _descriptions(node, where):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                yield where, value
            else:
                yield from _descriptions(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _descriptions(value, f"{where}[{i}]")


def test_readme_first_commands_are_make_demo_then_make_test():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, flags=re.S)
    assert block, "README.md has no bash code block"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands[:2] == ["make demo", "make test"], commands


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc):
    """Every relative link of README.md and docs/*.md names an existing file (and heading)."""
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(target)
    assert not broken, f"{doc.relative_to(REPO)}: broken links {broken}"


def test_readme_headline_figures_link_their_records():
    """The README's headline table: five rows, each linking its JSON under benchmarks/results/."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Headline figures", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|") and not line.startswith("|---")][1:]
    assert len(rows) == 5, rows
    for row in rows:
        assert re.search(r"\]\(benchmarks/results/[\w.]+\.json\)", row), row


def test_decision_entries_are_dated():
    text = (REPO / "docs" / "decisions.md").read_text(encoding="utf-8")
    entries = re.findall(r"^### (.*)$", text, flags=re.M)
    assert entries
    undated = [e for e in entries if not re.search(r"\d{4}-\d{2}-\d{2}\s*$", e)]
    assert not undated, undated


def test_schema_descriptions_state_contracts_not_measurement_history():
    """Schema descriptions say what a key means (units, shapes, rules); evidence lives in docs/decisions.md."""
    found = []
    for schema in sorted((REPO / "src" / "bornfield" / "schemas").glob("*.yaml")):
        tree = yaml.safe_load(schema.read_text(encoding="utf-8"))
        for where, text in _descriptions(tree, schema.name):
            if EVIDENCE.search(text):
                found.append(f"{where}: {text[:80]}")
    assert not found, "\n".join(found)
