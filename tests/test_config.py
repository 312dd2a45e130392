"""params.yaml: presets, axes, knobs, arm names, and one-line errors for bad input."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

import models
from pipeline.core.config import TRAIN_KEYS, ConfigError, load_params, parse_params, presets
from pipeline.core.schema import read_yaml
from tests.conftest import REPO


def test_repository_params_are_the_default_study():
    p = load_params(REPO / "params.yaml")
    assert p.preset == "simple_cnn"
    assert [a.name for a in p.arms] == ["aug=none", "aug=standard"]
    assert len(p.seeds) >= 2, "the default study must run several seeds"
    assert {a.train.model for a in p.arms} == {"simple_cnn"}
    assert p.baseline.name == "aug=none"


def test_scalar_override_of_a_preset_axis_keeps_the_arm_name():
    # `dvc exp run -S aug=none` writes aug: none into params.yaml
    p = parse_params({"preset": "simple_cnn", "aug": "none", "seeds": [0]})
    assert [a.name for a in p.arms] == ["aug=none"]
    assert p.arms[0].train.aug == "none"


def test_every_list_key_is_an_axis_of_the_grid():
    p = parse_params({"aug": ["none", "standard"], "lr": [0.001, 0.01], "seeds": [1, 2]})
    assert [a.name for a in p.arms] == [
        "aug=none,lr=0.001", "aug=none,lr=0.01", "aug=standard,lr=0.001", "aug=standard,lr=0.01"]
    assert len(p.runs()) == 8
    assert p.arms[1].train.lr == 0.01 and p.arms[1].train.aug == "none"


@pytest.mark.parametrize("preset", sorted(presets()))
def test_every_preset_resolves(preset):
    p = parse_params({"preset": preset})
    for arm in p.arms:
        assert arm.train.model == presets()[preset]["model"]
        assert arm.train.knobs == {**models.model_spec(arm.train.model).defaults, **presets()[preset].get("knobs", {})}
    if not any(isinstance(v, list) for v in presets()[preset].values()):
        assert [a.name for a in p.arms] == [preset]


def test_resnet18_preset_matches_its_recipe():
    t = parse_params({"preset": "resnet18"}).arms[0].train
    assert (t.optimizer, t.lr, t.weight_decay, t.schedule, t.max_lr) == ("adamw", 1e-3, 1e-4, "onecycle", 0.01)
    assert (t.grad_clip, t.epochs, t.batch_size, t.compile, t.aug) == (1.0, 25, 128, True, "strong")


def test_validation_split_is_the_presets_unless_given_and_bounded():
    """resnet18 keeps its best checkpoint by validation accuracy: its preset holds out
    10%; the others train on every image (the recipes' way) unless params.yaml says."""
    assert parse_params({"preset": "resnet18"}).data.val_split == 0.1
    assert parse_params({"preset": "resnet18"}).variant == ()
    assert parse_params({}).data.val_split == 0.0
    given = parse_params({"data": {"val_split": 0.2}})
    assert given.data.val_split == 0.2 and "val_split=0.2" in given.variant  # a report folder of its own
    assert parse_params({"preset": "resnet18", "data": {"val_split": 0}}).variant == ("val_split=0",)
    for bad_value in (0.7, -0.1, "a", True):
        with pytest.raises(ConfigError, match=r"^data.val_split = .*: expected a number >= 0 and <= 0.5 or null$"):
            parse_params({"data": {"val_split": bad_value}})


def test_mean_of_last_needs_every_epoch_on_the_test_set_and_that_many_epochs():
    """The less noisy estimate averages the last k epochs' test accuracy: refused where
    a validation split keeps the test set for one look, or beyond the epochs trained."""
    assert parse_params({}).report.mean_of_last == 1
    assert parse_params({"report": {"mean_of_last": 5}}).report.mean_of_last == 5
    with pytest.raises(ConfigError, match=r"^report.mean_of_last = 5: expected 1 with data.val_split 0.1 .*"
                                          r"or data.val_split 0$"):
        parse_params({"report": {"mean_of_last": 5}, "data": {"val_split": 0.1}})
    with pytest.raises(ConfigError, match=r"^report.mean_of_last = 5: expected 1 with data.val_split 0.1"):
        parse_params({"preset": "resnet18", "report": {"mean_of_last": 5}})  # the preset's split
    with pytest.raises(ConfigError, match=r"^report.mean_of_last = 4: expected 1 to 3, the epochs an arm trains$"):
        parse_params({"report": {"mean_of_last": 4}, "epochs": [3, 10]})
    for bad_value in (0, 2.5, "5"):
        with pytest.raises(ConfigError, match=r"^report.mean_of_last = "):
            parse_params({"report": {"mean_of_last": bad_value}})


def test_knobs_are_axes_named_by_their_bare_name():
    p = parse_params({"knobs": {"dropout": [0, 0.25, 0.5]}, "seeds": [0]})
    assert [a.name for a in p.arms] == [f"aug={a},dropout={d}" for a in ("none", "standard")
                                        for d in ("0.0", "0.25", "0.5")]
    assert p.arms[1].train.knobs == {"dropout": 0.25, "batchnorm": True, "width": 1.0}
    # one knob fixed: not an axis, but part of every arm's config (and so of its fingerprint)
    q = parse_params({"preset": "cnn4", "knobs": {"batchnorm": False}})
    assert [a.name for a in q.arms] == ["cnn4"] and q.arms[0].train.knobs["batchnorm"] is False


def test_run_settings_are_apart_from_what_an_arm_computes():
    p = parse_params({"device": "cpu", "eval_batch_size": 64, "deterministic": True, "parallel": 2})
    assert (p.run.device, p.run.eval_batch_size, p.run.deterministic, p.run.parallel) == ("cpu", 64, True, 2)
    assert not {"device", "eval_batch_size", "deterministic", "parallel"} & set(p.arms[0].train.model_dump())


def test_yaml_1_2_floats(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("lr: 1e-3\nweight_decay: 5E-4\n")
    assert read_yaml(f) == {"lr": 0.001, "weight_decay": 0.0005}
    assert load_params(f).arms[0].train.lr == 0.001


@pytest.mark.parametrize("raw, needle", [
    ({"modle": "cnn4"}, "modle: unknown key (did you mean 'model'?)"),
    ({"\n": 1}, "'\\n': unknown key"),
    ({"data": {"trian_limit": 5}}, "data.trian_limit: unknown key (did you mean 'train_limit'?)"),
    ({"model": "resnet81"}, "model = 'resnet81': expected one of"),
    ({"aug": "standrad"}, "did you mean 'standard'?"),
    ({"optimizer": "rmsprop"}, "optimizer = 'rmsprop': expected one of adam, adamw, sgd"),
    ({"lr": "fast"}, "lr = 'fast': expected a number > 0"),
    ({"lr": -1}, "lr = -1: expected a number > 0"),
    ({"lr": float("nan")}, "lr = nan: expected a number > 0"),
    ({"epochs": 0}, "epochs = 0: expected an integer in [1, 10000]"),
    ({"epochs": 2.5}, "epochs = 2.5"),
    ({"batch_size": True}, "batch_size = True"),
    ({"compile": "yes"}, "compile = 'yes': expected true or false"),
    ({"momentum": 1.0}, "momentum = 1.0"),
    ({"seeds": []}, "seeds = []"),
    ({"seeds": [1, 1]}, "distinct seeds"),
    ({"seeds": {"min": 2, "max": 4}}, "seeds.halfwidth: missing; expected a number > 0 and <= 100"),
    ({"seeds": {"min": 3, "max": 2, "halfwidth": 1}}, "seeds.max = 2: expected an integer >= seeds.min (3)"),
    ({"seeds": {"min": 1, "halfwidth": 1}}, "seeds.min = 1"),
    ({"seeds": {"halfwidth": 1, "mx": 5}}, "seeds.mx: unknown key (did you mean 'max'?)"),
    ({"aug": []}, "aug = []: expected a non-empty list"),
    ({"device": "tpu"}, "device = 'tpu': expected auto, cpu, cuda or cuda:N"),
    ({"eval_batch_size": "big"}, "eval_batch_size = 'big': expected auto or an integer in [1, 1048576]"),
    ({"eval_batch_size": 0}, "eval_batch_size = 0: expected auto or an integer"),
    ({"parallel": "max"}, "parallel = 'max': expected auto or an integer in [1, 64]"),
    ({"device": ["cpu", "auto"]}, "not an ablation axis"),
    ({"nesterov": True, "optimizer": "adam"}, "only sgd has Nesterov momentum"),
    ({"max_lr": 0.1}, "only the onecycle schedule uses it"),
    ({"data": {"sha256": "abc"}}, "data.sha256 = 'abc': expected 64 hexadecimal digits"),
    ({"data": {"train_limit": 3}}, "data.train_limit = 3"),
    ({"report": {"baseline": "aug=cutout"}}, "report.baseline = 'aug=cutout': expected one of the arms"),
    ({"preset": "vgg"}, "preset = 'vgg'"),
    ({"knobs": {"dropot": 0.1}}, "knobs.dropot: unknown key (did you mean 'dropout'?)"),
    ({"knobs": {"dropout": 1.5}}, "knobs.dropout = 1.5: expected a number >= 0 and < 1"),
    ({"knobs": {"dropout": [0.1, 0.1]}}, "knobs.dropout = [0.1, 0.1]: expected distinct values"),
    ({"knobs": {"residual": False}}, "knobs.residual: model simple_cnn has no knob 'residual'"),
    ({"preset": "dilated_net", "knobs": {"dilation": 7}}, "knobs.dilation = 7: expected one of 1, 2, 3, 4"),
    ({"knobs": [1]}, "knobs = [1]: expected a mapping"),
    ([1, 2], "expected a mapping"),
    ({"study": "."}, "study = '.': expected a name of up to 100 letters, digits, '.', '_' or '-' (100 bytes in"),
    ({"study": "\u00e9" * 60}, "(100 bytes in UTF-8)"),  # 60 letters, 120 bytes: no report folder could hold it
    ({"knobs": {"width": 1e-9}}, "knobs.width = 1e-09: expected"),  # layers of one channel: not meant
    ({"study": ".."}, "study = '..': expected a name"),
    ({"study": ""}, "study = '': expected a name"),
    ({"study": ".hidden"}, "study = '.hidden': expected a name"),
    ({"study": "a/b"}, "study = 'a/b': expected a name"),
    ({"seeds": [[0] * 1000] * 1000}, "seeds = [[0, 0, 0, 0, ...], [0, 0, 0, 0, ...], [0, 0, 0, 0, ...], "),
])
def test_bad_input_is_one_clear_line(raw, needle):
    with pytest.raises(ConfigError) as e:
        parse_params(raw)
    msg = str(e.value)
    assert needle in msg
    assert "\n" not in msg


def test_a_bad_value_is_shown_in_a_few_items_however_large_it_is():
    with pytest.raises(ConfigError) as e:
        parse_params({"lr": [[1.5] * 10_000] * 10_000, "seeds": [0]})
    assert len(str(e.value)) < 300


def test_a_yaml_alias_is_refused_before_it_expands(tmp_path):
    """A 1 kB file of nested aliases (an 'alias bomb') would expand to 9^8 strings."""
    import time

    lines = ['a0: &a0 ["xxxxxxxxxx","xxxxxxxxxx","xxxxxxxxxx","xxxxxxxxxx","xxxxxxxxxx",'
             '"xxxxxxxxxx","xxxxxxxxxx","xxxxxxxxxx","xxxxxxxxxx"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (tmp_path / "params.yaml").write_text("\n".join(lines) + "\nseeds: [0]\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_params(tmp_path / "params.yaml")
    assert time.perf_counter() - t0 < 2
    assert str(e.value) == f"{tmp_path / 'params.yaml'}: line 2: a YAML alias (*a0); params take plain values, " \
                           f"written out"


def test_a_refused_study_name_stops_the_train_stage_before_anything_is_written(tmp_path, prepared):
    from tests.conftest import env

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"study": "..", "seeds": [0], "epochs": 1}))
    out = subprocess.run([sys.executable, "-m", "pipeline.train", "--data", str(prepared), "--no-mlflow"],
                         cwd=tmp_path, env=env({"PYTHONPATH": str(REPO)}), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("error: params.yaml: study = '..': expected a name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize(("raw", "folder"), [
    ({}, "simple_cnn"),
    ({"aug": ["none", "standard"], "epochs": 30, "knobs": {"dropout": 0.25}}, "simple_cnn"),  # the preset's own
    ({"aug": "none"}, "simple_cnn,aug=none"),
    ({"data": {"train_limit": 2000}, "epochs": 2}, "simple_cnn,train_limit=2000,epochs=2"),
    ({"lr": 0.01}, "simple_cnn,lr=0.01"),
    ({"knobs": {"dropout": 0.5}}, "simple_cnn,dropout=0.5"),
    ({"study": "dropout", "knobs": {"dropout": [0.0, 0.25, 0.5]}}, "dropout"),  # a named study is what it sets
    ({"study": "dropout", "knobs": {"dropout": [0.0, 0.25, 0.5]}, "epochs": 2}, "dropout,epochs=2"),
    ({"study": "x", "data": {"test_limit": 100, "subset_seed": 3}}, "x,test_limit=100,subset_seed=3"),
    ({"seeds": [0, 1, 2, 3, 4, 5]}, "simple_cnn"),  # the study's own seeds
    ({"seeds": [0, 1]}, "simple_cnn,seeds=0+1"),
    ({"seeds": 7}, "simple_cnn,seeds=7"),
    ({"seeds": list(range(10))}, "simple_cnn,seeds=0-9"),
    ({"study": "dropout", "seeds": [0, 2, 4], "epochs": 2}, "dropout,epochs=2,seeds=0+2+4"),
    ({"seeds": {"min": 3, "max": 10, "halfwidth": 1}}, "simple_cnn,seeds=3to10,halfwidth=1"),
])
def test_a_report_goes_to_its_study_only_when_the_run_is_that_study(raw, folder):
    """A quick run (a data subset, fewer epochs, fewer or other seeds), a subset of the
    arms or another recipe writes its report beside the study's, never over it."""
    assert parse_params(raw).report_name == folder


