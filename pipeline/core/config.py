"""params.yaml, read and validated once.

Every stage calls `load_params()` and gets typed, checked objects back. The
types and allowed values of every key are declared once, as the annotations of
the pydantic models below (and, for model knobs, of each model's builder);
bad input is refused before any expensive work, with one line that names the
key, the bad value and what is allowed. Nothing here imports torch.

Training keys sit at the top level of params.yaml so `dvc exp run -S aug=none`
works as typed. A training key (or model knob) left `null` takes the value of
the chosen `preset` (one of the reference recipes in presets.yaml); one given
as a list is an ablation axis, and the train stage runs every arm of the grid
for every seed. Run settings (device, evaluation batch, determinism, parallel
jobs) say where and how arms run, never what they compute.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

import models
from pipeline.core.schema import (
    STRICT,
    ConfigError,
    DataConfig,
    ReportConfig,
    RunSettings,
    SeedPlan,
    bad,
    check_section,
    check_value,
    data_section,
    dotted,
    field_type,
    integer,
    number,
    read_yaml,
    show,
    unknown_key,
)

PRESETS_FILE = Path(__file__).with_name("presets.yaml")

# The choices a training config can make. Each augmentation regime is a module of
# pipeline/arm/regimes/ (a new one is that file alone), each normalisation an entry of
# pipeline.arm.augment.NORMS.
AUGMENTATIONS = tuple(sorted(p.stem for p in (Path(__file__).parents[1] / "arm" / "regimes").glob("*.py")
                             if p.stem != "__init__"))
NORM_NAMES = ("cifar10", "cifar10_legacy")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "onecycle", "cosine")  # stepped once per batch
# auto: mixed precision where the device computes it natively (resolve_precision)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


class TrainConfig(BaseModel):
    """What one arm computes. Every field is a params.yaml key (knobs: `knobs.<name>`)."""

    model_config = STRICT

    model: Literal[tuple(models.list_models())]
    knobs: dict[str, Any] = {}  # every knob of the model, defaults filled in
    aug: Literal[AUGMENTATIONS]
    norm: Literal[NORM_NAMES] = "cifar10"
    optimizer: Literal[OPTIMIZERS] = "adam"
    lr: number(gt=0, le=10) = 1e-3
    momentum: number(ge=0, lt=1) = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: number(ge=0, le=1) = 0.0
    schedule: Literal[SCHEDULES] = "none"
    max_lr: number(gt=0, le=10) | None = None  # onecycle peak; null = lr
    epochs: integer(ge=1, le=10_000) = 30
    batch_size: integer(ge=1, le=65_536) = 128
    grad_clip: number(gt=0) | None = None  # max global L2 norm of the gradients
    precision: Literal[PRECISIONS] = "auto"  # autocast; fp16 adds a GradScaler
    compile: bool = False  # torch.compile the model
    compile_mode: Literal[COMPILE_MODES] = "default"  # reduce-overhead adds CUDA graphs
    keep_best: bool = True  # also keep the best epoch's checkpoint (validation accuracy with a split, else test)


TRAIN_KEYS = tuple(k for k in TrainConfig.model_fields if k != "knobs")
RUN_KEYS = tuple(RunSettings.model_fields)
TOP_KEYS = ("study", "preset", "seeds", "data", "report", "knobs") + RUN_KEYS + TRAIN_KEYS
# the seeds a study's own report stands for (params.yaml's default); a run with other
# seeds writes its report beside it
STUDY_SEEDS = tuple(range(6))
NAME_BYTES = 200  # of a report folder's name: file systems allow 255 per component


@dataclass(frozen=True)
class Arm:
    name: str  # e.g. "aug=none"; directory name under runs/
    axes: dict[str, Any]  # the values that name this arm (knobs by their bare name)
    train: TrainConfig


@dataclass(frozen=True)
class Params:
    study: str  # MLflow experiment name
    preset: str
    seeds: tuple[int, ...]  # the seeds to train first (all of them, unless seed_plan adds more)
    data: DataConfig
    arms: tuple[Arm, ...]
    report: ReportConfig
    run: RunSettings
    seed_plan: SeedPlan | None = None  # seeds on demand
    raw: dict = field(default_factory=dict, repr=False, compare=False)
    # what makes this run other than the study its name stands for (see `variant`)
    variant: tuple[str, ...] = ()
    rationale: str | None = None  # what the preset sets that its recipe does not say, and why

    @property
    def report_name(self) -> str:
        """reports/<this>/: the study's name, and what differs when the run is not the
        study itself, e.g. `simple_cnn,train_limit=2000,epochs=2,seeds=0+1`: a quick or
        partial run never overwrites the study's own report."""
        name = ",".join((self.study, *self.variant))
        if len(name.encode()) > NAME_BYTES:  # a file name's limit: what differs, by a digest (in full in the report)
            digest = hashlib.sha256(",".join(self.variant).encode()).hexdigest()[:12]
            name = f"{self.study},variant-{digest}"
        return name

    @property
    def baseline(self) -> Arm:
        name = self.report.baseline or self.arms[0].name
        return next(a for a in self.arms if a.name == name)

    def runs(self):
        """Every (arm, seed) pair of the study, arm-major."""
        return [(arm, seed) for arm in self.arms for seed in self.seeds]


