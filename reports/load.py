"""Readers: results files -> one tidy long DataFrame (one row per measured case).

Inputs (see reports/README.md):
- ``*.jsonl``: one harness record per line; a truncated last line (an interrupted run)
  is ignored.
- ``*.json`` from pytest-benchmark (``--benchmark-json``): the record is each
  benchmark's ``extra_info``; time statistics missing from it are filled from ``stats``.
- ``*.models.json``: model-level accuracy results (kept apart, see `load_models`).
- an asv results folder (``<machine>/<hash>-<env>.json`` + ``benchmarks.json``), read
  with asv's own code (see `load_asv`).

Every column may be missing and every row may be partial: the readers never fail on
content, they warn and skip what they cannot read.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench import schema
from impls.shapes import LayerShape

from bench import intervals

REPO = Path(__file__).resolve().parent.parent

# The record's fields are bench/schema.py's; the machine's keys become machine_<key>.
RECORD_COLUMNS = [f for f in schema.FIELDS if f != "machine"]
NUMERIC_COLUMNS = list(schema.NUMERIC_FIELDS)
MACHINE_COLUMNS = [f"machine_{k}" for k in schema.MACHINE_FIELDS]
# machine keys the report computes with (the others are shown as recorded)
MACHINE_NUMERIC = ["copy_gbps", "sgemm_gflops", "threads", "cpu_cores_physical", "cpu_cores_logical",
                   "cpu_freq_mhz", "memory_bytes", "gpu_memory_bytes", "torch_threads", "timer_overhead_s",
                   "load_avg_1min"]
# pytest-benchmark "stats" key -> record key
STATS_MAP = {
    "median": "time_median", "iqr": "time_iqr", "q1": "time_q1", "q3": "time_q3",
    "mean": "time_mean", "min": "time_min", "stddev": "time_stddev", "rounds": "rounds",
}
ASV_COLUMNS = ["machine", "commit", "date", "env", "benchmark", "type", "unit", "params", "value", "q25",
               "q75", "ci99_low", "ci99_high", "samples"]


@dataclasses.dataclass
class Inputs:
    """Everything read from the inputs: the tidy table and the side channels."""

    records: pd.DataFrame
    asv: pd.DataFrame
    asv_machines: list[dict]
    models: list[dict]
    sources: list[str]
    problems: list[str]
    # results file -> the run ids of its records (record files only), and which of those
    # files are a user's own runs (`is_user_run`): the "vs-reference" section's inputs
    run_ids: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    user_runs: list[str] = dataclasses.field(default_factory=list)


def _warn(problems: list[str], message: str) -> None:
    problems.append(message)


def _layer_shape(row) -> LayerShape | None:
    try:
        fields = {f: int(row[f]) for f in ("batch", "in_channels", "out_channels", "height",
                                            "width", "kernel_size")}
        padding = row.get("padding")
        fields["padding"] = 0 if padding is None or _isnan(padding) else int(padding)
        return LayerShape(**fields)
    except (KeyError, TypeError, ValueError):
        return None


def _isnan(value) -> bool:
    try:
        return value is None or math.isnan(float(value))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------
# Readers for one file each.
def _flatten(record: dict) -> dict:
    """A harness record, in the current schema's terms, as a flat row: the machine dict
    becomes machine_<key> columns, other nested fields JSON text."""
    record = schema.upgrade(record)
    row = {k: v for k, v in record.items() if k != "machine" and not isinstance(v, (dict, list))}
    machine = record.get("machine")
    if isinstance(machine, dict):
        for key, value in machine.items():
            if isinstance(value, (dict, list)):
                value = json.dumps(value, sort_keys=True)
            row[f"machine_{key}"] = value
    for key, value in record.items():  # nested extras other than machine: keep as JSON text
        if key != "machine" and isinstance(value, (dict, list)):
            row[key] = json.dumps(value, sort_keys=True)
    return row


def read_jsonl(path: Path, problems: list[str]) -> list[dict]:
    rows = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                _warn(problems, f"{path}: ignored a truncated last line (interrupted run?)")
            else:
                _warn(problems, f"{path}:{number}: not JSON, line ignored")
            continue
        if isinstance(record, dict):
            row = _flatten(record)
            row["source"] = str(path)
            rows.append(row)
    return rows


def _pytest_machine(info: dict) -> dict:
    """pytest-benchmark's machine_info in the record's machine vocabulary (fallback only)."""
    cpu = info.get("cpu") or {}
    return {
        "host": info.get("node"),
        "cpu_model": cpu.get("brand_raw") or info.get("processor"),
        "cpu_cores_logical": cpu.get("count"),
        "platform": " ".join(str(x) for x in (info.get("system"), info.get("release")) if x) or None,
        "python": info.get("python_version"),
    }


def read_pytest_benchmark(path: Path, data: dict, problems: list[str]) -> list[dict]:
    rows = []
    machine = _pytest_machine(data.get("machine_info") or {})
    commit = (data.get("commit_info") or {}).get("id")
    for bench in data.get("benchmarks") or []:
        if not isinstance(bench, dict):
            continue
        record = dict(bench.get("extra_info") or {})
        stats = bench.get("stats") or {}
        for key, column in STATS_MAP.items():
            if record.get(column) is None and stats.get(key) is not None:
                record[column] = stats[key]
        if record.get("time_samples") is None and isinstance(stats.get("data"), list):
            record["time_samples"] = stats["data"]  # --benchmark-save-data keeps every round
        record.setdefault("case", bench.get("fullname") or bench.get("name"))
        record.setdefault("run_id", f"{path.stem}:{data.get('datetime', '')}")
        record.setdefault("commit", commit)
        record.setdefault("timestamp", data.get("datetime"))
        if record.get("status") is None:
            record["status"] = "ok" if record.get("time_median") is not None else "failed"
        if not isinstance(record.get("machine"), dict):
            # bench/conftest.py stores the harness's machine record per device in machine_info
            per_device = ((data.get("machine_info") or {}).get("flatconv") or {}).get(record.get("device"))
            record["machine"] = per_device if isinstance(per_device, dict) else machine
        row = _flatten(record)
        row["source"] = str(path)
        rows.append(row)
    if not rows:
        _warn(problems, f"{path}: pytest-benchmark file without benchmarks")
    return rows


def load_models(path: Path, problems: list[str]) -> dict | None:
    """A ``*.models.json`` file (bench/models/: `python -m bench.models digits --json`):
    {"baseline": {...}, "flattened": {...}, optional "filters": "png path"}; the filters
    path is resolved against the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        _warn(problems, f"{path}: unreadable models file ({exc})")
        return None
    if not isinstance(data, dict):
        _warn(problems, f"{path}: models file is not a JSON object")
        return None
    data = dict(data)
    data["_path"] = str(path)  # the file it came from ("source" may be the producer's own key)
    filters = data.get("filters")
    if isinstance(filters, str):
        candidate = Path(filters)
        if not candidate.is_absolute():
            candidate = path.parent / candidate
        data["filters"] = str(candidate) if candidate.exists() else None
    return data


