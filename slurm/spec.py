"""Grid spec files: structure, checks and resources (one YAML per paper table or figure).

:func:`load_spec` parses a spec and checks its structure (keys, methods, suites, seeds, axis groups,
scale profiles, resources); the values of config keys are checked when :mod:`.grid` expands it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from canbench.config import (
    SCALES,
    SUITES,
    ConfigError,
    apply,
    check_range,
    closest,
    deep_merge,
    nest,
    overrides_to_dict,
    yaml_numbers,
)
from canbench.io import read_yaml
from canbench.rundir import check_path_part

BENCHMARKS = ("table1", "table2", "table3", "table4", "table5", "fig6", "fig7", "smoke")
SPECIAL_AXES = ("method", "preset", "variant")
SPEC_KEYS = ("name", "description", "benchmark", "methods", "axes", "seeds", "suites", "suite_seeds", "eval", "names",
             "scales", "notes")
PROFILE_KEYS = ("preset", "presets", "overrides", "resources", "axis_values", "seeds", "suites", "suite_seeds", "eval",
                "notes")

RESOURCE_PREFIXES = ("slurm.", "resources.")


class GridError(ConfigError):
    """A grid spec (or one of its runs) is invalid; the message names the grid, run and key."""


@dataclass
class Resources:
    """What one job of the grid asks the scheduler for: a scale profile's ``resources`` <- ``--set slurm.KEY=VALUE``.

    The same typed mechanism as every config (:func:`canbench.config.apply`), strict: YAML ``"2"`` is not an int.
    """

    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None  # None: gpus_per_node, or 1 without GPUs (one task per GPU)
    cpus_per_task: int = 2
    mem_gb: float | None = None
    timeout_min: int = 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    slurm_array_parallelism: int = 256
    max_num_timeout: int = 3  # requeues after a time-out (AutoExecutor(slurm_max_num_timeout=...))
    signal_delay_s: int = 90  # USR2 this long before the time limit
    local_parallelism: int = 1  # concurrent local jobs (--executor local)
    additional: dict[str, Any] = field(default_factory=dict)  # extra sbatch flags, {flag: value}

    @property
    def values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def ntasks_per_node(self) -> int:
        t = self.tasks_per_node
        return int(t) if t is not None else max(1, int(self.gpus_per_node))

    @property
    def world_size(self) -> int:
        return int(self.nodes) * self.ntasks_per_node

    def validate(self) -> None:
        for k in ("nodes", "cpus_per_task", "timeout_min", "slurm_array_parallelism", "local_parallelism"):
            check_range(k, getattr(self, k), 1, math.inf)
        for k in ("gpus_per_node", "max_num_timeout", "signal_delay_s"):
            check_range(k, getattr(self, k), 0, math.inf)
        if self.tasks_per_node is not None:
            check_range("tasks_per_node", self.tasks_per_node, 1, math.inf)
        if self.mem_gb is not None:
            check_range("mem_gb", self.mem_gb, 0, math.inf, lo_open=True, hi_open=True)
        for k in SBATCH_STRINGS:
            if getattr(self, k) is not None:
                check_sbatch_value(k, getattr(self, k), SBATCH_WORD)
        if not isinstance(self.additional, dict):
            raise ConfigError(f"additional must map sbatch flags to values, got {self.additional!r}")
        for flag, value in self.additional.items():
            if not isinstance(flag, str) or not SBATCH_FLAG.fullmatch(flag):
                raise ConfigError(f"additional: {flag!r} is not an sbatch flag name (lower-case letters, digits, "
                                  "'-', '_'; e.g. mail-user)")
            if value is True:  # rendered as a bare flag: #SBATCH --exclusive
                continue
            if isinstance(value, bool) or value is None:
                raise ConfigError(f"additional.{flag}={value!r}: a flag is switched on with true; drop the key "
                                  "to leave it off")
            if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
                continue
            check_sbatch_value(f"additional.{flag}", value, SBATCH_TEXT)


# What goes into an ``#SBATCH --key=value`` line. submitit writes the value shell-quoted, but a newline would still
# end the comment line and start a shell command of the batch script, so every value is checked when the spec is
# loaded (and for --set slurm.*), before anything is rendered: names of partitions, accounts, QOS and constraint
# expressions are one word; values of ``additional`` flags may hold spaces (--comment) but no quote, backslash,
# '$', backtick or control character.
SBATCH_STRINGS = ("partition", "account", "qos", "constraint")
SBATCH_WORD = re.compile(r"[A-Za-z0-9_.,:+=@%&|!*()\[\]/-]+")
SBATCH_TEXT = re.compile(r"[A-Za-z0-9_.,:+=@%&|!*()\[\]/~^{}#? -]+")
SBATCH_FLAG = re.compile(r"[a-z][a-z0-9_-]*")


def check_sbatch_value(key: str, value: Any, allowed: re.Pattern) -> None:
    """Raise a ConfigError naming ``key`` unless ``value`` is a string made only of ``allowed`` characters."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}={value!r} must be a string")
    if not allowed.fullmatch(value):
        bad = sorted({c for c in value if not allowed.fullmatch(c)}) or ["(empty)"]
        raise ConfigError(f"{key}={value!r} cannot go into an #SBATCH line: it holds {', '.join(map(repr, bad))} "
                          f"(allowed: {allowed.pattern.strip('[]+')})")