@cache
def presets() -> dict[str, dict[str, Any]]:
    return read_yaml(PRESETS_FILE)


# --------------------------------------------------------------------------- params


def parse_params(raw: Any, study_seeds: tuple[int, ...] = STUDY_SEEDS) -> Params:
    """Validate a params mapping (as read from params.yaml) into `Params`. `study_seeds`:
    the seeds the study's own report stands for (its analysis plan's, else STUDY_SEEDS)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"params: expected a mapping of keys, got {type(raw).__name__}")
    for key in raw:
        if key not in TOP_KEYS:
            raise unknown_key("", key, TOP_KEYS)

    preset = check_value("preset", Literal[tuple(presets())], raw.get("preset", "simple_cnn"))
    study = preset if raw.get("study") is None else raw["study"]
    # a folder name (reports/<study>/) and an MLflow experiment: never ".", "..", hidden or empty
    if (not isinstance(study, str) or not re.fullmatch(r"[A-Za-z0-9][\w.\-]{0,99}", study)
            or len(study.encode()) > 100):
        raise bad("study", study, "a name of up to 100 letters, digits, '.', '_' or '-' (100 bytes in UTF-8) that "
                                  "starts with a letter or digit, or null (the preset's name)")
    seeds, seed_plan = _seeds(raw.get("seeds", list(study_seeds)))
    data = data_section(raw.get("data"))
    recipe = presets()[preset]
    if data.val_split is None:  # the preset's (a recipe that chooses its best checkpoint on validation), else 0
        data = data.model_copy(update={"val_split": float(recipe.get("val_split", 0.0))})
    report = check_section(ReportConfig, "report", raw.get("report"))
    run_raw = {k: raw[k] for k in RUN_KEYS if raw.get(k) is not None}
    for k, v in run_raw.items():
        if isinstance(v, list):
            raise bad(k, v, "a single value (it is not an ablation axis)")
    run = check_section(RunSettings, "", run_raw)

    # Resolve each training key: params.yaml wins, then the preset, then the default.
    axes: dict[str, list] = {}
    for key in TRAIN_KEYS:
        given = raw.get(key)
        v = given if given is not None else recipe.get(key)
        if v is None:
            info = TrainConfig.model_fields[key]
            if info.is_required():
                raise ConfigError(f"{key}: the preset '{preset}' sets no value; give one in params.yaml")
            v = info.default
        axes[key] = _options(key, field_type(TrainConfig, key), v)
    # A preset's fixed knobs belong to its model: they apply to each arm whose model has
    # them (a study that swaps the model keeps working); knobs from params.yaml, and a
    # preset's knob axes, must fit every model of the study.
    given_knobs = raw.get("knobs") if isinstance(raw.get("knobs"), dict) else {}
    fixed = {k: v for k, v in (recipe.get("knobs") or {}).items()
             if not isinstance(v, list) and given_knobs.get(k) is None}
    knob_axes = _knob_options(raw.get("knobs"), {k: v for k, v in (recipe.get("knobs") or {}).items()
                                                 if k not in fixed}, axes["model"])
    axis_keys = [k for k in TRAIN_KEYS if isinstance(raw.get(k), list) or isinstance(recipe.get(k), list)]
    axis_keys += [k for k, opts in knob_axes.items() if opts.is_axis]

    arms = []
    grid = {**axes, **{f"knobs.{k}": o.values for k, o in knob_axes.items()}}
    for combo in itertools.product(*grid.values()):
        resolved = dict(zip(grid, combo))
        own = models.model_spec(resolved["model"]).knobs
        knobs = _resolve_knobs(resolved["model"], {**{k: v for k, v in fixed.items() if k in own},
                                                   **{k[6:]: v for k, v in resolved.items() if k.startswith("knobs.")}})
        cfg = TrainConfig(**{k: resolved[k] for k in TRAIN_KEYS}, knobs=knobs)
        _check_combination(cfg)
        names = {k: resolved[k] if k in resolved else resolved[f"knobs.{k}"] for k in axis_keys}
        name = ",".join(f"{k}={show(v)}" for k, v in names.items()) or preset
        arms.append(Arm(name=name, axes=names, train=cfg))

    if report.baseline is not None and report.baseline not in [a.name for a in arms]:
        raise bad("report.baseline", report.baseline, f"one of the arms: {', '.join(a.name for a in arms)}")
    k, fewest = report.mean_of_last, min(a.train.epochs for a in arms)
    if k > 1 and data.val_split:
        raise bad("report.mean_of_last", k, f"1 with data.val_split {data.val_split:g} (the test set is then "
                                            f"evaluated once, not every epoch), or data.val_split 0")
    if k > fewest:
        raise bad("report.mean_of_last", k, f"1 to {fewest}, the epochs an arm trains")
    return Params(study=study, preset=preset, seeds=seeds, seed_plan=seed_plan, data=data, arms=tuple(arms),
                  report=report, run=run, raw=raw,
                  variant=variant(raw, recipe, axes, knob_axes, data, seeds, seed_plan, study_seeds),
                  rationale=recipe.get("rationale"))


def variant(raw: dict, recipe: dict, axes: dict[str, list], knob_axes: dict, data: DataConfig,
            seeds: tuple[int, ...], plan: SeedPlan | None,
            study_seeds: tuple[int, ...] = STUDY_SEEDS) -> tuple[str, ...]:
    """What makes a run other than its study: a data subset, seeds other than the
    study's own, and every training key or knob given in params.yaml that differs from
    the preset's. A study named by its preset is the preset's recipe; one named in
    params.yaml is whatever it sets, so there only a subset of the data, a shorter
    budget and other seeds count."""
    out = [f"{k}={getattr(data, k)}" for k in ("train_limit", "test_limit") if getattr(data, k) is not None]
    if data.val_split != recipe.get("val_split", 0.0):
        out.append(f"val_split={data.val_split:g}")
    if out and data.subset_seed:
        out.append(f"subset_seed={data.subset_seed}")
    named = raw.get("study") is not None
    for key in ("epochs",) if named else TRAIN_KEYS:
        if raw.get(key) is not None and (recipe.get(key) is None or axes[key] != _options(key, field_type(
                TrainConfig, key), recipe[key])):
            out.append(f"{key}={'+'.join(map(show, axes[key]))}")
    for name, opts in ({} if named else knob_axes).items():
        preset_value = (recipe.get("knobs") or {}).get(name)
        if preset_value is None or opts.values != (preset_value if isinstance(preset_value, list) else [preset_value]):
            out.append(f"{name}={'+'.join(map(show, opts.values))}")
    if plan is not None:
        out += [f"seeds={plan.min}to{plan.max}", f"halfwidth={plan.halfwidth:g}"]
    elif seeds != tuple(study_seeds):
        contiguous = len(seeds) > 2 and seeds == tuple(range(seeds[0], seeds[0] + len(seeds)))
        listed = "+".join(map(str, seeds))
        if contiguous:
            out.append(f"seeds={seeds[0]}-{seeds[-1]}")
        elif len(listed) <= 40:
            out.append(f"seeds={listed}")
        else:  # a long list: its count and a digest in the name, the list itself in the report
            out.append(f"seeds={len(seeds)}x{hashlib.sha256(listed.encode()).hexdigest()[:8]}")
    return tuple(out)


def _seeds(v) -> tuple[tuple[int, ...], SeedPlan | None]:
    """A seed, a list of seeds, or seeds on demand ({min, max, halfwidth})."""
    if isinstance(v, dict):
        plan = check_section(SeedPlan, "seeds", v)
        if plan.max < plan.min:
            raise bad("seeds.max", plan.max, f"an integer >= seeds.min ({plan.min})")
        return tuple(range(plan.min)), plan
    seeds = [v] if isinstance(v, int) and not isinstance(v, bool) else v
    ok = isinstance(seeds, list) and seeds and all(
        isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in seeds)
    if not ok:
        raise bad("seeds", v, "a non-negative integer, a non-empty list of them, or {min, max, halfwidth}")
    if len(set(seeds)) != len(seeds):
        raise bad("seeds", seeds, "distinct seeds")
    return tuple(seeds), None


def _options(key: str, tp, v) -> list:
    """The values a key takes: one, or each of a list (an axis), each checked."""
    options = v if isinstance(v, list) else [v]
    if not options:
        raise bad(key, v, "a non-empty list")
    options = [check_value(key, tp, o) for o in options]
    if len(set(map(show, options))) != len(options):
        raise bad(key, v, "distinct values")
    return options


@dataclass(frozen=True)
class _KnobOptions:
    values: list
    is_axis: bool


def _knob_options(given: Any, recipe: dict, model_options: list[str]) -> dict[str, _KnobOptions]:
    """The knobs set for this study (params.yaml wins over the preset), each checked
    against every model of the study that must take it."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise bad("knobs", given, "a mapping of knob names to values, e.g. {dropout: 0.25}")
    specs = [models.model_spec(m) for m in model_options]
    known = sorted({k for s in specs for k in s.knobs})
    out = {}
    for name in dict.fromkeys([*recipe, *given]):
        v = given.get(name) if given.get(name) is not None else recipe.get(name)
        if v is None:
            continue
        lacking = [s.name for s in specs if name not in s.knobs]
        if lacking:
            if name not in models.known_knobs():
                raise unknown_key("knobs.", name, known or ["(the model has none)"])
            s = models.model_spec(lacking[0])
            raise ConfigError(f"knobs.{name}: model {s.name} has no knob '{name}' "
                              f"(its knobs: {', '.join(s.knobs) or 'none'})")
        out[name] = _KnobOptions(_options(f"knobs.{name}", specs[0].knobs[name].annotation, v), isinstance(v, list))
    return out