# --------------------------------------------------------------------------------------
# asv results, through asv's own reading code.
def is_asv_results_dir(path: Path) -> bool:
    if not path.is_dir():
        return False
    if (path / "benchmarks.json").exists():
        return True
    return any((child / "machine.json").exists() for child in path.iterdir() if child.is_dir())


def load_asv(results_dir: Path, problems: list[str]) -> tuple[list[dict], list[dict]]:
    """Rows (ASV_COLUMNS: machine, commit, date, benchmark, params, value, its quartiles
    and 99% interval, the raw samples when asv ran with --record-samples) and the
    machine.json contents, read with ``asv.results.Results.load`` and ``asv.util.load_json``."""
    try:
        from asv import results as asv_results
        from asv import util as asv_util
    except ImportError:
        _warn(problems, f"{results_dir}: asv is not installed, so its results are not read "
                        "(pip install asv)")
        return [], []
    benchmarks = {}
    bench_file = results_dir / "benchmarks.json"
    if bench_file.exists():
        try:
            benchmarks = asv_util.load_json(str(bench_file), api_version=2)
        except Exception as exc:  # noqa: BLE001 - asv raises UserError and OSError
            _warn(problems, f"{bench_file}: {exc}")
    rows, machines = [], []
    for machine_dir in sorted(p for p in results_dir.iterdir() if p.is_dir()):
        machine_json = machine_dir / "machine.json"
        if machine_json.exists():
            try:
                machines.append(asv_util.load_json(str(machine_json), api_version=1))
            except Exception as exc:  # noqa: BLE001
                _warn(problems, f"{machine_json}: {exc}")
        for path in sorted(machine_dir.glob("*.json")):
            if path.name in ("machine.json", "benchmarks.json"):
                continue
            try:
                result = asv_results.Results.load(str(path))
            except Exception as exc:  # noqa: BLE001
                _warn(problems, f"{path}: not an asv results file ({exc})")
                continue
            rows.extend(_asv_rows(result, benchmarks, machine_dir.name))
    return rows, machines


