"""params.yaml, read and validated once.

Every stage calls `load_params()` and gets typed, checked dataclasses back. Bad
input is refused here, before any expensive work, with one line that names the
key, the bad value and what is allowed.

Training keys sit at the top level of params.yaml so `dvc exp run -S aug=none`
works as typed. A training key left `null` takes the value of the chosen
`preset` (one of the reference recipes); a training key given as a list is an
ablation axis, and the train stage runs every arm of the grid for every seed.
"""
from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"


class ConfigError(PipelineError):
    pass


@dataclass(frozen=True)
class DataConfig:
    url: str = OFFICIAL_URL
    md5: str | None = OFFICIAL_MD5  # checked only when sha256 is null
    sha256: str | None = None  # wins over md5 when both are given
    train_limit: int | None = None  # stratified subset of the training set, for quick runs
    test_limit: int | None = None
    subset_seed: int = 0  # which stratified subset
    verify_counts: bool = True  # require the official 50,000/10,000 images, 5,000/1,000 per class


@dataclass(frozen=True)
class TrainConfig:
    model: str
    aug: str
    norm: str = "cifar10"
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0
    schedule: str = "none"
    max_lr: float | None = None  # onecycle peak; null = lr
    epochs: int = 30
    batch_size: int = 128
    grad_clip: float | None = None  # max global L2 norm of the gradients
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 adds a GradScaler)
    compile: bool = False  # torch.compile the model
    compile_mode: str = "default"  # torch.compile mode; reduce-overhead adds CUDA graphs
    keep_best: bool = True  # also keep the checkpoint with the best test accuracy
    device: str = "auto"  # auto = cuda when present, else cpu
    deterministic: bool = False  # deterministic CUDA kernels (the CPU always is)
    eval_batch_size: int | str = "auto"  # auto: 1024 on a GPU, 256 on the CPU (faster there)


# Keys that describe where or how a run executes, not what it computes; they
# never name an arm.
ENV_KEYS = ("device", "eval_batch_size")
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))

PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "onecycle", "cosine")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
DEVICES_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

# The reference recipes (../RECIPES in the docs): the values every training key
# left null in params.yaml takes. A list here is the recipe's own ablation axis.
PRESETS: dict[str, dict[str, Any]] = {
    "simple_cnn": dict(
        model="simple_cnn", aug=["none", "standard"], optimizer="adam", lr=1e-3,
        epochs=30, batch_size=128,
    ),
    "dilated_net": dict(
        model="dilated_net", aug="ssr_cutout", norm="cifar10_legacy", optimizer="sgd",
        lr=0.01, momentum=0.9, weight_decay=1e-4, schedule="onecycle", max_lr=0.05,
        epochs=30, batch_size=128,
    ),
    "resnet18": dict(
        model="resnet18", aug="strong", optimizer="adamw", lr=1e-3, weight_decay=1e-4,
        schedule="onecycle", max_lr=0.01, grad_clip=1.0, precision="bf16", compile=True,
        epochs=25, batch_size=128,
    ),
    "cnn4": dict(
        model="cnn4", aug="standard", optimizer="adam", lr=1e-3, epochs=30, batch_size=128,
    ),
    "tutorial_cnn": dict(
        model="tutorial_cnn", aug="none", optimizer="adam", lr=1e-3, epochs=10, batch_size=128,
    ),
}


@dataclass(frozen=True)
class ReportConfig:
    baseline: str | None = None  # arm the others are compared with; null = the first arm
    confidence: float = 0.95
    bootstrap: int = 2000  # resamples for paired bootstrap intervals
    top_confusions: int = 6


@dataclass(frozen=True)
class Arm:
    name: str  # e.g. "aug=none"; directory name under runs/
    axes: dict[str, Any]  # the values that name this arm
    train: TrainConfig


@dataclass(frozen=True)
class Params:
    study: str  # MLflow experiment name
    preset: str
    seeds: tuple[int, ...]
    data: DataConfig
    arms: tuple[Arm, ...]
    report: ReportConfig
    parallel: int | str = "auto"  # arm x seed jobs trained at once; auto: 1 on CPU, more on a GPU
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def baseline(self) -> Arm:
        name = self.report.baseline or self.arms[0].name
        return next(a for a in self.arms if a.name == name)

    def runs(self):
        """Every (arm, seed) pair of the study, arm-major."""
        return [(arm, seed) for arm in self.arms for seed in self.seeds]