def _resolve_knobs(model: str, chosen: dict) -> dict:
    """Every knob of `model`: its default, or the value chosen (checked against this
    model's own annotation: a model axis may give one knob several types)."""
    spec = models.model_spec(model)
    return {**spec.defaults, **{k: check_value(f"knobs.{k}", spec.knobs[k].annotation, v) for k, v in chosen.items()}}


def _check_combination(c: TrainConfig) -> None:
    if c.nesterov and c.optimizer != "sgd":
        raise ConfigError(f"nesterov = true: only sgd has Nesterov momentum, optimizer is {c.optimizer!r}")
    if c.max_lr is not None and c.schedule != "onecycle":
        raise ConfigError(f"max_lr = {c.max_lr!r}: only the onecycle schedule uses it "
                          f"(schedule is {c.schedule!r}); set max_lr to null")


def resolve_precision(precision: str, device_type: str, bf16: bool) -> str:
    """`auto` made concrete, once per study, for the device its jobs train on (`bf16`:
    whether it computes bf16 natively): bf16 on a GPU that has it (Ampere and later),
    fp16 with a gradient scaler on older GPUs (a T4, the resnet18 recipe's own); bf16
    on a CPU with AMX or AVX512-BF16 (pipeline.core.hardware: simple_cnn trains 1.9-2x
    as fast as in fp32 there), fp32 on one without, where bf16 would be emulated."""
    if precision != "auto":
        return precision
    if device_type != "cuda":
        return "bf16" if bf16 else "fp32"
    return "bf16" if bf16 else "fp16"