RESOURCE_DEFAULTS: dict[str, Any] = Resources().values


@dataclass
class GridSpec:
    """A parsed grid YAML (not yet expanded)."""

    name: str
    description: str
    benchmark: str
    methods: list[str]
    axes: list[dict[str, Any]]
    seeds: list[int]
    suites: list[str]
    names: dict[str, str]
    scales: dict[str, dict[str, Any]]
    eval: dict[str, Any] = field(default_factory=dict)  # evaluation settings -> config.extra.eval
    # suite -> the seeds it runs on (default: every seed), e.g. {finetune: [0]} to finetune one seed only
    suite_seeds: dict[str, list[int]] = field(default_factory=dict)
    path: Path | None = None

    def suites_for(self, scale: str, seed: int) -> list[str]:
        """The evaluation suites of one run of the scale profile (``suites`` less those ``suite_seeds`` limits)."""
        prof = self.profile(scale)
        limits = prof.get("suite_seeds", self.suite_seeds) or {}
        return [s for s in prof.get("suites", self.suites) if s not in limits or seed in limits[s]]

    def profile(self, scale: str) -> dict[str, Any]:
        if scale not in self.scales:
            raise GridError(f"grid {self.name!r} has no scale {scale!r} (it has: {', '.join(self.scales)})")
        return self.scales[scale]

    def resources(self, scale: str, overrides: dict[str, Any] | None = None) -> Resources:
        """The scale profile's resources with defaults filled in and ``overrides`` applied."""
        res = Resources()
        for src, where in ((self.profile(scale).get("resources") or {}, f"scales.{scale}.resources"),
                           (overrides or {}, "--set slurm.*")):
            try:
                apply(res, src, label="resource", strict=True)
                res.validate()
            except ConfigError as exc:
                raise GridError(f"grid {self.name!r}: {where}: {exc}") from None
        return res


def _as_list(value: Any, what: str) -> list:
    if not isinstance(value, list) or not value:
        raise GridError(f"{what} must be a non-empty list, got {value!r}")
    return value


def check_keys(d: Any, allowed: tuple[str, ...], where: str) -> dict:
    if not isinstance(d, dict):
        raise GridError(f"{where} must be a mapping, got {d!r}")
    for k in d:
        if k not in allowed:
            raise GridError(f"{where}: unknown key {k!r}{closest(str(k), allowed)}")
    return d


GRID_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "grids"  # the packaged grid specs


def resolve_spec_path(spec: str) -> Path:
    """A YAML path, or the name of a packaged spec (``smoke``, ``fig6_masking_rate``, or its benchmark: ``table3``).

    Packaged specs are found next to this package (``canbench/benchmarks/grids`` when installed from a wheel,
    ``benchmarks/grids`` in the checkout), never relative to the working directory."""
    p = Path(spec).expanduser()
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    for cand in (GRID_DIR / f"{spec}.yaml", GRID_DIR / "paper" / f"{spec}.yaml"):
        if cand.is_file():
            return cand
    by_benchmark = sorted(GRID_DIR.glob(f"paper/{spec}_*.yaml")) if spec in BENCHMARKS else []
    if len(by_benchmark) == 1:
        return by_benchmark[0]
    names = sorted(x.stem for x in list(GRID_DIR.glob("*.yaml")) + list(GRID_DIR.glob("paper/*.yaml")))
    raise FileNotFoundError(f"grid spec {spec!r} is neither a file nor a packaged spec ({', '.join(names)})")


