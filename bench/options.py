"""The options of the entry points, defined once: `python -m bench` (argparse) and the
pytest-benchmark suite (pytest's addoption) take the shared ones from here, with the same
names, help and defaults, and check them with the same functions, so a mistake gets the
same one-line answer in both.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Callable

import impls

from . import cases, records, tables, threads


@dataclasses.dataclass(frozen=True)
class Option:
    flag: str  # "--preset"
    default: object
    help: str
    switch: bool = False  # a flag without a value

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def usage_error(message: str) -> int:
    """A mistake in the options of `python -m bench` (run, list, ab): one line on stderr,
    exit status 2."""
    print(f"python -m bench: error: {message}", file=sys.stderr)
    return 2


def split_csv(value) -> list[str]:
    """"a,b,,c" -> ["a", "b", "c"]: the form of every list option."""
    return [v.strip() for v in str(value or "").split(",") if v.strip()]


# Shared by the CLI and pytest.
SHARED = [
    Option("--preset", "smoke", f"comma-separated layer tables: {', '.join(tables.TABLES)} (default smoke)"),
    Option("--impl", "", "comma-separated implementations (default: every registered one)"),
    Option("--role", "", "comma-separated roles: only the implementations of these (baseline, peer, handwritten, "
                         "simple; default: every role)"),
    Option("--device", "auto", "comma-separated devices: cpu, cuda; auto = the devices this machine has (default)"),
    Option("--direction", "forward,backward,train,stages",
           "comma-separated: forward, backward, train, stages (default: all four)"),
    Option("--dtype", "float32", "comma-separated dtypes (default float32)"),
    Option("--all-rows", False, "every row of the sweep table, not its seeded subset", switch=True),
    Option("--threads", "", "comma-separated thread counts, each case runs at each (default: all cores, or BENCH_THREADS)"),
    Option("--results", None, "write one JSON record per case to this .jsonl file as it finishes; the file is "
                              "started anew unless --resume; {cpu} (instruction set, vendor, family-model), {cpu_isa} "
                              "and {host} in the name become this machine's"),
    Option("--resume", False, "keep the results file and skip the cases it already holds as ok", switch=True),
]


def _check_names(what: str, given: list[str], known) -> list[str]:
    try:
        return cases.check_names(what, given, list(known))
    except ValueError as e:
        raise ValueError(f"--{e}") from None


def _with_roles(names: list[str], roles: list[str]) -> list[str]:
    """`names` (none: every implementation) less those whose role is not in `roles` (none:
    every role)."""
    from impls.base import ROLES

    if not roles:
        return names
    roles = _check_names("role", roles, ROLES)
    kept = [n for n in (names or impls.names()) if impls.get(n).role in roles]
    if not kept:
        raise ValueError(f"--role: no implementation{' of --impl' if names else ''} has role {', '.join(roles)}")
    return kept


def selection(get: Callable[[str], object]) -> dict:
    """`select_cases` keyword arguments from the shared options (`get(dest)` returns the
    option's value), checked: an unknown preset, implementation, device, direction or
    dtype is a ValueError naming the option."""
    devices = split_csv(get("device"))
    if devices == ["auto"]:
        devices = cases.local_devices()
    return {
        "tables_": _check_names("preset", split_csv(get("preset")), tables.TABLES) or ["smoke"],
        "impl_names": _with_roles(_check_names("impl", split_csv(get("impl")), impls.names()), split_csv(get("role"))),
        "devices": _check_names("device", devices, cases.DEVICES),
        "directions": _check_names("direction", split_csv(get("direction")), cases.DIRECTIONS + ("stages",)),
        "dtypes": _check_names("dtype", split_csv(get("dtype")), cases.DTYPES),
        "all_rows": bool(get("all_rows")),
    }


def selected_cases(get: Callable[[str], object]) -> list:
    """The cases the shared options select (`selection`), in order; a ValueError when the
    options are wrong or no case matches them."""
    chosen = cases.select_cases(**selection(get))
    if not chosen:
        raise ValueError("no case matches --preset/--impl/--device/--direction/--dtype")
    return chosen


def thread_counts(value) -> list[int | None]:
    """[None] (all cores) or the listed counts, each a whole number >= 1."""
    counts = split_csv(value)
    try:
        return [threads.parse_count(c, "--threads") for c in counts] or [None]
    except TypeError as e:
        raise ValueError(str(e)) from None


def results_path(value) -> str | None:
    """The results file, checked writable. `{cpu}` (machine.cpu_tag), `{cpu_isa}` and
    `{host}` in it become this machine's (so one command names the sweeps of different
    machines apart)."""
    if value in (None, ""):
        return None
    if "{" in str(value):
        from . import machine

        meta = machine.metadata()
        try:
            value = str(value).format(cpu=machine.cpu_tag(meta), cpu_isa=meta["cpu_isa"], host=meta["host"])
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"--results: {value!r} may hold {{cpu}}, {{cpu_isa}} and {{host}} only ({e})") from None
    why = records.writable(value)
    if why:
        raise ValueError(f"--results: {why}")
    return str(value)


def positive_seconds(flag: str, value) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{flag}: expected seconds > 0, got {value!r}") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{flag}: expected seconds > 0, got {value!r}")
    return seconds


def count(flag: str, value, minimum: int = 1) -> int:
    try:
        n = int(str(value))
    except ValueError:
        raise ValueError(f"{flag}: expected a whole number >= {minimum}, got {value!r}") from None
    if n < minimum:
        raise ValueError(f"{flag}: expected a whole number >= {minimum}, got {n}")
    return n


def fraction(flag: str, value) -> float | None:
    if str(value).lower() in ("", "none", "off"):
        return None
    try:
        f = float(value)
    except ValueError:
        raise ValueError(f"{flag}: expected a fraction in (0, 1) or 'off', got {value!r}") from None
    if not 0 < f < 1:
        raise ValueError(f"{flag}: expected a fraction in (0, 1) or 'off', got {value!r}")
    return f


def add_sweep_options(parser) -> None:
    """The options of a sweep in worker processes (bench/sweep.py's Plan): `run` and `ab`."""
    from .sweep import Plan

    d = Plan()
    parser.add_argument("--rounds", default=str(d.rounds), metavar="R",
                        help=f"rounds across the sweep, each in fresh worker processes (default {d.rounds})")
    parser.add_argument("--passes", default=str(d.passes), metavar="P",
                        help=f"shuffled passes of a group per round (default {d.passes})")
    parser.add_argument("--block", default=str(d.block), metavar="SECONDS",
                        help=f"seconds of one case in one pass, one call at least (default {d.block:g})")
    parser.add_argument("--max-rounds", default=str(d.max_rounds), metavar="M",
                        help=f"rounds at most, for groups whose prediction interval stays wider than --rel-pi "
                             f"(default {d.max_rounds})")
    parser.add_argument("--rel-pi", default=str(d.rel_pi), metavar="F",
                        help=f"more rounds for a group while a ratio's 95%% prediction interval is wider than "
                             f"this fraction of it (default {d.rel_pi:g}; 'off': the planned rounds only)")
    parser.add_argument("--solo", default=str(d.solo), metavar="N",
                        help=f"cases of one group also timed alone, every other worker stopped, each round (default {d.solo})")
    parser.add_argument("--seed", default=str(d.seed), help="seed of the orders and the solo sample (default 0)")


def plans(args) -> list:
    """One sweep Plan per thread count from the sweep options, checked; ValueError naming
    the option."""
    from .sweep import Plan

    rounds = count("--rounds", args.rounds)
    max_rounds = count("--max-rounds", args.max_rounds)
    if max_rounds < rounds:
        raise ValueError(f"--max-rounds: expected at least --rounds ({rounds}), got {max_rounds}")
    common = dict(rounds=rounds, passes=count("--passes", args.passes), block=positive_seconds("--block", args.block),
                  max_rounds=max_rounds, rel_pi=fraction("--rel-pi", args.rel_pi),
                  solo=count("--solo", args.solo, minimum=0), seed=count("--seed", args.seed, minimum=0))
    return [Plan(threads=t, **common) for t in thread_counts(args.threads)]


def add_to_argparse(parser) -> None:
    for opt in SHARED:
        if opt.switch:
            parser.add_argument(opt.flag, action="store_true", help=opt.help)
        else:
            parser.add_argument(opt.flag, default=opt.default, help=opt.help)


def add_to_pytest(group) -> None:
    for opt in SHARED:
        if opt.switch:
            group.addoption(opt.flag, action="store_true", default=False, help=opt.help)
        else:
            group.addoption(opt.flag, default=opt.default, help=opt.help)