def load_params(path: str | Path = "params.yaml") -> Params:
    """params.yaml, validated; under DVC, as the run read it when it started (a second
    `dvc exp run` may have rewritten the file since: pipeline.core.workspace)."""
    from pipeline.core.workspace import params_for_run

    raw = read_yaml(params_for_run(path))
    try:
        planned = _planned(Path(path), raw)
        params = parse_params(raw, tuple(planned["seeds"]) if planned else STUDY_SEEDS)
        return as_planned(params, parse_params(planned["params"], tuple(planned["seeds"]))) if planned else params
    except ConfigError as exc:
        refused = re.match(r"[\w.]+", str(exc))
        raise ConfigError(f"{path}: {exc}{_since_commit(Path(path), raw, refused.group(0) if refused else None)}") \
            from None


def fit_to_data(params: Params, n_train: int, n_test: int) -> Params:
    """`params` for data of these sizes: a subset limit at or above a split's size takes
    the whole split, and the report is named by what ran (no `train_limit=999999`)."""
    d = params.data
    drop = {k for k, n in (("train_limit", n_train), ("test_limit", n_test)) if getattr(d, k) is not None
            and getattr(d, k) >= n}
    if not drop:
        return params
    data = d.model_copy(update=dict.fromkeys(drop))
    variant = [v for v in params.variant if v.split("=")[0] not in drop]
    if data.train_limit is None and data.test_limit is None and not any(v.startswith("val_split=") for v in variant):
        variant = [v for v in variant if not v.startswith("subset_seed=")]
    return dataclasses.replace(params, data=data, variant=tuple(variant))


