"""The documents: every relative link resolves, the design's schema table is the schema's,
every top-level folder says what it is, and no file points outside the repository."""

import re
import subprocess
from pathlib import Path

import pytest

from bench import schema

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A mention of a Markdown file in prose or code ("see bench/README.md"), besides links.
MENTION = re.compile(r"(?<![\w/.\"'-])((?:[\w.-]+/)*[\w.-]+\.md)\b")


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", *patterns], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    return [REPO / p for p in out if (REPO / p).exists()]


MARKDOWN = _tracked("*.md")


@pytest.mark.parametrize("doc", MARKDOWN, ids=[str(p.relative_to(REPO)) for p in MARKDOWN])
def test_relative_links_resolve(doc):
    text = doc.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.exists(), f"{doc.relative_to(REPO)} links to {target}, which does not exist"
        assert REPO in path.parents or path == REPO, f"{doc.relative_to(REPO)} links outside the repository: {target}"


def test_every_mentioned_markdown_file_exists():
    """A document named in any text file (a docstring's "see docs/DESIGN.md") exists,
    relative to the repository or to the file naming it."""
    files = _tracked("*.py", "*.md", "*.ini", "*.toml", "*.sh", "*.json", ".ci/*")
    for f in files:
        if "fixtures" in f.parts:
            continue
        for name in MENTION.findall(f.read_text(encoding="utf-8", errors="replace")):
            if name in ("README.md",) or "*" in name:
                continue  # "each folder's README.md", a pattern
            assert (REPO / name).exists() or (f.parent / name).exists(), f"{f.relative_to(REPO)} mentions {name}"


def test_design_schema_table_is_generated_from_the_schema():
    design = (REPO / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    assert schema.with_table(design) == design, "run: python -m bench.schema docs/DESIGN.md"
    for field in schema.FIELDS:
        assert f"| `{field}` |" in design


def test_every_top_level_folder_has_a_readme():
    folders = {p.relative_to(REPO).parts[0] for p in _tracked() if len(p.relative_to(REPO).parts) > 1}
    for folder in sorted(folders - {".ci"}):
        assert (REPO / folder / "README.md").exists(), f"{folder}/ has no README.md"


def test_readme_keeps_its_two_commands():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for marker in ("main-command", "test-command"):
        block = re.search(rf"<!-- {marker} -->(.*?)<!-- /{marker} -->", text, re.S)
        assert block and block.group(1).strip(), f"README.md lacks its {marker} block"
