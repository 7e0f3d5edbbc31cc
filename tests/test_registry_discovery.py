"""An implementation is one file under impls/: the registry discovers the package's
modules, each implementation declares what the lists are built from (devices, role,
summary, extras, compiles, fused), the asv grid and the GPU programme select from the
registry, and README.md's implementation table is generated from it.

The proof: a copy of the impls package with one new file, imported in a child process
(the test process's registry stays as it is), shows the new implementation in
impls.names(), in the asv grids, in the GPU programme's first step, and missing from
README.md's table until the generated table is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import impls
from impls import registry
from impls.base import Implementation

REPO = Path(__file__).resolve().parents[1]


def test_readme_table_is_the_registrys():
    said = registry.table_difference((REPO / "README.md").read_text(encoding="utf-8"))
    assert said is None, said


def test_every_module_of_impls_with_implementations_is_discovered():
    holders = sorted(
        f"impls.{(p.parent.name if p.name == '__init__.py' else p.stem)}"
        for p in [*REPO.glob("impls/*.py"), *REPO.glob("impls/*/__init__.py")]
        if "\nIMPLEMENTATIONS = " in p.read_text(encoding="utf-8"))
    assert registry.modules() == holders
    assert not set(registry.modules()) & {f"impls.{m}" for m in registry.CONTRACT_MODULES}
    assert set(impls.names()) >= set(registry._DISCOVERED) and len(registry._DISCOVERED) >= 12


def test_every_implementation_declares_what_the_table_and_the_lists_need():
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for name in registry._DISCOVERED:
        impl = impls.get(name)
        assert registry.problems(impl) == []
        assert set(impl.extras) <= extras, (name, impl.extras)
        if type(impl).compile_stats is not Implementation.compile_stats:
            assert impl.compiles, f"{name} counts compilations (compile_stats) but declares compiles = ''"
    assert {n for n in registry._DISCOVERED if impls.get(n).compiles} == {"jax", "onnxruntime", "openvino",
                                                                         "torch_compile", "triton_fused"}
    bad = type("Bad", (impls.get("torch").__class__,), {"name": "bad", "role": "fast", "summary": "a | b",
                                                         "compiles": "yes"})()
    said = registry.problems(bad)
    assert len(said) == 3 and all(s.startswith("bad: ") for s in said)


def test_the_table_check_names_the_rows_that_differ_and_the_command():
    doc = (REPO / "README.md").read_text(encoding="utf-8")
    start, end = registry.TABLE_MARKERS
    body = doc[doc.index(start):doc.index(end)]
    dropped = next(ln for ln in body.splitlines() if ln.startswith("| `naive` |"))
    said = registry.table_difference(doc.replace(dropped + "\n", ""))
    assert f"missing: {dropped}" in said and registry.TABLE_COMMAND in said
    said = registry.table_difference(doc.replace(dropped, dropped.replace("simple", "peer")))
    assert "not in the registry: | `naive` | cpu | peer |" in said


NEW_FILE = '''
"""A new implementation: this file and nothing else."""
from impls.composed import TorchComposed


class TorchTwin(TorchComposed):
    name = "torch_twin"
    summary = "a twin of `torch`, added by a test as one new file"


IMPLEMENTATIONS = [TorchTwin()]
'''

CHILD = '''
import contextlib, io, json, sys
from pathlib import Path
import impls
from impls import registry
from bench import asv_support, cases
from bench.gpu import facts, programme

lines = io.StringIO()
with contextlib.redirect_stdout(lines):
    facts.print_implementations()
table = programme.read_implementations(lines.getvalue())
readme = (Path(sys.argv[1]) / "README.md").read_text(encoding="utf-8")
print(json.dumps({
    "package": impls.__file__, "names": impls.names(), "modules": registry.modules(),
    "asv_grid": cases.asv_grid()[1], "asv_ci": asv_support.grid()[1],
    "first_step": programme.select(programme.FIRST_STEPS[0].select, table, "cuda"),
    "rehearsed_first_step": programme.select(programme.FIRST_STEPS[0].select, table, "cpu", rehearse=True),
    "readme": registry.table_difference(readme),
    "generated": registry.table_difference(registry.with_table(readme)),
}))
'''


def test_a_new_implementation_is_one_new_file(tmp_path):
    package = tmp_path / "impls"
    shutil.copytree(REPO / "impls", package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "build"))
    (package / "torch_twin.py").write_text(textwrap.dedent(NEW_FILE))
    (package / "twin_helpers.py").write_text("HELPER = 1  # no IMPLEMENTATIONS: a helper, passed over\n")
    (package / "_scratch.py").write_text("raise RuntimeError('a private module is never imported')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]), "FLATCONV_OPENMP_NO_BUILD": "1"}
    env.pop("FLATCONV_IMPLS", None)
    env.pop("BENCH_ASV_IMPLS", None)
    env.pop("BENCH_ASV_PRESET", None)
    out = subprocess.run([sys.executable, "-c", CHILD, str(REPO)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(got["package"]).resolve() == (package / "__init__.py").resolve()  # the copy, not the repository
    assert "torch_twin" in got["names"] and "impls.torch_twin" in got["modules"]
    assert "impls.twin_helpers" not in got["modules"]
    assert set(got["names"]) - set(impls.names()) == {"torch_twin"}
    assert "torch_twin" in got["asv_grid"] and "torch_twin" in got["asv_ci"]  # a CPU peer needing no extra
    assert "torch_twin" in got["first_step"]  # on CUDA, compiles nothing
    assert "torch_twin" not in got["rehearsed_first_step"]
    assert "missing: | `torch_twin` | cpu, cuda | peer |" in got["readme"], got["readme"]
    assert registry.TABLE_COMMAND in got["readme"]
    assert got["generated"] is None


def test_the_table_command_prints_the_table():
    out = subprocess.run([sys.executable, "-m", "impls.registry"], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "FLATCONV_OPENMP_NO_BUILD": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == registry.markdown_table()