def _asv_rows(result, benchmarks: dict, machine_name: str) -> list[dict]:
    import itertools

    rows = []
    machine = (result.params or {}).get("machine") or machine_name
    for key in sorted(result.get_all_result_keys()):
        info = benchmarks.get(key) or {}
        try:  # asv's own accessors; an unparameterized benchmark has params [] and one value
            params = result.get_result_params(key) or []
            combos = list(itertools.product(*params))
            values = result.get_result_value(key, params)
            stats = result.get_result_stats(key, params)
            samples = result.get_result_samples(key, params)
        except Exception:  # noqa: BLE001 - a malformed entry loses only itself
            continue
        names = info.get("param_names") or [f"p{i}" for i in range(len(params))]
        for combo, value, stat, sample in zip(combos, values, stats or [None] * len(combos),
                                              samples or [None] * len(combos)):
            stat = stat or {}
            rows.append({
                "machine": machine,
                "commit": result.commit_hash,
                "date": pd.to_datetime(result.date, unit="ms", utc=True) if result.date else pd.NaT,
                "env": result.env_name,
                "benchmark": key,
                "type": info.get("type") or key.rsplit(".", 1)[-1].split("_", 1)[0],
                "unit": info.get("unit"),
                "params": ", ".join(f"{n}={str(v).strip(chr(39))}" for n, v in zip(names, combo)),
                "value": value if value is not None and not _isnan(value) else math.nan,
                "q25": stat.get("q_25"),
                "q75": stat.get("q_75"),
                "ci99_low": stat.get("ci_99_a"),
                "ci99_high": stat.get("ci_99_b"),
                "samples": list(sample) if sample else None,
            })
    return rows


# --------------------------------------------------------------------------------------
# Discovery and the tidy table.
RESULTS_DIR = REPO / "reports" / "results"  # committed reference sweeps (see its README)
RUNS_DIR = REPO / "reports" / "runs"  # a user's own sweeps (tox -e bench), git-ignored


def is_user_run(path: Path | str) -> bool:
    """A results file is a user's own run when the nearest of its enclosing folders named
    `runs` or `results` is `runs` (reports/runs/, where tox -e bench writes); anything else
    (reports/results/, a file given by name) is a reference the runs may be set beside."""
    for parent in Path(path).parents:
        if parent.name in (RUNS_DIR.name, RESULTS_DIR.name):
            return parent.name == RUNS_DIR.name
    return False


def default_inputs() -> list[Path]:
    inputs = [RESULTS_DIR] + ([RUNS_DIR] if RUNS_DIR.is_dir() else [])
    asv_dir = REPO / ".asv" / "results"
    conf = REPO / "asv.conf.json"
    if conf.exists():
        try:
            from asv import util as asv_util

            configured = asv_util.load_json(str(conf), js_comments=True).get("results_dir")
            if configured:
                asv_dir = (REPO / configured).resolve()
        except Exception:  # noqa: BLE001 - keep the default folder
            pass
    if asv_dir.exists():
        inputs.append(asv_dir)
    return inputs


def _expand(inputs: list[Path], problems: list[str]) -> tuple[list[Path], list[Path]]:
    """Files to read, and asv results folders."""
    files, asv_dirs = [], []
    for path in inputs:
        path = Path(path)
        if not path.exists():
            _warn(problems, f"{path}: no such file or folder")
        elif is_asv_results_dir(path):
            asv_dirs.append(path)
        elif path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and child.suffix in (".json", ".jsonl"):
                    files.append(child)
                elif child.is_dir() and is_asv_results_dir(child):
                    asv_dirs.append(child)
            # files inside an asv folder found by rglob belong to that folder
            files = [f for f in files if not any(d in f.parents for d in asv_dirs)]
        else:
            files.append(path)
    return list(dict.fromkeys(files)), list(dict.fromkeys(asv_dirs))


