"""The params machinery that needs no model: reading params.yaml (YAML 1.2, as DVC
reads it), the sections every stage shares (data, report, run settings), and
the one way a bad value is put into words. pipeline.core.config adds the
training keys; the data stages use only this.
"""
from __future__ import annotations

import difflib
import reprlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

from annotated_types import Ge, Gt, Le, Lt
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from pipeline.core.errors import PipelineError

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
OFFICIAL_BYTES = 170_498_071


class ConfigError(PipelineError):
    pass


@dataclass(frozen=True)
class Says:
    """Annotation metadata: how an error message words what a key allows."""

    text: str


STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)


def hexdigits(n: int):
    return Annotated[str, Field(pattern=f"^[0-9a-fA-F]{{{n}}}$"), AfterValidator(str.lower),
                     Says(f"{n} hexadecimal digits")]


def number(**bounds):
    return Annotated[float, Field(allow_inf_nan=False, **bounds)]


def integer(**bounds):
    return Annotated[int, Field(**bounds)]


class DataConfig(BaseModel):
    model_config = STRICT

    url: Annotated[str, Field(pattern=r"\S"), Says("an http(s) URL, a file:// URL or a local path")] = OFFICIAL_URL
    md5: hexdigits(32) | None = OFFICIAL_MD5  # checked only when sha256 is null
    sha256: hexdigits(64) | None = None  # wins over md5 when both are given
    # download cap in bytes; null: the official archive's size when data.url is official, else 1 GiB
    max_bytes: integer(ge=1, le=1 << 40) | None = None
    train_limit: integer(ge=10) | None = None  # stratified subset of the training set (>= one image per class)
    test_limit: integer(ge=10) | None = None
    subset_seed: integer(ge=0) = 0  # which stratified subset (and which validation images)
    # held out of the training images (stratified, never trained on): with it, the best
    # checkpoint and the curves' peaks are chosen on them, not on the test set; null = the preset's, else 0
    val_split: number(ge=0, le=0.5) | None = None
    verify_counts: bool = True  # require the official 50,000/10,000 images, 5,000/1,000 per class

    @property
    def download_cap(self) -> int:
        if self.max_bytes is not None:
            return self.max_bytes
        return OFFICIAL_BYTES if self.url == OFFICIAL_URL else 1 << 30


class ReportConfig(BaseModel):
    model_config = STRICT

    baseline: Annotated[str, Says("an arm name")] | None = None  # null = the first arm
    confidence: number(ge=0.5, lt=1) = 0.95
    bootstrap: integer(ge=100, le=1_000_000) = 2000  # resamples for paired bootstrap intervals
    top_confusions: integer(ge=1, le=90) = 6
    # each run's accuracy the study's hypotheses are tested on: the mean test accuracy of
    # its last k epochs (less noisy than one epoch; needs every epoch evaluated on the
    # test set, so no data.val_split); 1 = the last checkpoint's. Fix it before the run.
    mean_of_last: integer(ge=1, le=1000) = 1
    # points of accuracy: with a margin, every tested comparison is also tested for
    # equivalence (two one-sided Welch tests against +-margin): equivalent, differs or inconclusive
    equivalence_margin: number(gt=0, le=100) | None = None
    # a crossed study's primary factor: its effects within each combination of the other
    # factors are the primary family (Holm), every other effect and interaction a secondary
    # family with its own Holm; null = one family of every effect and interaction
    primary: Annotated[str, Field(pattern=r"^[\w.]{1,100}$"), Says("a factor of the study, e.g. aug")] | None = None
    # register the winning arm's model (highest mean test accuracy; its median seed's last
    # checkpoint) in the MLflow Model Registry under this name; null = register nothing
    register_model: Annotated[str, Field(pattern=r"^[\w.\- ]{1,100}$"),
                              Says("a model name of letters, digits, '.', '_', '-' or spaces")] | None = None