# --------------------------------------------------------------------------- YAML

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as `1e-3` (1.1 wants `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None


# --------------------------------------------------------------------- validation

def _known(allowed) -> str:
    return ", ".join(str(a) for a in allowed)


def _unknown_key(where: str, key: Any, allowed) -> ConfigError:
    hint = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1)
    did = f" (did you mean '{hint[0]}'?)" if hint else ""
    shown = key if isinstance(key, str) and key.isprintable() and key.strip() else repr(key)
    return ConfigError(f"{where}{shown}: unknown key{did}; known keys: {_known(allowed)}")


def _bad(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key} = {value!r}: expected {allowed}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _choice(key, v, allowed):
    if not isinstance(v, str) or v not in allowed:
        hint = difflib.get_close_matches(str(v), list(allowed), n=1)
        did = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise _bad(key, v, f"one of {_known(allowed)}{did}")
    return v


def _bool(key, v):
    if not isinstance(v, bool):
        raise _bad(key, v, "true or false")
    return v


def _int(key, v, lo=None, hi=None, nullable=False):
    if v is None and nullable:
        return None
    ok = _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi)
    if not ok:
        rng = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
        raise _bad(key, v, rng + (" or null" if nullable else ""))
    return v


def _auto_int(key, v, lo, hi):
    if v == "auto":
        return v
    if not (_is_int(v) and lo <= v <= hi):
        raise _bad(key, v, f"auto or an integer in [{lo}, {hi}]")
    return v


def _float(key, v, lo=None, lo_open=False, hi=None, hi_open=False, nullable=False):
    if v is None and nullable:
        return None
    ok = _is_num(v)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        lo_s = "" if lo is None else ("> " if lo_open else ">= ") + str(lo)
        hi_s = "" if hi is None else ("< " if hi_open else "<= ") + str(hi)
        rng = " and ".join(s for s in (lo_s, hi_s) if s)
        raise _bad(key, v, "a number" + (f" {rng}" if rng else "") + (" or null" if nullable else ""))
    return float(v)


def _hex(key, v, n):
    if v is None:
        return None
    if not isinstance(v, str) or not re.fullmatch(f"[0-9a-fA-F]{{{n}}}", v):
        raise _bad(key, v, f"{n} hexadecimal digits or null")
    return v.lower()


def _train_checkers():
    # Imported here: the registries pull in torch, which only training needs.
    import models
    from pipeline import augment

    return {
        "model": lambda k, v: _choice(k, v, models.list_models()),
        "aug": lambda k, v: _choice(k, v, augment.list_augmentations()),
        "norm": lambda k, v: _choice(k, v, sorted(augment.NORMS)),
        "optimizer": lambda k, v: _choice(k, v, OPTIMIZERS),
        "lr": lambda k, v: _float(k, v, lo=0, lo_open=True, hi=10),
        "momentum": lambda k, v: _float(k, v, lo=0, hi=1, hi_open=True),
        "nesterov": _bool,
        "weight_decay": lambda k, v: _float(k, v, lo=0, hi=1),
        "schedule": lambda k, v: _choice(k, v, SCHEDULES),
        "max_lr": lambda k, v: _float(k, v, lo=0, lo_open=True, hi=10, nullable=True),
        "epochs": lambda k, v: _int(k, v, lo=1, hi=10_000),
        "batch_size": lambda k, v: _int(k, v, lo=1, hi=65_536),
        "grad_clip": lambda k, v: _float(k, v, lo=0, lo_open=True, nullable=True),
        "precision": lambda k, v: _choice(k, v, PRECISIONS),
        "compile": _bool,
        "compile_mode": lambda k, v: _choice(k, v, COMPILE_MODES),
        "keep_best": _bool,
        "device": _device,
        "deterministic": _bool,
        "eval_batch_size": lambda k, v: _auto_int(k, v, lo=1, hi=1 << 20),
    }


def _device(key, v):
    if not isinstance(v, str) or not DEVICES_RE.match(v):
        raise _bad(key, v, "auto, cpu, cuda or cuda:N")
    return v


def _check_section(name: str, raw: Any, cls) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _bad(name, raw, "a mapping")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise _unknown_key(f"{name}.", key, names)
    return raw


def _parse_data(raw) -> DataConfig:
    d = _check_section("data", raw, DataConfig)
    out = {}
    if "url" in d:
        if not isinstance(d["url"], str) or not d["url"].strip():
            raise _bad("data.url", d["url"], "an http(s) URL, a file:// URL or a local path")
        out["url"] = d["url"]
    if "md5" in d:
        out["md5"] = _hex("data.md5", d["md5"], 32)
    if "sha256" in d:
        out["sha256"] = _hex("data.sha256", d["sha256"], 64)
    for k in ("train_limit", "test_limit"):
        if k in d:
            out[k] = _int(f"data.{k}", d[k], lo=10, nullable=True)  # >= one image per class
    if "subset_seed" in d:
        out["subset_seed"] = _int("data.subset_seed", d["subset_seed"], lo=0)
    if "verify_counts" in d:
        out["verify_counts"] = _bool("data.verify_counts", d["verify_counts"])
    return DataConfig(**out)


def _parse_report(raw) -> ReportConfig:
    d = _check_section("report", raw, ReportConfig)
    out = {}
    if "baseline" in d:
        if d["baseline"] is not None and not isinstance(d["baseline"], str):
            raise _bad("report.baseline", d["baseline"], "an arm name or null")
        out["baseline"] = d["baseline"]
    if "confidence" in d:
        out["confidence"] = _float("report.confidence", d["confidence"], lo=0.5, hi=1, hi_open=True)
    if "bootstrap" in d:
        out["bootstrap"] = _int("report.bootstrap", d["bootstrap"], lo=100, hi=1_000_000)
    if "top_confusions" in d:
        out["top_confusions"] = _int("report.top_confusions", d["top_confusions"], lo=1, hi=90)
    return ReportConfig(**out)


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


TOP_KEYS = ("study", "preset", "seeds", "parallel", "data", "report") + TRAIN_KEYS


def parse_params(raw: Any) -> Params:
    """Validate a params mapping (as read from params.yaml) into `Params`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"params: expected a mapping of keys, got {type(raw).__name__}")
    for key in raw:
        if key not in TOP_KEYS:
            raise _unknown_key("", key, TOP_KEYS)

    preset = _choice("preset", raw.get("preset", "simple_cnn"), sorted(PRESETS))
    study = raw.get("study") or preset
    if not isinstance(study, str) or not re.fullmatch(r"[\w.\-]{1,100}", study):
        raise _bad("study", study, "a name of letters, digits, '.', '_' or '-', or null")

    seeds = raw.get("seeds", [0])
    seeds = [seeds] if _is_int(seeds) else seeds
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) and 0 <= s < 2**31 for s in seeds):
        raise _bad("seeds", raw.get("seeds"), "a non-negative integer or a non-empty list of them")
    if len(set(seeds)) != len(seeds):
        raise _bad("seeds", seeds, "distinct seeds")

    parallel = _auto_int("parallel", raw.get("parallel", "auto"), lo=1, hi=64)
    data = _parse_data(raw.get("data"))
    report = _parse_report(raw.get("report"))

    # Resolve each training key: params.yaml wins, then the preset, then the default.
    checkers = _train_checkers()
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    recipe = PRESETS[preset]
    values: dict[str, list] = {}
    label_keys = []
    for key in TRAIN_KEYS:
        given = raw.get(key)
        v = given if given is not None else recipe.get(key, defaults[key])
        if v is dataclasses.MISSING:
            raise ConfigError(f"{key}: the preset '{preset}' sets no value; give one in params.yaml")
        if isinstance(given, list) or isinstance(recipe.get(key), list):
            if key in ENV_KEYS:
                raise _bad(key, v, "a single value (it is not an ablation axis)")
            label_keys.append(key)
        options = v if isinstance(v, list) else [v]
        if not options:
            raise _bad(key, v, "a non-empty list")
        options = [checkers[key](key, o) for o in options]
        if len(set(map(_fmt, options))) != len(options):
            raise _bad(key, v, "distinct values")
        values[key] = options

    arms = []
    for combo in itertools.product(*values.values()):
        resolved = dict(zip(values, combo))
        _check_combination(resolved)
        axes = {k: resolved[k] for k in label_keys}
        name = ",".join(f"{k}={_fmt(v)}" for k, v in axes.items()) or preset
        arms.append(Arm(name=name, axes=axes, train=TrainConfig(**resolved)))

    if report.baseline is not None and report.baseline not in [a.name for a in arms]:
        raise _bad("report.baseline", report.baseline, f"one of the arms: {_known(a.name for a in arms)}")

    return Params(study=study, preset=preset, seeds=tuple(seeds), data=data,
                  arms=tuple(arms), report=report, parallel=parallel, raw=raw)


def _check_combination(c: dict) -> None:
    if c["nesterov"] and c["optimizer"] != "sgd":
        raise ConfigError(f"nesterov = true: only sgd has Nesterov momentum, optimizer is {c['optimizer']!r}")
    if c["max_lr"] is not None and c["schedule"] != "onecycle":
        raise ConfigError(f"max_lr = {c['max_lr']!r}: only the onecycle schedule uses it "
                          f"(schedule is {c['schedule']!r}); set max_lr to null")


def load_params(path: str | Path = "params.yaml", overrides: dict | None = None) -> Params:
    raw = read_yaml(path)
    if overrides:
        raw = {**(raw or {}), **overrides}
    try:
        return parse_params(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_data_config(path: str | Path = "params.yaml") -> DataConfig:
    """Only the `data` section, for the data stages (which must not need torch)."""
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys")
    try:
        return _parse_data(raw.get("data"))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
