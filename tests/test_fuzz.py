"""Property tests: every params file and every archive either works or gets one
clear line (ConfigError / PipelineError); never a traceback."""
from __future__ import annotations

import io
import os
import tarfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.config import TOP_KEYS, ConfigError, parse_params
from pipeline.core.errors import PipelineError

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["none", "standard", "strong", "adam", "sgd", "onecycle", "cpu", "auto", "bf16",
                     "simple_cnn", "resnet18", "cifar10"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=8), scalars, max_size=3))
keys = st.one_of(st.sampled_from(TOP_KEYS), st.text(max_size=10))
sections = st.fixed_dictionaries({}, optional={
    "data": st.dictionaries(st.sampled_from(["url", "md5", "sha256", "train_limit", "test_limit",
                                             "subset_seed", "verify_counts", "trian_limit"]), scalars),
    "report": st.dictionaries(st.sampled_from(["baseline", "confidence", "bootstrap", "top_confusions"]), scalars),
})


def _one_line(exc: Exception) -> None:
    msg = str(exc)
    assert msg and "\n" not in msg and len(msg) < 1000


# derandomize: CI replays the same examples every run; FUZZ_EXAMPLES=20000 explores more by hand
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))


@settings(max_examples=EXAMPLES, deadline=None, derandomize="FUZZ_EXAMPLES" not in os.environ,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.dictionaries(keys, values, max_size=6), values), sections)
def test_params_loader_never_raises_anything_but_a_config_error(raw, extra):
    if isinstance(raw, dict):
        raw = {**raw, **extra}
    try:
        p = parse_params(raw)
    except ConfigError as exc:
        _one_line(exc)
    else:
        assert p.arms and p.seeds


def _tar(members: list[tuple[str, bytes, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                info.linkname = "x"
                tf.addfile(info)
    return buf.getvalue()


names = st.one_of(
    st.sampled_from(["cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/batches.meta",
                     "cifar-10-batches-py/test_batch", "train/cat/0001.png", "test/dog/0001.jpg",
                     "../evil", "/abs", "train/../../x", "a/b/c"]),
    st.text(min_size=1, max_size=20))
member = st.tuples(names, st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE]),
                   st.binary(max_size=64))


@settings(max_examples=EXAMPLES // 2, deadline=None, derandomize="FUZZ_EXAMPLES" not in os.environ,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=256), st.lists(member, max_size=5).map(_tar)))
def test_archive_reader_never_raises_anything_but_a_pipeline_error(tmp_path_factory, blob):
    from pipeline.untar import prepare

    tmp = tmp_path_factory.mktemp("fuzz")
    archive = tmp / "a.tar.gz"
    archive.write_bytes(blob)
    try:
        prepare(archive, tmp / "out", verify_counts=False)
    except PipelineError as exc:
        _one_line(exc)
        assert not (tmp / "out").exists()
    assert sorted(p.name for p in tmp.iterdir()) in (["a.tar.gz"], ["a.tar.gz", "out"])