class SeedPlan(BaseModel):
    """Seeds on demand: train `min` seeds per arm, then add seeds (0, 1, 2, ... in turn)
    until every difference to the baseline has a CI half-width of at most
    `halfwidth` points, or `max` seeds ran. It stops on the interval, never on a p-value,
    yet the stopping depends on the observed spread, and so does the final test: on
    equal arms of seed SD 1 point (min 3, max 10, halfwidth 1) 6.3% of studies are
    "significant", not 5% (docs/usage.md; bench/seeds_on_demand_error.py)."""

    model_config = STRICT

    min: integer(ge=2, le=1000) = 3
    max: integer(ge=2, le=1000) = 10
    halfwidth: number(gt=0, le=100)  # points (1 point = 1% accuracy) of the test-accuracy difference
    confidence: number(ge=0.5, lt=1) = 0.95


class RunSettings(BaseModel):
    """Where and how the arms run; none of it changes what an arm computes on the CPU."""

    model_config = STRICT

    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$"), Says("auto, cpu, cuda or cuda:N")] = "auto"
    # images per evaluation batch: auto = 1024 on a GPU, 256 on the CPU
    eval_batch_size: Literal["auto"] | integer(ge=1, le=1 << 20) = "auto"
    deterministic: bool = False  # deterministic CUDA kernels (CPU runs always are)
    parallel: Literal["auto"] | integer(ge=1, le=64) = "auto"  # arm x seed jobs trained at once
    # a Ray cluster to train on (its head, e.g. head-host:6379, joined through a node on this machine);
    # null = RAY_ADDRESS, else here
    cluster: Annotated[str, Field(min_length=1), Says("a Ray cluster address, auto, or null")] | None = None


# --------------------------------------------------------------------------- YAML


MAX_DEPTH = 20  # of mappings and lists in a params file: params.yaml needs 3