def load(inputs: list[Path] | None = None) -> Inputs:
    problems: list[str] = []
    inputs = default_inputs() if inputs is None else [Path(p) for p in inputs]
    files, asv_dirs = _expand(inputs, problems)
    rows, models, sources = [], [], []
    run_ids: dict[str, list[str]] = {}
    for path in files:
        if path.name.endswith(".models.json"):
            model = load_models(path, problems)
            if model is not None:
                models.append(model)
                sources.append(str(path))
            continue
        try:
            if path.suffix == ".jsonl":
                new = read_jsonl(path, problems)
            else:
                data = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(data, dict) and "benchmarks" in data:
                    new = read_pytest_benchmark(path, data, problems)
                else:
                    _warn(problems, f"{path}: not a results file this report knows, ignored")
                    continue
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            _warn(problems, f"{path}: unreadable ({exc})")
            continue
        if new:
            sources.append(str(path))
            # as tidy() names runs: a record without a run id is its file's own run
            run_ids[str(path)] = sorted({str(path) if _isnan(r.get("run_id")) else str(r["run_id"]) for r in new})
        rows.extend(new)
    asv_rows, asv_machines = [], []
    for folder in asv_dirs:
        new, machines = load_asv(folder, problems)
        asv_rows.extend(new)
        asv_machines.extend(machines)
        if new:
            sources.append(str(folder))
    return Inputs(
        records=tidy(pd.DataFrame(rows)),
        asv=pd.DataFrame(asv_rows, columns=ASV_COLUMNS),
        asv_machines=asv_machines,
        models=models,
        sources=sources,
        problems=problems,
        run_ids=run_ids,
        user_runs=[s for s in run_ids if is_user_run(s)],
    )


