"""The commit a run measured, wherever the tree came from (a checkout, or a copy on the GPU
machine). Imports nothing heavy: the GPU programme's driver reads it without torch."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

# Where the commit comes from when git cannot say it: this environment variable (it wins
# over git: a copied tree's .git can be stale, as on the GPU machine, whose copy's .git stood
# at an older commit in the first H200 pass), else git where the tree has its .git, else
# this file at the repository root, written before the copy (bench/gpu/fetch_wheels.sh).
# The GPU programme sets the variable from the file (bench/gpu/programme.py).
COMMIT_ENV = "FLATCONV_COMMIT"
COMMIT_FILE = ".commit"


def commit_file(root: Path) -> str | None:
    """The first word of ROOT/.commit, or None."""
    try:
        words = (Path(root) / COMMIT_FILE).read_text().split()
    except OSError:
        return None
    return words[0] if words else None


@functools.lru_cache(maxsize=None)
def git_commit(root: Path | None = None) -> str | None:
    """The commit the code was run from: $FLATCONV_COMMIT when set, else `git rev-parse
    HEAD` where the repository root has its .git, else the first word of ROOT/.commit;
    None when none says. A tree without .git never asks git (a repository above it is
    another's)."""
    given = os.environ.get(COMMIT_ENV, "").strip()
    if given:
        return given
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    if (root / ".git").exists():
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=root)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return commit_file(root)