def read_yaml(path: str | Path) -> Any:
    """YAML 1.2, as DVC reads params.yaml (so `1e-3` is a number, `yes` a string)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError
    from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from None
    yaml = YAML(typ="safe", pure=True)
    depth = 0
    try:
        for event in yaml.parse(text):  # an alias can expand a few kB into gigabytes: none is taken
            if isinstance(event, AliasEvent):
                raise ConfigError(f"{path}: line {event.start_mark.line + 1}: a YAML alias (*{event.anchor}); "
                                  f"params take plain values, written out")
            depth += isinstance(event, CollectionStartEvent) - isinstance(event, CollectionEndEvent)
            if depth > MAX_DEPTH:  # before the loader recurses that deep
                raise ConfigError(f"{path}: line {event.start_mark.line + 1}: values nested more than {MAX_DEPTH} "
                                  f"levels deep; params nest a few levels (data.url, knobs.dropout)")
        return yaml.load(text)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deep to read; params nest a few levels (data.url, knobs.dropout)") \
            from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {' '.join(str(exc.problem).split())}") from None
    except YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None


# --------------------------------------------------------------------------- errors in words


def show(v) -> str:
    """A value as params.yaml spells it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def describe(tp, meta=()) -> str:
    """What an annotation allows, in words: 'an integer in [1, 64]', 'auto or ...'."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *more = typing.get_args(tp)
        return describe(base, (*meta, *more))
    for m in meta:
        if isinstance(m, Says):
            return m.text
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        parts = [describe(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is Literal:
        values = [show(v) for v in typing.get_args(tp)]
        return values[0] if len(values) == 1 else f"one of {', '.join(values)}"
    if tp is bool:
        return "true or false"
    bounds = {}
    for m in meta:
        for item in getattr(m, "metadata", [m]):  # FieldInfo carries its constraints in .metadata
            for cls, attr, sign in ((Gt, "gt", ">"), (Ge, "ge", ">="), (Lt, "lt", "<"), (Le, "le", "<=")):
                if isinstance(item, cls):
                    bounds[sign] = getattr(item, attr)
    noun = {int: "an integer", float: "a number", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))
    if tp is int and ">=" in bounds and "<=" in bounds:
        return f"{noun} in [{bounds['>=']}, {bounds['<=']}]"
    return " ".join([noun, " and ".join(f"{s} {v}" for s, v in bounds.items())]).strip()


# a value in an error message: a few items of a few levels, never the whole of a huge one
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxstring, _SHORT.maxother = 3, 4, 4, 60, 60


def unknown_key(where: str, key: Any, allowed) -> ConfigError:
    allowed = [str(a) for a in allowed]
    hint = difflib.get_close_matches(str(key)[:100], allowed, n=1)
    did = f" (did you mean '{hint[0]}'?)" if hint else ""
    shown = key if isinstance(key, str) and key.isprintable() and key.strip() and len(key) <= 60 else _SHORT.repr(key)
    return ConfigError(f"{where}{shown}: unknown key{did}; known keys: {', '.join(allowed)}")


def bad(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key} = {_SHORT.repr(value)}: expected {allowed}")


def did_you_mean(value, tp) -> str:
    origin = typing.get_origin(typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp)
    if origin is Literal and isinstance(value, str):
        options = [str(v) for v in typing.get_args(tp)]
        hint = difflib.get_close_matches(value, options, n=1)
        return f" (did you mean '{hint[0]}'?)" if hint else ""
    return ""


def field_type(model: type[BaseModel], key: str):
    info = model.model_fields[key]
    return Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation


def check_section(model: type[BaseModel], section: str, raw: Any) -> BaseModel:
    """`raw` (a mapping, or None for all defaults) as `model`, or one ConfigError line."""
    where = f"{section}." if section else ""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise bad(section, raw, "a mapping")
    for key in raw:
        if key not in model.model_fields:
            raise unknown_key(where, key, model.model_fields)
    try:
        return model(**raw)
    except ValidationError as exc:
        key = exc.errors()[0]["loc"][0]
        tp = field_type(model, key)
        if key not in raw:
            raise ConfigError(f"{where}{key}: missing; expected {describe(tp)}") from None
        raise bad(f"{where}{key}", raw[key], describe(tp) + did_you_mean(raw[key], tp)) from None


def check_value(key: str, tp, v: Any):
    try:
        return TypeAdapter(tp, config=ConfigDict(strict=True)).validate_python(v)
    except ValidationError:
        raise bad(key, v, describe(tp) + did_you_mean(v, tp)) from None


def load_data_config(path: str | Path = "params.yaml") -> DataConfig:
    """Only the `data` section, for the data stages (under DVC, as the run started: load_params)."""
    from pipeline.core.workspace import params_for_run

    raw = read_yaml(params_for_run(path)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys")
    try:
        return data_section(raw.get("data"))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def data_section(raw: Any) -> DataConfig:
    """params.yaml's `data`, checked; a URL that carries credentials is refused: DVC would
    write it into dvc.lock, and every report and MLflow run would show it."""
    from urllib.parse import urlsplit

    data = check_section(DataConfig, "data", raw)
    try:
        parts = urlsplit(data.url)
        userinfo = parts.username is not None or parts.password is not None
    except ValueError:
        userinfo = False
    if userinfo:
        raise ConfigError(f"data.url carries credentials (the user:password@ part of {parts.scheme}://...@"
                          f"{parts.hostname}): DVC would write them into dvc.lock and the reports would show them; "
                          f"give the URL without them and put them in ~/.netrc (machine {parts.hostname} login USER "
                          f"password PASSWORD; NETRC names another file), which the download reads")
    return data


def dotted(d: Any, prefix: str = "") -> dict[str, Any]:
    """{"data.url": ..., "lr": ...}: a params mapping's leaves by their dotted keys."""
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d} if prefix else {}
    out = {}
    for k, v in d.items():
        out.update(dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# --------------------------------------------------------------------------- files between stages


class Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


M = TypeVar("M", bound=Contract)


class CorruptFile(PipelineError):
    """A stage output that is missing, truncated or not what its contract says."""


def read_json(path: str | Path, cls: type[M], hint: str) -> M:
    """`path` as a `cls`, or one line naming the file and what to do."""
    path = Path(path)
    try:
        return cls.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise CorruptFile(f"{path} is missing; {hint}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"])) or "the file"
        raise CorruptFile(f"{path} is not a valid {cls.__name__} ({where}: {err['msg']}); {hint}") from None