LARGE_RUNS = 1_000  # arm x seed runs in one study beyond which it must be asked for (--large)
NOMINAL_RATE = 2_000  # images/s: simple_cnn in fp32 on a 2-core CPU, to say how long a large study would take


def too_large(params: Params, n_train: int) -> str | None:
    """Why a study is larger than anyone can mean without saying so, with its time at a nominal rate, or None."""
    seeds = params.seed_plan.max if params.seed_plan else len(params.seeds)
    runs = len(params.arms) * seeds
    if runs <= LARGE_RUNS:
        return None
    hours = sum(a.train.epochs for a in params.arms) * seeds * n_train / NOMINAL_RATE / 3600
    return (f"this study trains {runs:,} runs ({len(params.arms)} arm(s) x {seeds:,} seeds), about {hours:,.0f} h at "
            f"{NOMINAL_RATE:,} images/s (simple_cnn in fp32 on a 2-core CPU; larger models take longer); if that "
            f"is meant, run it with CIFAR_ABLATE_LARGE=1 (python -m pipeline.train --large)")


def as_planned(params: Params, planned: Params) -> Params:
    """`params` as its study's own run (no variant: reports/<study>/) when it trains what
    the study's analysis plan registered: the same arms, configs, seeds and data subset."""
    same = ([(a.name, a.train) for a in params.arms] == [(a.name, a.train) for a in planned.arms]
            and params.seeds == planned.seeds and params.seed_plan is None
            and all(getattr(params.data, k) == getattr(planned.data, k)
                    for k in ("train_limit", "test_limit", "subset_seed", "val_split")))
    return dataclasses.replace(params, variant=()) if same else params


def _planned(path: Path, raw: Any) -> dict | None:
    """The study's analysis plan (reports/<study>/plan.yaml beside params.yaml, else in the
    working directory's reports/), its seeds and params, or None."""
    if not isinstance(raw, dict):
        return None
    study = raw.get("study") or raw.get("preset") or "simple_cnn"
    plan = next((p for p in (path.resolve().parent / "reports" / str(study) / "plan.yaml",
                             Path.cwd() / "reports" / str(study) / "plan.yaml") if p.is_file()), Path("-"))
    try:
        found = read_yaml(plan) if plan.is_file() else None
    except Exception:  # noqa: BLE001  a damaged plan is reported where plans are read
        return None
    seeds = found.get("seeds") if isinstance(found, dict) else None
    ok = isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)
    return found if ok and isinstance(found.get("params"), dict) else None


def _since_commit(path: Path, raw: Any, refused: str | None = None) -> str:
    """Where params.yaml differs from its last commit, how to put back only the refused
    key (`refused`, where the error names one among them; else every key that differs):
    `dvc exp run -S key=value` writes the file before any stage runs, so a refused value
    stays in it until restored, beside the user's own edits."""
    import subprocess

    try:
        rel = path.resolve().relative_to(Path.cwd().resolve())
        committed = subprocess.run(["git", "show", f"HEAD:./{rel.as_posix()}"], capture_output=True, text=True,
                                   timeout=30)
        if committed.returncode != 0:
            return ""
        from ruamel.yaml import YAML

        before = YAML(typ="safe", pure=True).load(committed.stdout)
    except Exception:  # noqa: BLE001  no git, not tracked, not YAML: nothing to add
        return ""
    now, then = dotted(raw), dotted(before)
    changed = [k for k in sorted(set(now) | set(then)) if now.get(k) != then.get(k)]
    if not changed:
        return ""
    undo = [k for k in changed if k == refused or k.startswith(f"{refused}.")] or changed[:8]
    back = " ".join(f"'{k}={show(then[k]) if then.get(k) is not None else 'null'}'" for k in undo)
    return (f"; {path} now holds values its last commit does not ({', '.join(changed[:8])}"
            f"{', ...' if len(changed) > 8 else ''}: `dvc exp run -S` writes them before the stage runs); "
            f"put back only {'that value' if len(undo) == 1 else 'those'}, with the committed comments and layout "
            f"and your other edits kept: `python -m pipeline.params set --layout-from HEAD {back}`")