def test_seeds_on_demand_start_with_the_minimum():
    p = parse_params({"seeds": {"min": 2, "max": 5, "halfwidth": 1.5}})
    assert p.seeds == (0, 1)
    assert (p.seed_plan.min, p.seed_plan.max, p.seed_plan.halfwidth, p.seed_plan.confidence) == (2, 5, 1.5, 0.95)
    assert parse_params({"seeds": [3, 4]}).seed_plan is None


def test_errors_name_the_file(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("epochs: [\n")
    with pytest.raises(ConfigError, match=r"params.yaml: not valid YAML at line"):
        load_params(f)
    f.write_text("epochs: -3\n")
    with pytest.raises(ConfigError, match=r"params.yaml: epochs = -3"):
        load_params(f)


def test_validating_params_loads_no_torch():
    code = ("import sys; from pipeline.core.config import load_params; load_params('params.yaml'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_dvc_yaml_reruns_training_for_every_training_key_and_only_those():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    train = set(stages["train"]["params"])
    assert set(TRAIN_KEYS) | {"knobs", "study", "preset", "seeds", "parallel", "device", "eval_batch_size",
                              "deterministic", "cluster"} <= train
    assert {"data.train_limit", "data.test_limit", "data.subset_seed"} <= train
    assert not any(k.startswith("report") for k in train)  # a report setting never retrains
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for stage in stages.values():
        for key in stage.get("params", []):  # DVC needs every tracked key present in params.yaml
            node = params
            for part in key.split("."):
                assert part in node, key
                node = node[part]


def test_a_presets_fixed_knob_applies_only_where_the_model_has_it():
    """The simple_cnn preset fixes dropout; a study that swaps in a model without
    dropout still works, while dropout asked for in params.yaml must fit every model."""
    p = parse_params({"seeds": [0]})
    assert {a.train.knobs["dropout"] for a in p.arms} == {0.25}
    p = parse_params({"seeds": [0], "model": ["simple_cnn", "resnet18"]})
    knobs = {a.train.model: a.train.knobs for a in p.arms}
    assert knobs["simple_cnn"]["dropout"] == 0.25 and "dropout" not in knobs["resnet18"]
    assert parse_params({"seeds": [0], "knobs": {"dropout": 0.3}}).arms[0].train.knobs["dropout"] == 0.3
    with pytest.raises(ConfigError, match="model resnet18 has no knob 'dropout'"):
        parse_params({"seeds": [0], "model": "resnet18", "knobs": {"dropout": 0.3}})


def test_names_fit_the_file_system_and_say_what_ran():
    """A long seed list names its folder by a count and a digest (the list is in the
    report); a subset limit above the data's size is the whole split, named by what ran."""
    from pipeline.core.config import fit_to_data

    many = parse_params({"seeds": list(range(0, 256, 4))})
    assert re.fullmatch(r"simple_cnn,seeds=64x[0-9a-f]{8}", many.report_name)
    assert len(parse_params({"seeds": list(range(1000, 1064))}).report_name.encode()) <= 255  # a range
    big = parse_params({"data": {"train_limit": 999_999, "test_limit": 500}})
    assert big.report_name == "simple_cnn,train_limit=999999,test_limit=500"
    fitted = fit_to_data(big, 50_000, 10_000)
    assert fitted.data.train_limit is None and fitted.report_name == "simple_cnn,test_limit=500"
    assert fit_to_data(parse_params({"data": {"train_limit": 60_000}}), 50_000, 10_000).report_name == "simple_cnn"


def test_a_study_no_one_can_mean_asks_for_a_flag_and_says_how_long(tmp_path, prepared):
    from pipeline.core.config import too_large
    from tests.conftest import env

    params = parse_params({"seeds": list(range(10_000))})
    said = too_large(params, 50_000)
    assert said and "20,000 runs (2 arm(s) x 10,000 seeds), about 4,167 h" in said and "--large" in said
    assert too_large(parse_params({"seeds": list(range(12))}), 50_000) is None
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seeds": list(range(600))}))
    out = subprocess.run([sys.executable, "-m", "pipeline.train", "--data", str(prepared), "--no-mlflow"],
                         cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "CIFAR_ABLATE_LARGE=1" in out.stderr, out.stderr
    assert not (tmp_path / "runs").exists()
