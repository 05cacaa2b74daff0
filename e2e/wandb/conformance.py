#!/usr/bin/env python3
"""Holds liandan against Weights & Biases' own sweep engine and agent.

For every sweep file of a corpus, W&B's real code (the `sweeps` engine and the
`wandb` agent, pinned by scripts/setup-testenv.sh) and the liandan binary are
asked the same questions, and their answers must agree:

  verdict   is the file a sweep at all (and for lenient files: W&B refuses,
            liandan accepts and warns naming the key)
  runs      a grid's runs, in order, values compared with their types
  argv      the command line W&B's agent builds for each run, token by token,
            and the ${args_json_file} content
  space     for every valid file, the parameter space: flattened names,
            distributions, numeric fields (W&B's defaults filled), values
  seed      with `# seed-axis: NAME`, each job's seed is its args[NAME]

  $LIANDAN_TEST_PYTHON e2e/wandb/conformance.py --liandan target/debug/liandan \
      --corpus e2e/wandb/corpus
  $LIANDAN_TEST_PYTHON e2e/wandb/conformance.py --wandb-only --corpus e2e/wandb/corpus

Header comments of a corpus file (lines starting with `#` before the first
other line) carry expectations; see e2e/wandb/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# sweeps 0.3.0 still uses a pydantic v1 config key; the warning is noise here.
warnings.filterwarnings("ignore", message=".*Valid config keys have changed in V2.*")

import jsonschema  # noqa: E402
import yaml  # noqa: E402  (PyYAML, as `wandb sweep` reads files)

import sweeps  # noqa: E402
from sweeps.grid_search import grid_search_next_runs  # noqa: E402
from sweeps.params import HyperParameterSet  # noqa: E402

NEST = HyperParameterSet.NESTING_DELIMITER

# W&B's parameter types (sweeps.params.HyperParameter) -> liandan's distribution names.
DISTRIBUTION = {
    "param_single_value": "constant",
    "param_categorical": "categorical",
    "param_categorical_w_probabilities": "categorical_w_probabilities",
    "param_int_uniform": "int_uniform",
    "param_uniform": "uniform",
    "param_quniform": "q_uniform",
    "param_loguniform": "log_uniform",
    "param_loguniform_v2": "log_uniform_values",
    "param_qloguniform": "q_log_uniform",
    "param_qloguniform_v2": "q_log_uniform_values",
    "param_inv_loguniform": "inv_log_uniform",
    "param_inv_loguniform_v2": "inv_log_uniform_values",
    "param_normal": "normal",
    "param_qnormal": "q_normal",
    "param_lognormal": "log_normal",
    "param_qlognormal": "q_log_normal",
    "param_beta": "beta",
    "param_qbeta": "q_beta",
}
NUMERIC_FIELDS = ("min", "max", "mu", "sigma", "q", "a", "b")

EXIT_VALID, EXIT_INVALID = 0, 65
TRUNCATE = 160


class Mismatch(Exception):
    """One check found W&B and liandan disagreeing; the message says how."""


# ---------------------------------------------------------------- helpers


def short(value: Any, limit: int = TRUNCATE) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def typed(value: Any) -> str:
    """A value with its type, so that 1, 1.0, True and '1' read differently."""
    if isinstance(value, (dict, list)):
        return short(value)
    return f"{short(value)} ({type(value).__name__})"


def first_difference(wb: Any, ld: Any, where: str = "") -> str | None:
    """Where two values differ, types included (1, 1.0 and True all differ); None if equal."""
    if type(wb) is not type(ld):
        return f"{where or 'value'}: W&B {typed(wb)}, liandan {typed(ld)}"
    if isinstance(wb, dict):
        for key in wb:
            if key not in ld:
                return f"{where}.{key}: W&B {typed(wb[key])}, liandan has no such key"
        for key in ld:
            if key not in wb:
                return f"{where}.{key}: liandan {typed(ld[key])}, W&B has no such key"
        for key in wb:
            diff = first_difference(wb[key], ld[key], f"{where}.{key}" if where else key)
            if diff:
                return diff
        return None
    if isinstance(wb, list):
        if len(wb) != len(ld):
            return f"{where}: W&B {len(wb)} items {short(wb)}, liandan {len(ld)} items {short(ld)}"
        for i, (a, b) in enumerate(zip(wb, ld)):
            diff = first_difference(a, b, f"{where}[{i}]")
            if diff:
                return diff
        return None
    if isinstance(wb, float) and math.isnan(wb) and math.isnan(ld):
        return None
    if wb != ld:
        return f"{where or 'value'}: W&B {typed(wb)}, liandan {typed(ld)}"
    return None


def sorted_deep(value: Any) -> Any:
    """Keys sorted at every level: W&B's backend (Go's encoding/json) hands the
    agent a run's config that way."""
    if isinstance(value, dict):
        return {k: sorted_deep(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [sorted_deep(v) for v in value]
    return value


def through_backend(values: dict) -> dict:
    """A run config as it reaches the agent: the backend stores it as JSON (the
    engine's numpy scalars become plain numbers), then hands it over with keys
    sorted at every level (Go's encoding/json). Whole floats stay floats here;
    see README ("Not modelled")."""

    def plain(o: Any) -> Any:
        if hasattr(o, "item") and callable(o.item):  # numpy scalar
            return o.item()
        raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")

    return sorted_deep(json.loads(json.dumps(values, default=plain)))


def key_order_difference(expected: Any, got: Any, where: str = "args") -> str | None:
    """First place where `got`'s keys come in another order than `expected`'s."""
    if isinstance(expected, dict) and isinstance(got, dict):
        if list(expected) != list(got):
            return f"key order of {where}: W&B's agent gets {short(list(expected))}, liandan {short(list(got))}"
        for key in expected:
            if key in got:
                diff = key_order_difference(expected[key], got[key], f"{where}.{key}")
                if diff:
                    return diff
    elif isinstance(expected, list) and isinstance(got, list):
        for i, (a, b) in enumerate(zip(expected, got)):
            diff = key_order_difference(a, b, f"{where}[{i}]")
            if diff:
                return diff
    return None


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """Sets environment variables for the duration; restores everything after
    (W&B's agent also writes WANDB_RUN_ID and WANDB_SWEEP_PARAM_PATH)."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# ---------------------------------------------------------------- corpus files


@dataclass
class SweepFile:
    path: Path
    text: str
    lenient: list[str] = field(default_factory=list)  # `# lenient: KEYPATH`
    seed_axis: str | None = None  # `# seed-axis: NAME`
    env: dict[str, str] = field(default_factory=dict)  # `# env: NAME=VALUE`
    expect: str | None = None  # `# wandb: valid|refuses`

    @property
    def name(self) -> str:
        return self.path.name

    @classmethod
    def read(cls, path: Path) -> "SweepFile":
        text = path.read_text(encoding="utf-8")
        f = cls(path, text)
        for line in text.splitlines():
            if not line.startswith("#"):
                break
            key, sep, value = line[1:].strip().partition(":")
            if not sep:
                continue
            key, value = key.strip(), value.strip()
            if key == "lenient":
                f.lenient.append(value)
            elif key == "seed-axis":
                f.seed_axis = value
            elif key == "env":
                name, eq, val = value.partition("=")
                if not eq:
                    raise ValueError(f"header `# env: {value}` is not NAME=VALUE")
                f.env[name.strip()] = val.strip()
            elif key == "wandb":
                if value not in ("valid", "refuses"):
                    raise ValueError(f"header `# wandb: {value}`: expected valid or refuses")
                f.expect = value
        return f


# ---------------------------------------------------------------- W&B's side


@dataclass
class WandbView:
    cfg: Any = None  # the file as `wandb sweep` loads it, `liandan` key dropped
    valid: bool = False
    reason: str = ""  # why W&B refuses
    runs: list[dict] | None = None  # grid: each run's {name: value}, as the engine made it
    argv: list[list[str]] | None = None  # grid: the agent's command per run
    json_files: list[str | None] | None = None  # grid: what ${args_json_file} held
    json_path_tokens: list[str | None] | None = None
    space: dict[str, tuple[str, dict]] | None = None  # flattened name -> (type, config)


def wandb_load(text: str) -> Any:
    cfg = yaml.safe_load(text)
    if isinstance(cfg, dict):
        cfg.pop("liandan", None)  # liandan's own section; W&B only warns about it
    return cfg


def wandb_verdict(cfg: Any, env: dict[str, str]) -> tuple[bool, str]:
    """W&B accepts a sweep when SweepConfig accepts it AND W&B can act on it:
    the engine's first suggestion (grid_search_next_runs / next_runs) and, with
    early_terminate, its stop rule (stop_runs) must not raise, and the agent
    must be able to build the first run's command. SweepConfig alone lets
    through a grid over a continuous parameter, a bayes sweep without a metric,
    or the default command without a program; W&B then fails on every run."""
    try:
        sweeps.SweepConfig(copy.deepcopy(cfg))
    except Exception as e:  # noqa: BLE001  (any refusal of W&B's is a verdict)
        return False, f"SweepConfig: {type(e).__name__}: {first_line(e)}"
    try:
        if cfg["method"] == "grid":
            first = grid_search_next_runs([], copy.deepcopy(cfg), n=1)[0]
        else:
            first = sweeps.next_runs(copy.deepcopy(cfg), [], n=1)[0]
    except Exception as e:  # noqa: BLE001
        return False, f"engine (first suggestion): {type(e).__name__}: {first_line(e)}"
    if "early_terminate" in cfg:
        try:
            sweeps.stop_runs(copy.deepcopy(cfg), [])
        except Exception as e:  # noqa: BLE001
            return False, f"engine (stop_runs): {type(e).__name__}: {first_line(e)}"
    if first is not None:
        values = {name: holder["value"] for name, holder in first.config.items()}
        try:
            with environment(env), tempfile.TemporaryDirectory(prefix="liandan-wandb-agent-") as tmp:
                argv, _, _ = wandb_agent_argv(cfg, values, 0, tmp)
            bad = [a for a in argv if not isinstance(a, str)]
            if bad:
                raise TypeError(f"the command holds {bad[0]!r}, which the agent cannot start")
        except Exception as e:  # noqa: BLE001
            return False, f"agent (first run): {type(e).__name__}: {first_line(e)}"
    return True, ""


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return short(text.splitlines()[0] if text else type(e).__name__)


def wandb_grid_runs(cfg: dict) -> list[dict]:
    runs = grid_search_next_runs([], copy.deepcopy(cfg), n=1_000_000)
    runs = [r for r in runs if r is not None]
    if "run_cap" in cfg:
        runs = runs[: int(cfg["run_cap"])]  # W&B's controller stops there (4.0 is an integer to its schema)
    out = []
    for run in runs:
        values = {}
        for name, holder in run.config.items():
            values[name] = holder["value"]
        out.append(values)
    return out


class _RecordedProcess:
    """Stands in for wandb.wandb_agent.AgentProcess: records the command, runs nothing."""

    last: list[str] | None = None

    def __init__(self, env=None, command=None, **_kwargs):
        _RecordedProcess.last = command
        self.last_sigterm_time = None


def wandb_agent_argv(cfg: dict, run_values: dict, index: int, wandb_dir: str) -> tuple[list[str], str, str | None]:
    """The command W&B's agent (wandb.wandb_agent.Agent._command_run) builds for one run.
    Returns (argv, the path it used for ${args_json_file}, that file's content or None)."""
    import wandb.wandb_agent as wandb_agent

    agent = wandb_agent.Agent.__new__(wandb_agent.Agent)
    command = cfg.get("command")
    # The agent takes the sweep's command only when it is a non-empty list.
    agent._sweep_command = copy.deepcopy(command) if command and isinstance(command, list) else []
    agent._function = None
    agent._in_jupyter = False
    agent._forward_signals = False
    agent._run_processes = {}
    run_id = f"run{index}"
    args = {k: {"value": v} for k, v in through_backend(run_values).items()}
    saved_process = wandb_agent.AgentProcess
    wandb_agent.AgentProcess = _RecordedProcess
    _RecordedProcess.last = None
    try:
        with environment({"WANDB_DIR": wandb_dir}):
            os.environ.pop("WANDB_SWEEP_ID", None)
            agent._command_run({"args": args, "program": cfg.get("program"), "run_id": run_id})
            json_path = os.path.join(wandb_dir, "wandb", "sweep-None", f"config-{run_id}.json")
    finally:
        wandb_agent.AgentProcess = saved_process
    argv = _RecordedProcess.last
    if argv is None:
        raise RuntimeError("W&B's agent started no process")
    content = Path(json_path).read_text() if os.path.exists(json_path) else None
    return list(argv), json_path, content


def flatten_wandb_space(parameters: dict) -> dict[str, tuple[str, dict]]:
    # The raw config, as W&B's engine uses it: SweepConfig(cfg)["parameters"]
    # drops nested parameters (fill_validate_schema skips param_dict entries).
    hps = HyperParameterSet.from_config(copy.deepcopy(parameters))
    return {hp.name: (hp.type, hp.config) for hp in hps}


def repaired_for_leniency(cfg: Any) -> Any:
    """The file as liandan reads it under its leniency: a numeric field that
    PyYAML kept as a string ("1e-5") becomes the number."""
    cfg = copy.deepcopy(cfg)

    def fix(params: dict) -> None:
        for spec in params.values():
            if not isinstance(spec, dict):
                continue
            if isinstance(spec.get("parameters"), dict):
                fix(spec["parameters"])
            for key in NUMERIC_FIELDS:
                if isinstance(spec.get(key), str):
                    with contextlib.suppress(ValueError):
                        spec[key] = float(spec[key])

    if isinstance(cfg, dict) and isinstance(cfg.get("parameters"), dict):
        fix(cfg["parameters"])
    return cfg


def wandb_view(f: SweepFile) -> WandbView:
    view = WandbView()
    try:
        view.cfg = wandb_load(f.text)
    except yaml.YAMLError as e:
        view.valid, view.reason = False, f"PyYAML: {first_line(e)}"
        return view
    view.valid, view.reason = wandb_verdict(view.cfg, f.env)
    with environment(f.env):
        if view.valid and view.cfg.get("method") == "grid":
            view.runs = wandb_grid_runs(view.cfg)
            view.argv, view.json_files, view.json_path_tokens = [], [], []
            with tempfile.TemporaryDirectory(prefix="liandan-wandb-agent-") as tmp:
                for i, run in enumerate(view.runs):
                    argv, json_path, content = wandb_agent_argv(view.cfg, run, i, tmp)
                    view.argv.append(argv)
                    view.json_path_tokens.append(json_path if json_path in argv else None)
                    view.json_files.append(content)
    if view.valid:
        view.space = flatten_wandb_space(view.cfg["parameters"])
    elif f.lenient:
        # Best effort: skipped where W&B cannot build even the repaired space.
        with contextlib.suppress(ValueError, AssertionError, jsonschema.ValidationError):
            view.space = flatten_wandb_space(repaired_for_leniency(view.cfg)["parameters"])
    return view


# ---------------------------------------------------------------- liandan's side


@dataclass
class LiandanView:
    validate: dict | None = None
    validate_rc: int | None = None
    expand: dict | None = None


def run_liandan(binary: str, args: list[str], env: dict[str, str]) -> tuple[int, Any, str]:
    proc = subprocess.run(
        [binary, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    try:
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
    except json.JSONDecodeError as e:
        raise Mismatch(
            f"`liandan {' '.join(args)}` printed no JSON ({e}); stdout {short(proc.stdout)!r}; "
            f"stderr {short(proc.stderr)!r}"
        ) from None
    return proc.returncode, out, proc.stderr


def liandan_validate(binary: str, f: SweepFile) -> tuple[int, dict]:
    rc, out, err = run_liandan(binary, ["validate", str(f.path), "-o", "json"], f.env)
    if rc not in (EXIT_VALID, EXIT_INVALID):
        raise Mismatch(f"`liandan validate` exited {rc} (expected 0 or 65); stderr {short(err.strip())!r}")
    if not isinstance(out, dict) or not isinstance(out.get("valid"), bool):
        raise Mismatch(f"`liandan validate -o json` printed {short(out)}, not an object with a boolean `valid`")
    if out["valid"] != (rc == EXIT_VALID):
        raise Mismatch(f"`liandan validate` exited {rc} but printed valid={out['valid']}")
    if not out["valid"] and not isinstance(out.get("error"), dict):
        raise Mismatch(f"`liandan validate` refused without an `error` object: {short(out)}")
    return rc, out


def liandan_expand(binary: str, f: SweepFile) -> dict:
    rc, out, err = run_liandan(binary, ["expand", str(f.path), "-o", "json"], f.env)
    if rc != 0:
        raise Mismatch(f"`liandan expand` exited {rc}; stderr {short(err.strip())!r}")
    if not isinstance(out, dict) or not isinstance(out.get("jobs"), list):
        raise Mismatch(f"`liandan expand -o json` printed {short(out)}, not an object with `jobs`")
    return out


# ---------------------------------------------------------------- checks
# Each takes W&B's and liandan's views, raises Mismatch, or returns a word for the ok line.


def check_reference(f: SweepFile, wb: WandbView) -> str | None:
    """The `# wandb:` header records what W&B said when the file was written;
    a different answer means the reference moved (another sweeps version?)."""
    if f.expect is None:
        return None
    said = "valid" if wb.valid else "refuses"
    if said != f.expect:
        raise Mismatch(f"reference drift: the file says W&B {f.expect}, W&B {said} ({wb.reason or 'valid'})")
    return None


def check_verdict(f: SweepFile, wb: WandbView, ld: LiandanView) -> str:
    out = ld.validate
    ld_valid = out["valid"]
    ld_error = out.get("error") or {}
    if f.lenient:
        if wb.valid:
            raise Mismatch("a `# lenient:` file, but W&B accepts it (the leniency is not needed)")
        if not ld_valid:
            raise Mismatch(
                f"lenient: W&B refuses ({wb.reason}) and liandan must accept, but liandan refuses: "
                f"{short(ld_error.get('message'))} at {ld_error.get('path')}"
            )
        warnings_ = out.get("warnings") or []
        for keypath in f.lenient:
            if not any(keypath in w for w in warnings_):
                raise Mismatch(f"lenient: no liandan warning names {keypath}; warnings: {short(warnings_)}")
        return "lenient"
    if wb.valid and not ld_valid:
        raise Mismatch(
            f"verdict: W&B accepts, liandan refuses: {short(ld_error.get('message'))} "
            f"(path {ld_error.get('path')}, line {ld_error.get('line')})"
        )
    if not wb.valid and ld_valid:
        raise Mismatch(f"verdict: W&B refuses ({wb.reason}), liandan accepts")
    return "verdict"


def check_grid_runs(f: SweepFile, wb: WandbView, ld: LiandanView) -> str | None:
    if wb.runs is None or ld.expand is None:
        return None
    out = ld.expand
    if out.get("lazy"):
        raise Mismatch("runs: liandan expands the grid lazily; expected every job listed")
    jobs = out["jobs"]
    if len(jobs) != len(wb.runs):
        raise Mismatch(f"runs: W&B makes {len(wb.runs)} runs, liandan {len(jobs)} jobs")
    for i, (run, job) in enumerate(zip(wb.runs, jobs)):
        args = job.get("args")
        if not isinstance(args, dict):
            raise Mismatch(f"run {i}: liandan's job has no `args` object: {short(job)}")
        diff = first_difference(run, args)
        if diff:
            raise Mismatch(f"run {i}: {diff}")
        order = key_order_difference(sorted_deep(run), args)
        if order:
            raise Mismatch(f"run {i}: {order}")
    return f"{len(jobs)} runs"


def check_command_lines(f: SweepFile, wb: WandbView, ld: LiandanView) -> str | None:
    if wb.argv is None or ld.expand is None:
        return None
    jobs = ld.expand["jobs"]
    for i, (wb_argv, job) in enumerate(zip(wb.argv, jobs)):
        ld_argv = job.get("argv")
        if not isinstance(ld_argv, list):
            raise Mismatch(f"argv of run {i}: liandan's job has no `argv` list")
        json_token = wb.json_path_tokens[i]
        for t, (a, b) in enumerate(zip(wb_argv, ld_argv)):
            if json_token is not None and a == json_token:
                # ${args_json_file}: a path on both sides, never the same one.
                if not (isinstance(b, str) and b.endswith(".json") and "/" in b):
                    raise Mismatch(
                        f"argv of run {i}, token {t}: W&B passes the ${{args_json_file}} path {a!r}, "
                        f"liandan {b!r} (expected a path ending in .json)"
                    )
                continue
            if a != b:
                raise Mismatch(
                    f"argv of run {i}, token {t}: W&B {a!r}, liandan {short(b)!r}\n"
                    f"       W&B:     {short(wb_argv, 300)}\n       liandan: {short(ld_argv, 300)}"
                )
        if len(wb_argv) != len(ld_argv):
            raise Mismatch(
                f"argv of run {i}: W&B {len(wb_argv)} tokens, liandan {len(ld_argv)}\n"
                f"       W&B:     {short(wb_argv, 300)}\n       liandan: {short(ld_argv, 300)}"
            )
        content = wb.json_files[i]
        if content is not None:
            written = json.loads(content)
            if written != job.get("args"):
                raise Mismatch(
                    f"args_json_file of run {i}: W&B wrote {short(content)}, liandan's args are "
                    f"{short(json.dumps(job.get('args')))}"
                )
    return "argv"


def flatten_liandan_space(pairs: Any, prefix: str = "") -> dict[str, dict]:
    if not isinstance(pairs, list):
        raise Mismatch(f"space: liandan's spec.parameters is {short(pairs)}, not a list of [name, spec] pairs")
    out: dict[str, dict] = {}
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], dict)):
            raise Mismatch(f"space: liandan's parameter entry {short(pair)} is not [name, {{...}}]")
        name, spec = pair
        if spec.get("distribution") == "nested":
            out.update(flatten_liandan_space(spec.get("parameters"), f"{prefix}{name}{NEST}"))
        else:
            out[f"{prefix}{name}"] = spec
    return out


def check_space(f: SweepFile, wb: WandbView, ld: LiandanView) -> str | None:
    if wb.space is None or not ld.validate.get("valid"):
        return None
    spec = ld.validate.get("spec")
    if not isinstance(spec, dict):
        raise Mismatch("space: `liandan validate -o json` has no `spec` object")
    ld_space = flatten_liandan_space(spec.get("parameters"))
    show = lambda n: n.replace(NEST, ".")  # noqa: E731
    wb_space = dict(wb.space)
    if f.seed_axis is not None and f.seed_axis in wb_space and f.seed_axis not in ld_space:
        # liandan lifts the seed parameter out of the space into its seed axis
        # (spec.liandan.seeds); W&B's values must be those seeds, in order.
        wb_type, wb_cfg = wb_space.pop(f.seed_axis)
        seeds = (spec.get("liandan") or {}).get("seeds")
        wb_seeds = {"param_categorical": lambda: wb_cfg["values"], "param_single_value": lambda: [wb_cfg["value"]]}
        if wb_type in wb_seeds and seeds is not None:
            diff = first_difference(wb_seeds[wb_type](), seeds, "seeds")
            if diff:
                raise Mismatch(f"space: seed axis {f.seed_axis}: W&B's values are the seeds; {diff}")
    wb_names, ld_names = set(wb_space), set(ld_space)
    if wb_names != ld_names:
        raise Mismatch(
            f"space: parameters only in W&B {sorted(map(show, wb_names - ld_names))}, "
            f"only in liandan {sorted(map(show, ld_names - wb_names))}"
        )
    for name in sorted(wb_space):
        wb_type, wb_cfg = wb_space[name]
        ld_spec = ld_space[name]
        want = DISTRIBUTION[wb_type]
        if ld_spec.get("distribution") != want:
            raise Mismatch(
                f"space: {show(name)} is {want} for W&B ({wb_type}), liandan says {ld_spec.get('distribution')!r}"
            )
        for key, wb_value in wb_cfg.items():
            if key == "distribution":
                continue
            if key not in ld_spec:
                raise Mismatch(f"space: {show(name)}.{key}: W&B {typed(wb_value)}, liandan has no {key}")
            ld_value = ld_spec[key]
            if key in NUMERIC_FIELDS:
                if not isinstance(ld_value, (int, float)) or isinstance(ld_value, bool):
                    raise Mismatch(f"space: {show(name)}.{key}: W&B {wb_value!r}, liandan {typed(ld_value)}")
                if float(wb_value) != float(ld_value):
                    raise Mismatch(f"space: {show(name)}.{key}: W&B {float(wb_value)!r}, liandan {float(ld_value)!r}")
            elif key == "probabilities":
                if [float(p) for p in wb_value] != [float(p) for p in ld_value]:
                    raise Mismatch(f"space: {show(name)}.probabilities: W&B {wb_value}, liandan {short(ld_value)}")
            else:  # values, value: compared with their types
                diff = first_difference(wb_value, ld_value, f"{show(name)}.{key}")
                if diff:
                    raise Mismatch(f"space: {diff}")
    return f"space of {len(wb_space)}"


def check_seed_axis(f: SweepFile, wb: WandbView, ld: LiandanView) -> str | None:
    if f.seed_axis is None or ld.expand is None:
        return None
    for i, job in enumerate(ld.expand["jobs"]):
        args = job.get("args") or {}
        if f.seed_axis not in args:
            raise Mismatch(f"seed axis: job {i}'s args lack {f.seed_axis!r}: {short(args)}")
        if job.get("seed") != args[f.seed_axis] or type(job.get("seed")) is not type(args[f.seed_axis]):
            raise Mismatch(
                f"seed axis: job {i}'s seed is {typed(job.get('seed'))}, its args[{f.seed_axis!r}] "
                f"{typed(args[f.seed_axis])}"
            )
    return "seed axis"


CHECKS = (check_verdict, check_grid_runs, check_command_lines, check_space, check_seed_axis)


# ---------------------------------------------------------------- driving


def conform(f: SweepFile, binary: str) -> list[str]:
    """Runs every check on one file; returns what was compared. Raises Mismatch
    with every failure's message joined."""
    wb = wandb_view(f)
    failures: list[str] = []
    compared: list[str] = []
    try:
        check_reference(f, wb)
    except Mismatch as e:
        failures.append(str(e))
    ld = LiandanView()
    try:
        ld.validate_rc, ld.validate = liandan_validate(binary, f)
        if wb.runs is not None and ld.validate["valid"]:
            ld.expand = liandan_expand(binary, f)
    except Mismatch as e:
        raise Mismatch("\n     ".join([*failures, str(e)])) from None
    for check in CHECKS:
        try:
            what = check(f, wb, ld)
        except Mismatch as e:
            failures.append(str(e))
        else:
            if what:
                compared.append(what)
    if failures:
        raise Mismatch("\n     also: ".join(failures))
    return compared


def describe_wandb(f: SweepFile) -> list[str]:
    """--wandb-only: what W&B makes of a file, for eyeballing expectations."""
    wb = wandb_view(f)
    check_reference(f, wb)
    lines = []
    if not wb.valid:
        lines.append(f"refuses: {wb.reason}")
    else:
        lines.append(f"valid ({wb.cfg.get('method')})")
    if wb.space is not None:
        for name, (typ, cfg) in wb.space.items():
            fields = {k: v for k, v in cfg.items() if k != "distribution"}
            lines.append(f"  {name.replace(NEST, '.')}: {DISTRIBUTION[typ]} {short(fields, 200)}")
    if wb.runs is not None:
        lines.append(f"  {len(wb.runs)} runs")
        for i, (run, argv) in enumerate(zip(wb.runs, wb.argv)):
            lines.append(f"  run {i}: {short(sorted_deep(run), 200)}")
            lines.append(f"    argv: {short(argv, 400)}")
            if wb.json_files[i] is not None:
                lines.append(f"    args_json_file: {short(wb.json_files[i], 300)}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--liandan", help="path to the liandan binary")
    parser.add_argument("--corpus", default=str(Path(__file__).parent / "corpus"))
    parser.add_argument("--wandb-only", action="store_true", help="print what W&B makes of each file; run no liandan")
    parser.add_argument("-k", dest="only", action="append", default=[], help="only files whose name contains this")
    opts = parser.parse_args()

    import wandb

    print(f"reference: sweeps {sweeps.__version__}, wandb {wandb.__version__}, PyYAML {yaml.__version__}")
    if not opts.wandb_only:
        if not opts.liandan:
            parser.error("--liandan PATH is required (or --wandb-only)")
        if not os.access(opts.liandan, os.X_OK):
            parser.error(f"--liandan {opts.liandan}: not an executable file")
    files = sorted(Path(opts.corpus).glob("*.yaml"))
    if opts.only:
        files = [p for p in files if any(s in p.name for s in opts.only)]
    if not files:
        print(f"no *.yaml files in {opts.corpus}")
        return 1
    width = max(len(p.name) for p in files)
    passed = failed = 0
    for path in files:
        try:
            f = SweepFile.read(path)
            if opts.wandb_only:
                lines = describe_wandb(f)
                print(f"ok   {path.name:<{width}}  {lines[0]}")
                for line in lines[1:]:
                    print(f"     {line}")
            else:
                compared = conform(f, opts.liandan)
                print(f"ok   {path.name:<{width}}  ({', '.join(compared)})")
            passed += 1
        except Mismatch as e:
            print(f"FAIL {path.name}: {e}")
            failed += 1
        except Exception as e:  # noqa: BLE001  (a harness error fails this file, not the run)
            last = traceback.format_exception_only(type(e), e)[-1].strip()
            tb = traceback.extract_tb(e.__traceback__)
            where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
            print(f"FAIL {path.name}: harness error: {short(last, 300)}{where}")
            failed += 1
        sys.stdout.flush()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