def machine_name(host, cpu_isa=None, family_model=None) -> str:
    """A machine as the report names it: its host, and what tells machines of one host
    name apart (virtual machines are often all called "vm"): the instruction set and the
    CPU's family/model."""
    name = str(host) if isinstance(host, str) and host else "unknown machine"
    tags = [str(t) for t in (cpu_isa, family_model) if isinstance(t, str) and t]
    return f"{name} ({', '.join(tags)})" if tags else name


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Deduplicate, fill what can be derived, and add the comparison columns."""
    missing = [c for c in dict.fromkeys(RECORD_COLUMNS + MACHINE_COLUMNS + ["source"]) if c not in df.columns]
    if missing:  # at once: one column at a time fragments the frame (pandas warns)
        df = pd.concat([df, pd.DataFrame(None, index=df.index, columns=missing, dtype=object)], axis=1)
    df = df.copy()
    for column in NUMERIC_COLUMNS + [f"machine_{k}" for k in MACHINE_NUMERIC]:
        df[column] = pd.to_numeric(df[column], errors="coerce")
    # upgrade() gave every record a baseline; a current one that left it out may still say so by its role
    df["baseline"] = [bool(b) if isinstance(b, (bool, np.bool_)) else r == "baseline"
                      for b, r in zip(df["baseline"], df["role"])]
    if df.empty:
        return _derived(df)

    # Identity: a run without an id is its own source file; a case without an id is
    # named from its fields.
    df["run_id"] = df["run_id"].where(df["run_id"].notna(), df["source"]).astype(str)
    fields = ["impl", "device", "table", "shape", "dtype", "direction"]
    named = df[fields].apply(lambda col: col.map(str)).agg("/".join, axis=1)
    df["case"] = df["case"].where(df["case"].notna(), named).astype(str)
    # The same case read twice: its latest attempt (a case re-measured at the end of its run
    # is written again), then of one attempt (a .jsonl and a .json of one run) the copy with
    # most fields.
    df["_attempt"] = df["attempt"].fillna(1)
    df["_filled"] = df.notna().sum(axis=1)
    df = (df.sort_values(["_attempt", "_filled"], ascending=False, kind="stable")
            .drop_duplicates(["run_id", "case"]).drop(columns=["_attempt", "_filled"]))

    # Machine metadata: copy within a run to records that lack it.
    machine_cols = [c for c in df.columns if c.startswith("machine_")]
    df[machine_cols] = df.groupby("run_id")[machine_cols].transform(lambda s: s.ffill().bfill())
    df["machine"] = [machine_name(h, i, fm) for h, i, fm in
                     zip(df["machine_host"], df["machine_cpu_isa"], df["machine_cpu_family_model"])]
    df["status"] = df["status"].fillna(
        pd.Series(["ok" if t == t else "failed" for t in df["time_median"]], index=df.index))
    df["device"] = df["device"].fillna("unknown")
    return _derived(df)


DERIVED_COLUMNS = ["layer", "layer_flops", "is_flat", "ceiling_copy_gbps", "ceiling_dram_gbps", "ceiling_copy_levels",
                   "ceiling_copy_note", "ceiling_sgemm_gflops", "ceiling_fma_peak_gflops", "ceiling_note", "roofline_gflops", "baseline_impl", "baseline_time",
                   "baseline_peak_bytes", "speedup", "speedup_low", "speedup_high", "speedup_method",
                   "speedup_pi_low", "speedup_pi_high"]


def _derived(df: pd.DataFrame) -> pd.DataFrame:
    """FLOPs, bytes and parameters from the shape (when missing), the rates against the
    machine's ceilings (`_ceilings`), and the comparison with the baseline of the same run."""
    # added at once: one column at a time fragments a frame that already holds every record field
    missing = [c for c in DERIVED_COLUMNS + ["machine"] if c not in df.columns]
    df = pd.concat([df, pd.DataFrame({c: [None] * len(df) for c in missing}, index=df.index, dtype=object)], axis=1)
    if df.empty:
        return df
    df["layer"] = [
        f"{t}:{s}" if isinstance(t, str) and isinstance(s, str) else (s if isinstance(s, str) else "?")
        for t, s in zip(df["table"], df["shape"])
    ]
    df["is_flat"] = ~df["baseline"].astype(bool)
    layer_flops = []
    for index, row in df.iterrows():
        shape = _layer_shape(row)
        # The layer's size, the same for every implementation: the dense layer's forward FLOPs.
        layer_flops.append(shape.flops("forward", "dense") if shape is not None else math.nan)
        if shape is None or not isinstance(row["direction"], str):
            continue
        kind = "dense" if row["baseline"] else "flat"
        try:
            flops, nbytes = shape.work(row["direction"], kind, schema.ITEMSIZE.get(str(row["dtype"]), 4))
        except ValueError:  # a direction impls.shapes does not know
            continue
        if _isnan(row["flops"]) and flops is not None:
            df.at[index, "flops"] = flops
        if _isnan(row["bytes"]) and nbytes is not None:
            df.at[index, "bytes"] = nbytes
        if _isnan(row["params"]) and not row["direction"].startswith("stage:"):
            df.at[index, "params"] = shape.params(kind)
    df["layer_flops"] = layer_flops

    # what the shape and the time allow is computed; what they do not is kept as recorded
    gflops = pd.Series(schema.rates(df["flops"], df["bytes"], df["time_median"])["gflops"], index=df.index)
    df["gflops"] = gflops.replace([np.inf, -np.inf], np.nan).where(gflops.notna(), df["gflops"])
    df = _ceilings(df)
    derived = schema.rates(df["flops"], df["bytes"], df["time_median"], df["ceiling_copy_gbps"],
                           df["ceiling_sgemm_gflops"])
    for column, values in derived.items():
        values = pd.Series(values, index=df.index).replace([np.inf, -np.inf], np.nan)
        df[column] = values if column == "roofline_gflops" else values.where(values.notna(), df[column])
    return _speedups(df)


