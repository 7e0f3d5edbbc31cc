"""Names the suites take from their options: an implementation looked up by name, and a
list of given names checked against the known ones.

Both the layer cases (bench/cases.py) and the model cases (bench/models/cases.py) use
these; they live here, below both, so that neither cases module imports the other back.
"""

from __future__ import annotations

import impls


def known_impl(name: str):
    """The implementation, or None when this version of impls has no such name (asv runs
    the current bench/ against old commits)."""
    return impls.get(name) if name in impls.names() else None


def check_names(kind: str, given, known) -> list[str]:
    """`given` when every name is in `known`, else ValueError naming the unknown ones."""
    given = list(given)
    unknown = [g for g in given if g not in known]
    if unknown:
        raise ValueError(f"{kind}: unknown {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    return given