def load_spec(path: str | Path) -> GridSpec:
    """Parse and structurally check a grid YAML (yaml.safe_load)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"grid spec not found: {p}")
    try:
        spec = parse_spec(read_yaml(p, mapping=True), where=str(p))
    except GridError as exc:
        msg = str(exc)
        raise GridError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from None
    spec.path = p
    return spec


def parse_spec(raw: dict[str, Any], where: str = "grid spec") -> GridSpec:
    """Check a spec mapping's structure; values of config keys are checked by :func:`expand`."""
    check_keys(raw, SPEC_KEYS, where)
    name = raw.get("name")
    try:
        check_path_part(name, "name")  # the default run store is runs/<name>/<scale>
    except ConfigError as exc:
        raise GridError(f"{where}: {exc}") from None
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise GridError(f"{where}: 'name' must be a word of letters, digits, '_', '.', '-', got {name!r}")
    where = f"grid {name!r}"
    bench = raw.get("benchmark")
    if bench not in BENCHMARKS:
        raise GridError(f"{where}: benchmark={bench!r} is not one of {', '.join(BENCHMARKS)}")
    axes = _parse_axes(raw.get("axes") or [], where)
    axis_keys = group_keys({"union": axes}) if axes else set()
    for label in group_values({"union": axes}, "variant"):  # a variant label is part of its runs' folder names
        try:
            check_path_part(str(label) if isinstance(label, (int, float)) and not isinstance(label, bool) else label,
                            "axes: variant")
        except ConfigError as exc:
            raise GridError(f"{where}: {exc}") from None
    methods = raw.get("methods")
    if "method" in axis_keys:
        if methods is not None:
            raise GridError(f"{where}: give the methods either as 'methods' or as the 'method' axis, not both")
        methods = []
    else:
        methods = _as_list(methods, f"{where}: methods")
        for m in methods:
            from canbench.methods import METHODS  # the registry imports torch: only when a spec names methods

            if m not in METHODS:
                raise GridError(f"{where}: unknown method {m!r}{closest(str(m), METHODS)}")
    seeds = _seeds(raw.get("seeds", [0]), f"{where}: seeds")
    suites = _suites(raw.get("suites", []), f"{where}: suites")
    names = raw.get("names") or {}
    if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
        raise GridError(f"{where}: names must map axis keys to short labels")
    for k in names:
        if k not in axis_keys:
            raise GridError(f"{where}: names has {k!r}, which is not an axis{closest(str(k), axis_keys)}")
    scales = check_keys(raw.get("scales") or {}, SCALES, f"{where}: scales")
    if not scales:
        raise GridError(f"{where}: needs at least one scale profile ({', '.join(SCALES)})")
    for scale, prof in scales.items():
        pw = f"{where}: scales.{scale}"
        check_keys(prof, PROFILE_KEYS, pw)
        if "preset" not in prof and "preset" not in axis_keys:
            raise GridError(f"{pw}: needs a 'preset'")
        if "overrides" in prof and not isinstance(prof["overrides"], dict):
            raise GridError(f"{pw}.overrides must map config keys to values")
        if "presets" in prof and not isinstance(prof["presets"], dict):
            raise GridError(f"{pw}.presets must map preset aliases to preset names")
        if "resources" in prof and not isinstance(prof["resources"], dict):
            raise GridError(f"{pw}.resources must be a mapping")
        for k, vals in (prof.get("axis_values") or {}).items():
            if k not in axis_keys:
                raise GridError(f"{pw}.axis_values: {k!r} is not an axis of the grid{closest(str(k), axis_keys)}")
            _as_list(vals, f"{pw}.axis_values.{k}")
        if "seeds" in prof:
            _seeds(prof["seeds"], f"{pw}.seeds")
        if "suites" in prof:
            _suites(prof["suites"], f"{pw}.suites")
        if "suite_seeds" in prof:
            _suite_seeds(prof["suite_seeds"], prof.get("suites", suites), prof.get("seeds", seeds),
                         f"{pw}.suite_seeds")
    for where_eval, ev in [(where, raw.get("eval"))] + [(f"{where}: scales.{k}", p.get("eval"))
                                                       for k, p in scales.items()]:
        if ev is not None and not isinstance(ev, dict):
            raise GridError(f"{where_eval}: eval must map evaluation settings (e.g. linear.epochs) to values")
    for scale, prof in scales.items():  # every profile's eval keys and types, not only the one submitted now
        from canbench.evaluation.recipes import validate_settings  # layer 3 below this one; imported on use

        try:
            validate_settings(yaml_numbers(deep_merge(nest(raw.get("eval") or {}), nest(prof.get("eval") or {}))),
                              "evaluation setting")
        except ConfigError as exc:
            raise GridError(f"{where}: scales.{scale}.eval: {exc}") from None
    spec = GridSpec(name=name, description=str(raw.get("description", "")), benchmark=bench, methods=methods,
                    axes=axes, seeds=seeds, suites=suites, names=dict(names), scales=scales,
                    eval=dict(raw.get("eval") or {}),
                    suite_seeds=_suite_seeds(raw.get("suite_seeds") or {}, suites, seeds, f"{where}: suite_seeds"))
    for scale in scales:
        spec.resources(scale)  # resource keys and types are checked for every scale
    return spec