def _ceilings(df: pd.DataFrame) -> pd.DataFrame:
    """The roofline's ceilings of each row. Copy bandwidth: that of a copy of the case's
    working set (`ceiling_copy_gbps`, bench.schema.copy_ceiling over the run's copy levels;
    records without levels: the DRAM copy), and the DRAM copy (`ceiling_dram_gbps`), each
    the best its run measured (each record carries the best so far, so the largest over the
    run's records), per device and thread count. Compute: the best large-GEMM rate seen on the machine at that device and
    thread count, over every run loaded (one run's few GEMMs can all fall in a slow stretch
    of a shared machine: 78-121 GFLOP/s in one run of a 2-core Zen 3 VM), and never below
    a measured case: where a case still ran faster, its rate is the ceiling and
    `ceiling_note` says which. The baseline's rate does not raise it: its FLOPs are the
    direct count, which a Winograd or FFT algorithm undercuts (its `roofline_note` says
    so). Beside them `ceiling_fma_peak_gflops`, the instruction set's FMA peak the machine
    record estimates, at the same thread count."""
    threads = df["machine_threads"].fillna(-1)
    df = _copy_ceilings(df, [df["run_id"], df["device"], threads])
    key = pd.DataFrame({"machine": df["machine"].fillna("unknown machine"), "device": df["device"], "threads": threads})
    group = [key[c] for c in key]
    measured = df.groupby(group)["machine_sgemm_gflops"].transform("max")
    fma = pd.to_numeric(df.get("machine_fma_peak_gflops", pd.Series(math.nan, index=df.index)), errors="coerce")
    df["ceiling_fma_peak_gflops"] = fma.groupby(group).transform("max")
    # the fastest case of each group whose rate may raise the ceiling
    able = (df["status"] == "ok") & ~df["baseline"].astype(bool) & (df["gflops"] > 0)
    fastest = (pd.concat([key, df[["gflops", "impl", "direction", "layer"]]], axis=1)[able]
               .sort_values("gflops", ascending=False, kind="stable").drop_duplicates(list(key)))
    fastest = key.merge(fastest, on=list(key), how="left").set_index(df.index)
    raised = measured.notna() & (fastest["gflops"] > measured)
    df["ceiling_sgemm_gflops"] = measured.where(~raised, fastest["gflops"])
    df["ceiling_note"] = [f"raised to {f['impl']} {f['direction']} {f['layer']}'s rate: no GEMM measured faster"
                          if r else None for r, f in zip(raised, fastest.to_dict("records"))]
    return df


def _copy_ceilings(df: pd.DataFrame, run: list[pd.Series]) -> pd.DataFrame:
    """Each row's bandwidth ceiling: the copy of a working set of its size (schema.copy_level
    over the best copy levels of its run; a run without levels has one, its DRAM copy), and
    never below a case of the run held to the same level: where one moved its bytes faster,
    its GB/s is that level's ceiling and `ceiling_copy_note` says which."""
    dram = df.groupby(run)["machine_copy_gbps"].transform("max")
    column = df.get("machine_copy_levels", pd.Series(None, index=df.index, dtype=object))
    merged = column.groupby(run, dropna=False).transform(
        lambda s: json.dumps(schema.best_copy_levels(v for v in s if isinstance(v, str))))
    levels = [lv if schema.best_copy_levels([lv]) else (json.dumps([{"bytes": 0, "gbps": d}]) if d > 0 else "[]")
              for lv, d in zip(merged, dram.fillna(0))]
    chosen = [schema.copy_level(lv, b) for lv, b in zip(levels, df["bytes"])]
    level_bytes = pd.Series([c["bytes"] if c else math.nan for c in chosen], index=df.index, dtype=float)
    measured = pd.Series([c["gbps"] if c else math.nan for c in chosen], index=df.index, dtype=float)
    gbps = (df["bytes"] / df["time_median"] / 1e9).to_numpy(dtype=float)
    able = ((df["status"] == "ok").to_numpy() & (gbps > 0) & level_bytes.notna().to_numpy())
    keys = list(zip(*(g.tolist() for g in run), level_bytes.tolist()))
    holder: dict = {}  # the position of the fastest case of each run and level
    for pos in sorted(np.flatnonzero(able), key=lambda p: -gbps[p]):
        holder.setdefault(keys[pos], pos)
    ceiling, notes = measured.to_numpy(copy=True), [None] * len(df)
    impl, direction, layer = df["impl"].tolist(), df["direction"].tolist(), df["layer"].tolist()
    for pos, key in enumerate(keys):
        top = holder.get(key)
        if top is not None and gbps[top] > ceiling[pos] * (1 + 1e-9):
            ceiling[pos] = gbps[top]
            notes[pos] = (f"raised to {impl[top]} {direction[top]} {layer[top]}'s {gbps[top]:,.1f} GB/s: no copy at "
                          f"its level ({key[-1] / 2**20:g} MiB) measured faster")
    df["ceiling_dram_gbps"] = dram
    df["ceiling_copy_levels"] = levels
    df["ceiling_copy_gbps"] = pd.Series(ceiling, index=df.index)
    df["ceiling_copy_note"] = pd.Series(notes, index=df.index, dtype=object)
    return df