def _seeds(v: Any, where: str) -> list[int]:
    v = _as_list(v, where)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in v) or len(set(v)) != len(v):
        raise GridError(f"{where} must be distinct non-negative integers, got {v!r}")
    return list(v)


def _suites(v: Any, where: str) -> list[str]:
    if not isinstance(v, list):
        raise GridError(f"{where} must be a list of suite names ({', '.join(SUITES)})")
    for s in v:
        if s not in SUITES:
            raise GridError(f"{where}: unknown evaluation suite {s!r}{closest(str(s), SUITES)}")
    return list(v)


def _suite_seeds(v: Any, suites: list[str], seeds: list[int], where: str) -> dict[str, list[int]]:
    """``{suite: [seed, ...]}``: each suite one of ``suites``, each seed one of ``seeds``."""
    if not isinstance(v, dict):
        raise GridError(f"{where} must map suite names to lists of seeds, got {v!r}")
    out = {}
    for suite, ss in v.items():
        if suite not in suites:
            raise GridError(f"{where}: {suite!r} is not one of the grid's suites ({', '.join(suites) or 'none'})")
        ss = _seeds(ss, f"{where}.{suite}")
        extra = [s for s in ss if s not in seeds]
        if extra:
            raise GridError(f"{where}.{suite}: seeds {extra} are not among the grid's seeds {seeds}")
        out[str(suite)] = ss
    return out


def _parse_axes(axes: Any, where: str) -> list[dict[str, Any]]:
    """Axes as a list of groups; a bare mapping is shorthand for one product group."""
    if isinstance(axes, dict):
        axes = [{"product": axes}] if not set(axes) & {"product", "zip", "union"} else [axes]
    if not isinstance(axes, list):
        raise GridError(f"{where}: axes must be a list of groups (product / zip / union)")
    return [_parse_group(g, f"{where}: axes[{i}]") for i, g in enumerate(axes)]


def _parse_group(g: Any, where: str) -> dict[str, Any]:
    if not isinstance(g, dict) or len(g) != 1 or next(iter(g)) not in ("product", "zip", "union"):
        raise GridError(f"{where} must be one of {{product: {{key: [values]}}}}, {{zip: {{key: [values]}}}}, "
                        f"{{union: [groups]}}; got {g!r}")
    kind, body = next(iter(g.items()))
    if kind == "union":
        return {"union": [_parse_group(x, f"{where}.union[{i}]") for i, x in enumerate(_as_list(body, where))]}
    if not isinstance(body, dict) or not body:
        raise GridError(f"{where}.{kind} must map axis keys to lists of values")
    for k, vals in body.items():
        _as_list(vals, f"{where}.{kind}.{k}")
    if kind == "zip" and len({len(v) for v in body.values()}) != 1:
        raise GridError(f"{where}.zip: all lists must have the same length, got "
                        + ", ".join(f"{k}: {len(v)}" for k, v in body.items()))
    return {kind: {str(k): list(v) for k, v in body.items()}}


def group_keys(g: dict[str, Any]) -> set[str]:
    kind, body = next(iter(g.items()))
    if kind == "union":
        return set().union(*(group_keys(x) for x in body))
    return set(body)


def group_values(g: dict[str, Any], key: str) -> list[Any]:
    """Every value axis ``key`` takes anywhere in group ``g`` (in spec order)."""
    kind, body = next(iter(g.items()))
    if kind == "union":
        return [v for x in body for v in group_values(x, key)]
    return list(body.get(key, []))


def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, Any]]:
    """``--set`` items -> (config overrides, resource overrides from ``slurm.KEY=VALUE``)."""
    cfg_items, res = [], {}
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        prefix = next((p for p in RESOURCE_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            cfg_items.append(text)
            continue
        value = overrides_to_dict([text])
        for part in prefix.rstrip(".").split("."):
            value = value[part]
        res.update(value)
    return cfg_items, res


__all__ = ["BENCHMARKS", "GRID_DIR", "GridError", "GridSpec", "PROFILE_KEYS", "RESOURCE_DEFAULTS", "RESOURCE_PREFIXES",
           "Resources", "SCALES", "SPECIAL_AXES", "SPEC_KEYS", "SUITES", "check_keys", "check_sbatch_value", "closest",
           "deep_merge", "group_keys", "group_values", "load_spec", "nest", "parse_spec", "resolve_spec_path",
           "split_overrides"]