def _speedups(df: pd.DataFrame) -> pd.DataFrame:
    """speedup = the baseline's time / the case's, for the same run, device, layer, dtype and
    direction (the fastest baseline if a run has several), with its 95% interval
    (bench.intervals.ratio: by rounds or pass by pass when the two were timed in the same
    interleaved passes, else median / median) and, from rounds, its 95% prediction
    interval (where a rerun's speedup is expected to fall)."""
    key = ["run_id", "device", "table", "shape", "dtype", "direction"]
    carried = ["time_samples", "time_ci95_low", "time_ci95_high", "time_iqr", "rounds", "time_pass_medians",
               "interleave_group"]
    base = df[(df["status"] == "ok") & df["baseline"] & df["time_median"].notna()]
    base = base.sort_values("time_median", kind="stable").drop_duplicates(key)
    base = base[key + ["impl", "case", "time_median", "peak_bytes"] + carried].rename(columns={
        "impl": "baseline_impl", "case": "bl_case", "time_median": "baseline_time",
        "peak_bytes": "baseline_peak_bytes", **{c: f"bl_{c}" for c in carried}})
    df = df.drop(columns=["baseline_impl", "baseline_time", "baseline_peak_bytes"]).merge(base, on=key, how="left")
    df["speedup"] = df["baseline_time"] / df["time_median"]
    value, low, high, method, pi_low, pi_high = [], [], [], [], [], []
    for row in df[["status", "speedup", "case", "bl_case", "time_median", "baseline_time"] + carried
                  + [f"bl_{c}" for c in carried]].to_dict("records"):
        v = row["speedup"]
        pl = ph = math.nan
        if row["status"] != "ok" or not v == v:
            lo, hi, how = math.nan, math.nan, None
        elif row["case"] == row["bl_case"]:  # the baseline itself
            lo, hi, how = 1.0, 1.0, "itself"
        else:
            baseline = {c: row[f"bl_{c}"] for c in carried} | {"time_median": row["baseline_time"]}
            v, lo, hi, how = intervals.ratio(baseline, row)
            pl, ph = intervals.prediction(baseline, row)
        value.append(v)
        low.append(lo)
        high.append(hi)
        method.append(how)
        pi_low.append(pl)
        pi_high.append(ph)
    df["speedup"], df["speedup_low"], df["speedup_high"], df["speedup_method"] = value, low, high, method
    df["speedup_pi_low"], df["speedup_pi_high"] = pi_low, pi_high
    return df.drop(columns=["bl_case"] + [f"bl_{c}" for c in carried])


def latest(df: pd.DataFrame) -> pd.DataFrame:
    """Only ok rows, and for each machine, device, layer, dtype and direction only the rows
    of the newest run (by timestamp) that measured it: every ratio the figures and the
    summary show is then one between cases of one run."""
    ok = df[df["status"] == "ok"].copy()
    if ok.empty:
        return ok
    ok["_ts"] = pd.to_datetime(ok["timestamp"], errors="coerce", utc=True, format="ISO8601")
    # one text key per layer and direction (a missing field is a value of its own)
    fields = ok[["machine", "device", "table", "shape", "dtype", "direction"]]
    ok["_layer"] = fields.apply(lambda c: c.map(str)).agg("|".join, axis=1)
    runs = ok.groupby(["_layer", "run_id"])["_ts"].max().reset_index()
    runs = runs.sort_values(["_ts", "run_id"], na_position="first", kind="stable")
    runs = runs.drop_duplicates("_layer", keep="last")
    newest = set(zip(runs["_layer"], runs["run_id"]))
    keep = [(layer, run) in newest for layer, run in zip(ok["_layer"], ok["run_id"])]
    return ok[keep].drop(columns=["_ts", "_layer"]).reset_index(drop=True)
