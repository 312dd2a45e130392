"""Stage `report`: the pure report model and its two renderings, on made-up
studies (no training), and once end to end on a real small study.

Checks every section in both renderings, the tables' numbers against the
summary, the one significance rule (Holm-adjusted with several arms), power
stated with every "no significant difference", per-class marks only where the
seeds support them, the data named as it is, the figures drawn once, and the
one-line failure that leaves no reports/ folder.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core import stats
from pipeline.core.config import parse_params
from pipeline.core.jobs import HistoryRow
from pipeline.core.study import StudyRecord, StudyRun
from pipeline.evaluate.contracts import ModelFacts, Predictions
from pipeline.core.dataset import CLASSES
from pipeline.evaluate import core
from pipeline.report import build, stage
from pipeline.report.render import md_escape, render_html, render_markdown

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- made-up studies


def fake_inputs(accs: dict[str, list[float]], class_shift: dict[str, dict[int, float]] | None = None,
                images_per_class: int = 100, data_name: str = "CIFAR-10 (JPEG mirror)", seed: int = 0,
                knobs: dict[str, dict] | None = None, best: bool = False, best_on: str = "test",
                estimates: dict[str, list[float]] | None = None, primary: str | None = None,
                margin: float | None = None) -> build.Inputs:
    """A study whose arm x seed test accuracies are `accs` (per-class accuracies
    around them, shifted by `class_shift[arm][class]`), as the evaluate stage
    would summarise it; with `best`, a best checkpoint (epoch 2) beside the last; with
    `estimates`, each run's accuracy as tested is another (report.mean_of_last 2)."""
    rng = np.random.default_rng(seed)
    arms = list(accs)
    seeds = list(range(len(next(iter(accs.values())))))
    labels = np.repeat(np.arange(10), images_per_class)
    axes = {a: dict(kv.split("=") for kv in a.split(",")) for a in arms}  # "aug=none,dropout=0.0"
    values = {k: list(dict.fromkeys(axes[a][k] for a in arms)) for k in axes[arms[0]]}
    params = parse_params({"study": "made-up", "seeds": seeds, "aug": values.pop("aug"), "epochs": 3,
                           "knobs": {k: [float(v) for v in vs] for k, vs in values.items()}})
    evals = {}
    for arm in arms:
        for s in seeds:
            p = np.full(10, accs[arm][s])
            for k, d in (class_shift or {}).get(arm, {}).items():
                p[k] += d
            correct = rng.random(len(labels)) < p[labels]
            preds = np.where(correct, labels, (labels + 1 + rng.integers(0, 9, len(labels))) % 10)
            ev = core.checkpoint_eval(arm=arm, seed=s, which="last", epoch=3, test_preds=preds, test_y=labels,
                                      test_loss=1.0, train_acc=0.9, train_loss=0.3, running_acc=0.85, top_n=6)
            evals[(arm, s, "last")] = (ev, Predictions(preds, preds == labels,
                                                       rng.random(len(labels)).astype(np.float32), labels))
            if best:
                ev = core.checkpoint_eval(arm=arm, seed=s, which="best", epoch=2, test_preds=preds, test_y=labels,
                                          test_loss=1.0, train_acc=0.9, train_loss=0.3, running_acc=0.85, top_n=6)
                evals[(arm, s, "best")] = (ev, evals[(arm, s, "last")][1])
    facts = {a: ModelFacts(model="simple_cnn", knobs=(knobs or {}).get(a, {"dropout": 0.5}), params=545_290,
                           trainable_params=545_290, flops=12_260_000, macs=6_130_000, flops_convention="2 x MACs",
                           receptive_field=10, layers=[]) for a in arms}
    declared = {"estimates": estimates, "estimate": "the mean test accuracy of the last 2 epochs"} if estimates else {}
    summary = core.compare(evals, arms, seeds, arms[0], 0.95, 200, 6, labels, facts, axes, best_on=best_on,
                           primary=primary, margin=margin, **declared)
    history = [HistoryRow(epoch=e, train_loss=1.0 / e, train_acc=0.5 + 0.1 * e, test_loss=1.0 / e,
                          test_acc=0.4 + 0.1 * e, lr=1e-3, epoch_seconds=1.0, images_per_second=100.0)
               for e in (1, 2, 3)]
    record = StudyRecord(study="made-up", arms=arms, seeds=seeds, seeds_reason="as listed in params.yaml",
                         runs=[StudyRun(arm=a, seed=s, restored=False, fingerprint="f" * 64, trained_at="t",
                                        code_version="abc") for a in arms for s in seeds], device="cpu")
    return build.Inputs(
        params=params, params_text="seeds: [0]\n", record=record, summary=summary,
        histories={a: {s: history for s in seeds} for a in arms},
        diagnostics={a: None for a in arms},
        predictions={a: evals[(a, 0, "last")][1] for a in arms}, per_seed=[ev for ev, _ in evals.values()],
        filters={a: rng.random((32, 3, 3, 3)).astype(np.float32) for a in arms},
        test_images=rng.integers(0, 255, (len(labels), 3, 32, 32), dtype=np.uint8),
        data_name=data_name, data_sha256="d" * 64, n_train=50_000, tracking={}, code_version="abc",
        dvc_experiment="workspace", generated="2026-11-25 00:00 UTC")


def render(inp: build.Inputs, figures: bool = False) -> tuple[str, str]:
    report = build.build_report(inp)
    images = stage.draw_figures(report, None) if figures else {f.name: PNG_MAGIC for f in report.figures()}
    return render_markdown(report), render_html(report, images)


class Tables(HTMLParser):
    """{table id: rows of cell texts (header row first)} of an HTML page."""

    def __init__(self, page: str):
        super().__init__()
        self.tables, self._id, self._row, self._cell = {}, None, None, None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._id = dict(attrs).get("id")
            self.tables[self._id] = []
        elif tag == "tr" and self._id is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._id].append(self._row)
            self._row = None
        elif tag == "table":
            self._id = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def md_table(md: str, header_start: str) -> list[list[str]]:
    """The Markdown table whose header row starts with `header_start`, cells unescaped."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
        rows.append([re.sub(r"\\(.)", r"\1", c.strip()) for c in cells])
    return [rows[0]] + rows[2:]  # without the alignment row


NUM = r"([+-]?\d+\.\d{2}|n/a)"


def pm(cell: str):
    m = re.fullmatch(rf"{NUM} ± {NUM}", cell)
    assert m, cell
    return tuple(None if g == "n/a" else float(g) for g in m.groups())


def close(shown, value, scale=100.0, digits=2) -> bool:
    if value is None or shown is None:
        return shown is value
    return abs(shown - value * scale) <= 0.5 * 10 ** -digits + 1e-9


def headline(page: str) -> str:
    return html.unescape(page.split("<h2>1. Headline</h2>")[1].split("<h2>")[0])


# --------------------------------------------------------------------------- the model and the renderings


def test_every_section_in_both_renderings_in_order():
    md, page = render(fake_inputs({"aug=none": [0.70, 0.71, 0.72], "aug=standard": [0.74, 0.75, 0.76]}))
    for i, title in enumerate(build.SECTIONS, 1):
        assert f"\n## {i}. {title}\n" in md
        assert f"<h2>{i}. {title}</h2>" in page
    positions = [page.index(f"<h2>{i}. {t}</h2>") for i, t in enumerate(build.SECTIONS, 1)]
    assert positions == sorted(positions)


def test_table_numbers_equal_the_summary_in_both_renderings():
    inp = fake_inputs({"aug=none": [0.70, 0.71, 0.72], "aug=standard": [0.74, 0.75, 0.73]})
    md, page = render(inp)
    last = inp.summary.checkpoints["last"]
    acc = Tables(page).tables["acc-table"]
    assert acc[1:] == md_table(md, "| Arm | n seeds")[1:]
    assert len(acc) == 3 and all(len(row) == 2 + len(build.METRICS) for row in acc[1:])
    for row in acc[1:]:
        entry = last.arms[row[0].removesuffix(" (baseline)")]
        for cell, (key, _) in zip(row[2:], build.METRICS):
            mean, half = pm(cell)
            assert close(mean, getattr(entry, key).mean) and close(half, getattr(entry, key).ci.half_width)
    delta = Tables(page).tables["delta-table"]
    assert delta[1:] == md_table(md, "| Arm | Δ test acc")[1:]
    c = last.comparisons["aug=standard"]
    shown = [float(x) for x in re.findall(r"[+-]?\d+\.\d{2}", delta[1][1])]
    assert len(shown) == 3  # the numbers compared: a difference and its interval, not "n/a"
    assert all(close(s, v) for s, v in zip(shown, (c.welch.diff, c.welch.ci.low, c.welch.ci.high)))
    assert re.fullmatch(r"[<\d. ]+", delta[1][2]) and delta[1][2] == core.stats.format_p(c.welch.p)
    classes = Tables(page).tables["class-table"]
    assert len(classes) == 1 + len(CLASSES)
    for k, row in enumerate(classes[1:]):
        assert row[0] == CLASSES[k]
        assert close(float(row[1]), last.arms["aug=none"].per_class_acc[k])


def test_a_clear_gain_is_said_and_coloured():
    inp = fake_inputs({"aug=none": [0.70, 0.71, 0.72], "aug=standard": [0.76, 0.77, 0.78]})
    md, page = render(inp)
    c = inp.summary.checkpoints["last"].comparisons["aug=standard"]
    assert c.verdict in headline(page) and "significant (p = " in c.verdict
    assert "**helped**" in md and 'class="tone-good"' in page


def test_no_significant_difference_states_what_could_have_been_detected():
    inp = fake_inputs({"aug=none": [0.70, 0.73, 0.71], "aug=standard": [0.72, 0.70, 0.71]})
    md, page = render(inp)
    c = inp.summary.checkpoints["last"].comparisons["aug=standard"]
    assert "no significant difference" in md and "not significant" in c.verdict
    text = headline(page)
    assert f"only differences of {core.stats.points(c.power.detectable, signed=False)} points or more" in text
    assert f"would need about {c.power.seeds_for_target} seeds per arm" in text
    assert f"Welch's test, which the verdicts use, finds that difference in {c.power.welch_power * 100:.0f}%" in text
    assert (f"from 4 degrees of freedom its 95% CI is {core.stats.points(c.power.sd_ci.low, signed=False)} to "
            f"{core.stats.points(c.power.sd_ci.high, signed=False)} points") in text


def test_with_several_arms_the_verdict_follows_the_holm_adjusted_p():
    inp = fake_inputs({"aug=none": [0.700, 0.705, 0.710], "aug=standard": [0.712, 0.716, 0.720],
                       "aug=strong": [0.700, 0.708, 0.703]}, seed=3)
    last = inp.summary.checkpoints["last"]
    md, page = render(inp)
    for arm, c in last.comparisons.items():
        assert c.p_adjusted >= c.welch.p
        word = "significant" if c.p_adjusted < 0.05 else "not significant"
        assert f", {word} (Holm-adjusted p = {core.stats.format_p(c.p_adjusted)})" in c.verdict
        assert c.verdict in headline(page)
    assert "p (Holm)" in Tables(page).tables["delta-table"][0]


def test_per_class_marks_only_where_the_seeds_support_them():
    strong = {"aug=standard": {3: 0.15}}  # a large gain on "cat" only
    inp = fake_inputs({"aug=none": [0.70, 0.71, 0.69, 0.70, 0.71], "aug=standard": [0.70, 0.69, 0.71, 0.70, 0.70]},
                      class_shift=strong, images_per_class=400)
    md, page = render(inp)
    rows = Tables(page).tables["class-table"][1:]
    marked = [r[0] for r in rows if r[3].endswith("*")]
    per_class = inp.summary.checkpoints["last"].comparisons["aug=standard"].per_class
    assert marked == [CLASSES[c.group] for c in per_class if c.p_adjusted is not None and c.p_adjusted < 0.05]
    assert "cat" in marked and len(marked) <= 2
    assert "a per-class difference holds over seeds for cat" in md


def test_the_data_is_named_as_it_is_and_flops_and_macs_both_stated():
    inp = fake_inputs({"aug=none": [0.7, 0.71], "aug=standard": [0.72, 0.73]})
    inp.data_encoding = "JPEG quality 75, 4:2:0 chroma subsampling"
    md, page = render(inp)
    assert "on **CIFAR-10 (JPEG mirror)** (JPEG quality 75, 4:2:0 chroma subsampling)" in md
    described = json.loads(build.build_report(inp).files["data.json"])  # beside the report, for an audit
    assert described["name"] == "CIFAR-10 (JPEG mirror)" and described["encoding"] == inp.data_encoding
    assert (described["data_sha256"], described["training_images"], described["test_images"]) == ("d" * 64,
                                                                                                 50_000, 1000)
    facts = Tables(page).tables["facts-table"]
    assert facts[0][4:6] == ["FLOPs", "MACs"] and facts[1][4] == "12.26 M" and facts[1][5] == "6.13 M"
    assert "counts multiply-accumulates" in page


def test_model_facts_show_what_a_knob_changed():
    inp = fake_inputs({"aug=none": [0.7, 0.71], "aug=standard": [0.72, 0.73]},
                      knobs={"aug=none": {"dropout": 0.5}, "aug=standard": {"dropout": 0.25}})
    _, page = render(inp)
    rows = Tables(page).tables["facts-table"]
    assert rows[1][2] == "-" and rows[2][2] == "dropout=0.25"


def test_a_crossed_study_shows_each_factor_within_the_others_and_their_interaction():
    # augmentation helps by 6 points without dropout and not at all with it
    inp = fake_inputs({"aug=none,dropout=0.0": [0.70, 0.71, 0.70], "aug=standard,dropout=0.0": [0.76, 0.77, 0.76],
                       "aug=none,dropout=0.5": [0.72, 0.73, 0.72], "aug=standard,dropout=0.5": [0.72, 0.72, 0.73]},
                      images_per_class=1000)
    md, page = render(inp)
    s = inp.summary
    assert [(e.factor, e.value, e.at) for e in s.effects] == [
        ("aug", "standard", {"dropout": "0.0"}), ("aug", "standard", {"dropout": "0.5"}),
        ("dropout", "0.5", {"aug": "none"}), ("dropout", "0.5", {"aug": "standard"})]
    rows = Tables(page).tables["effects-table"]
    assert len(rows) == 1 + len(s.effects)
    for row, e in zip(rows[1:], s.effects):
        assert row[:3] == [e.factor, f"{e.value} vs {e.reference}", ", ".join(f"{k}={v}" for k, v in e.at.items())]
        assert close(float(row[3].split()[0].replace("\u2212", "-")), e.test_acc.diff)
        assert row[6] == ("yes" if e.p_adjusted is not None and e.p_adjusted < 0.05 else "no")
    assert rows[1][6] == "yes" and rows[2][6] == "no"  # the seeds support the gain at dropout 0 only
    (inter,) = s.interactions
    assert inter.factor == "aug" and inter.other == "dropout" and inter.contrast.p < 0.05
    m = [np.mean(v) for v in ([0.72, 0.72, 0.73], [0.72, 0.73, 0.72], [0.76, 0.77, 0.76], [0.70, 0.71, 0.70])]
    assert abs(inter.contrast.ci.estimate - (m[0] - m[1] - m[2] + m[3])) < 0.02  # accuracies drawn around these
    irows = Tables(page).tables["interactions-table"]
    assert irows[1][:2] == ["aug=standard vs none", "dropout=0.5 vs 0.0"] and irows[1][6] == "yes"
    # the report opens on the answer: every effect and interaction in one table, and the interaction plot
    summary = Tables(page).tables["summary-table"]
    assert summary[0][:2] == ["Effect", "Other factors at"] and len(summary) == 1 + len(s.effects) + 1
    assert summary[1][0] == "aug=standard vs none" and summary[1][5] == "helped"
    assert summary[2][5] == "no significant difference"
    assert summary[-1][0] == "interaction: aug=standard x dropout=0.5" and summary[-1][5] == "depends"
    assert page.index('id="summary-table"') < page.index("<h2>2. ")
    assert "figures/interaction.png" in md.split("## 2. ")[0]
    assert "Each factor within the others" in md


def test_a_study_with_one_axis_has_no_factor_section():
    _, page = render(fake_inputs({"aug=none": [0.7, 0.71], "aug=standard": [0.72, 0.73]}))
    assert not {"effects-table", "summary-table"} & set(Tables(page).tables) and "interaction.png" not in page


def test_single_seed_study_shows_the_warning_and_makes_no_claim():
    md, page = render(fake_inputs({"aug=none": [0.7], "aug=standard": [0.8]}))
    assert build.SINGLE_SEED_WARNING in md and build.SINGLE_SEED_WARNING in page
    assert "single seed: no interval; not a finding" in headline(page)
    for row in Tables(page).tables["acc-table"][1:]:
        assert row[1] == "1" and all(pm(cell)[1] is None for cell in row[2:])


def test_html_is_self_contained_and_every_image_is_an_embedded_png():
    md, page = render(fake_inputs({"aug=none": [0.7, 0.71], "aug=standard": [0.72, 0.73]}), figures=True)
    srcs = re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)
    refs = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", md)
    assert len(srcs) == len(refs) >= 10
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(png)) as im:
            im.verify()
    assert all(ref.startswith("figures/") for ref in refs)
    assert "<script" not in page.lower()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page, re.I)
    assert "<link" not in page.lower() and "@import" not in page and "url(" not in page


def test_figures_are_drawn_once(tmp_path, monkeypatch):
    from pipeline.report import figures

    report = build.build_report(fake_inputs({"aug=none": [0.7, 0.71], "aug=standard": [0.72, 0.73]}))
    first = stage.draw_figures(report, tmp_path)
    calls = []
    for name in {f.draw for f in report.figures()}:
        monkeypatch.setattr(figures, name, lambda *a, _n=name, **k: calls.append(_n))
    again = stage.draw_figures(report, tmp_path)
    assert calls == [] and again == first


def test_a_new_report_keeps_the_studys_plan_and_records_and_nothing_else(tmp_path):
    """reports/<study>/ is replaced whole by a new report, except what the study committed
    beside it: its analysis plan and its runs' records (the same files, not copies)."""
    report = build.build_report(fake_inputs({"aug=none": [0.7, 0.71], "aug=standard": [0.72, 0.73]}))
    out = tmp_path / "reports" / "study"
    (out / "records" / "aug=none").mkdir(parents=True)
    (out / "plan.yaml").write_text("study: study\n")
    (out / "records" / "aug=none" / "seed=0.npz").write_bytes(b"record")
    (out / "stale.md").write_text("an earlier report's file")
    before = {f.relative_to(out): f.stat().st_ino for f in out.rglob("*") if f.is_file() and f.name != "stale.md"}
    stage.write_report(report, out, tmp_path / "figures")
    after = {f.relative_to(out): f.stat().st_ino for f in out.rglob("*") if f.is_file()}
    assert {k: after[k] for k in before} == before
    assert "stale.md" not in {f.name for f in after} and Path("report.md") in after
    assert sorted(p.name for p in out.parent.iterdir()) == ["study"]  # no temporary left


def test_a_studys_own_run_says_its_seeds_are_its_plans():
    from types import SimpleNamespace as NS

    def reason(plan, variant):
        return build._seeds_reason(NS(plan=plan, params=NS(variant=variant),
                                      record=NS(seeds_reason="as listed in params.yaml")))

    assert reason("reports/s/plan.yaml", ()) == "as registered in reports/s/plan.yaml"
    assert reason("reports/s/plan.yaml", ("epochs=3",)) == "as listed in params.yaml"  # not the study's own run
    assert reason(None, ()) == "as listed in params.yaml"
    inp = fake_inputs({"aug=none": [0.7, 0.71], "aug=standard": [0.72, 0.73]})
    assert f"Seeds: {build._seeds_reason(inp)}." in render_markdown(build.build_report(inp))


def test_markdown_escapes_and_html_escapes():
    assert md_escape("a|b_c*<x> p < 0.001") == r"a\|b\_c\*\<x> p < 0.001"
    report = build.Report("t", [build.Section("1. S", "s", [build.Table(["a|b"], [["<script>"]])])])
    assert "<script>" not in render_html(report, {}) and "&lt;script&gt;" in render_html(report, {})
    assert r"| a\|b |" in render_markdown(report)


# --------------------------------------------------------------------------- end to end, on a real small study


@pytest.mark.slow
def test_the_stages_write_a_report_that_matches_the_evaluation(study_files):
    p = study_files["two"]
    md = (p["reports"] / "report.md").read_text()
    page = (p["reports"] / "report.html").read_text()
    from pipeline.evaluate.contracts import StudySummary as Summary

    summary = Summary.model_validate_json((p["evaluation"] / "summary.json").read_text())
    for c in summary.checkpoints["last"].comparisons.values():
        assert c.verdict in headline(page)
    assert len(list((p["reports"] / "figures").glob("*.png"))) == len(re.findall("<img ", page))
    assert "on **synthetic CIFAR-shaped images**" in md


@pytest.mark.slow
def test_a_study_declared_on_its_last_epochs_is_tested_on_them(tmp_path, prepared, monkeypatch):
    """report.mean_of_last 2 through the real stages: summary.json, metrics/study.json
    and the report hold each run's mean test accuracy over its last 2 epochs."""
    from pipeline.core.contracts import read_history, run_dir
    from pipeline.evaluate.contracts import StudySummary as Summary

    from tests.conftest import run_study

    monkeypatch.chdir(tmp_path)
    p = run_study(tmp_path, prepared, seeds=(0, 1), epochs=2, report={"bootstrap": 200, "mean_of_last": 2})
    summary = Summary.model_validate_json((p["evaluation"] / "summary.json").read_text())
    for arm, values in summary.estimates.items():
        assert values == [pytest.approx(np.mean([r.test_acc for r in read_history(
            run_dir(p["runs"], arm, seed) / "history.csv")[-2:]])) for seed in (0, 1)]
    headline = json.loads((p["metrics"] / "study.json").read_text())
    assert headline["aug=standard/test_acc"] == round(100 * np.mean(summary.estimates["aug=standard"]), 2)
    assert "Each run's accuracy is the mean test accuracy of the last 2 epochs" in (p["reports"] / "report.md").read_text()


@pytest.mark.slow
def test_missing_evaluation_fails_in_one_line_and_writes_nothing(study_files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    p = study_files["two"]
    with pytest.raises(SystemExit) as exc:
        stage.main(["--params", str(p["params"]), "--data", str(p["data"]), "--runs", str(p["runs"]),
                    "--evaluation", str(tmp_path / "evaluation"), "--out", str(tmp_path / "reports")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "evaluate" in err
    assert list(tmp_path.iterdir()) == []  # no reports/, no temporary left behind


@pytest.mark.slow
def test_a_failed_render_keeps_the_previous_report(study_files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = study_files["two"]
    out = tmp_path / "reports" / "report-test"
    shutil.copytree(p["reports"], out)
    before = (out / "report.html").read_bytes()

    def boom(*_a, **_k):
        raise RuntimeError("render failed")

    import pipeline.report.render as render_module

    monkeypatch.setattr(render_module, "render_html", boom)
    with pytest.raises(RuntimeError):
        stage.main(["--params", str(p["params"]), "--data", str(p["data"]), "--runs", str(p["runs"]),
                    "--evaluation", str(p["evaluation"]), "--out", str(out.parent)])
    assert (out / "report.html").read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir() if x.name != ".cache") == ["reports"]


def test_the_curves_section_says_which_arms_still_rise_and_which_are_past_their_peak():
    inp = fake_inputs({"aug=none": [0.7, 0.71], "aug=standard": [0.72, 0.73]})
    peaked = [0.50, 0.60, 0.66, 0.70, 0.69, 0.68, 0.67, 0.66, 0.65, 0.645]  # peaks at epoch 4
    rising = [0.40, 0.50, 0.55, 0.60, 0.62, 0.64, 0.66, 0.68, 0.69, 0.71]
    row = lambda e, acc: HistoryRow(epoch=e, train_loss=0.5, train_acc=0.8, test_loss=1.0, test_acc=acc,
                                    lr=1e-3, epoch_seconds=1.0, images_per_second=100.0)
    inp.histories = {"aug=none": {s: [row(e + 1, a + 0.001 * s) for e, a in enumerate(peaked)] for s in (0, 1)},
                     "aug=standard": {s: [row(e + 1, a - 0.001 * s) for e, a in enumerate(rising)] for s in (0, 1)}}
    _, page = render(inp)
    rows = Tables(page).tables["trend-table"]
    assert rows[1][:2] == ["aug=none", "4, 4"] and rows[2][:2] == ["aug=standard", "10, 10"]
    assert float(rows[1][2].replace("\u2212", "-")) == pytest.approx(-5.5, abs=0.01)  # 0.645 - 0.70
    slope = np.polyfit(np.arange(5), rising[-5:], 1)[0] * 100
    assert float(rows[2][3].split()[0].replace("\u2212", "-").lstrip("+")) == pytest.approx(slope, abs=0.01)
    text = re.sub(r"<[^>]+>", "", html.unescape(page))
    assert "Peaked in the last 5 epochs in every seed, so possibly still improving: aug=standard." in text
    assert ("Peaked before the last 5 epochs in every seed, then lost (last - peak, mean): aug=none "
            f"({stats.points(-0.055)} points).") in text


def test_the_parent_runs_description_of_a_crossed_study_states_each_factor_and_interaction():
    from pipeline.evaluate.tracking import parent_description

    inp = fake_inputs({"aug=none,dropout=0.0": [0.70, 0.71, 0.70], "aug=standard,dropout=0.0": [0.76, 0.77, 0.76],
                       "aug=none,dropout=0.5": [0.72, 0.73, 0.72], "aug=standard,dropout=0.5": [0.72, 0.72, 0.73]})
    text = parent_description(inp.summary, inp.record, "reports/made-up/report.html")
    assert text.endswith(" The report: reports/made-up/report.html.")
    for e in inp.summary.effects:
        assert f"{e.factor}={e.value} vs {e.reference} at " in text and e.verdict in text
    (i,) = inp.summary.interactions
    assert f"Interaction: the effect of aug=standard (vs none) at dropout=0.5 minus at dropout=0.0: " \
           f"{i.verdict}." in text


# --------------------------------------------------------------------------- one family, tested once


def test_a_checkpoint_chosen_on_the_test_set_is_described_never_tested():
    """The best checkpoint is picked by test accuracy: its differences get intervals
    and no p, no verdict of significance, whatever their size."""
    inp = fake_inputs({"aug=none": [0.60, 0.61, 0.60], "aug=standard": [0.80, 0.81, 0.80]}, best=True)
    best = inp.summary.checkpoints["best"].comparisons["aug=standard"]
    assert best.p_adjusted is None and best.per_class == () and best.paired_bootstrap is None
    assert "descriptive only: the checkpoint was chosen on the test set" in best.verdict
    assert "significant" not in best.verdict
    last = inp.summary.checkpoints["last"].comparisons["aug=standard"]
    assert "significant" in last.verdict and last.p_adjusted < 0.05  # the same numbers at the last are tested
    _, page = render(inp)
    rows = Tables(page).tables["best-table"]
    assert rows[2][2] == best.verdict and "chosen by test accuracy: optimistic; described, never tested" in page
    # chosen on validation images: not optimistic, still not a second p for the same hypothesis
    inp = fake_inputs({"aug=none": [0.60, 0.61, 0.60], "aug=standard": [0.80, 0.81, 0.80]}, best=True,
                      best_on="validation")
    best = inp.summary.checkpoints["best"].comparisons["aug=standard"]
    assert best.p_adjusted is None and "descriptive only: chosen on validation" in best.verdict
    assert "chosen by validation accuracy; described, never tested" in render(inp)[1]


CROSSED = {"aug=none,dropout=0.0": [0.70, 0.71, 0.70], "aug=standard,dropout=0.0": [0.73, 0.74, 0.72],
           "aug=none,dropout=0.5": [0.72, 0.73, 0.72], "aug=standard,dropout=0.5": [0.72, 0.72, 0.73]}


def test_one_hypothesis_has_one_adjusted_p_wherever_it_is_quoted():
    """A crossed 2 x 2 study: the family is fixed by the design (each factor's effect
    within the other, 2 + 2, and 1 interaction), Holm adjusts over all five, an effect
    that is also a comparison with the baseline quotes the same p, and the diagonal
    arm (both factors changed) is described, not tested."""
    inp = fake_inputs(CROSSED)
    s = inp.summary
    last = s.checkpoints["last"].comparisons
    assert len(s.family) == 5 and len(set(s.family)) == 5 and [f.name for f in s.families] == ["the study's"]
    assert not [h for h in s.family if "aug=standard,dropout=0.5 vs aug=none,dropout=0.0" in h]  # no diagonal
    diagonal = last["aug=standard,dropout=0.5"]
    assert diagonal.p_adjusted is None and diagonal.family is None and "not a hypothesis" in diagonal.verdict
    raw = [e.test_acc.p for e in s.effects] + [i.contrast.p for i in s.interactions]
    assert sorted(e.p_adjusted for e in s.effects) + [s.interactions[0].p_adjusted] != []
    expected = sorted(stats.adjust(raw, "holm"))
    quoted = sorted([e.p_adjusted for e in s.effects] + [i.p_adjusted for i in s.interactions])
    assert quoted == pytest.approx(expected)
    for e in s.effects:
        if e.reference_arm == s.baseline:
            assert e.p_adjusted == last[e.arm].p_adjusted and e.verdict == last[e.arm].verdict
    heads = core.headline(s, list(CROSSED))  # metrics/study.json, make results, the MLflow parent run
    for e in s.effects:
        key = f"{e.factor}={e.value}@" + ",".join(f"{k}={v}" for k, v in e.at.items()) + "/p_adj"
        assert stats.format_p(heads[key]) == stats.format_p(e.p_adjusted), key
    (i,) = s.interactions
    assert stats.format_p(heads["aug=standard x dropout=0.5/p_adj"]) == stats.format_p(i.p_adjusted)
    assert "aug=standard,dropout=0.5/p_adj" not in heads  # the diagonal arm: not a hypothesis
    md, page = render(inp)
    assert all(name in md for name in s.family)
    for e in s.effects:  # the effects table quotes the family's p
        row = next(r for r in Tables(page).tables["effects-table"][1:]
                   if r[1] == f"{e.value} vs {e.reference}" and r[2] == ", ".join(f"{k}={v}" for k, v in e.at.items()))
        assert row[5] == stats.format_p(e.p_adjusted)


def test_a_primary_factor_makes_its_effects_a_family_of_their_own():
    """report.primary: aug's effects within each dropout are the primary family (Holm
    over 2), the dropout effects and the interaction a secondary family (Holm over 3);
    power is stated at the threshold each comparison faces."""
    s = fake_inputs(CROSSED, primary="aug").summary
    assert [(f.name, len(f.hypotheses)) for f in s.families] == [("primary", 2), ("secondary", 3)]
    assert s.families[0].hypotheses == ["aug=standard vs aug=none at dropout=0.0",
                                        "aug=standard vs aug=none at dropout=0.5"]
    aug = [e for e in s.effects if e.factor == "aug"]
    assert [e.p_adjusted for e in aug] == pytest.approx(stats.adjust([e.test_acc.p for e in aug], "holm"))
    rest = [e for e in s.effects if e.factor == "dropout"]
    raw = [e.test_acc.p for e in rest] + [s.interactions[0].contrast.p]
    assert [e.p_adjusted for e in rest] + [s.interactions[0].p_adjusted] == pytest.approx(stats.adjust(raw, "holm"))
    assert {e.family for e in aug} == {"primary"} and s.interactions[0].family == "secondary"
    c = s.checkpoints["last"].comparisons["aug=standard,dropout=0.0"]
    assert c.family == "primary" and c.power.alpha == pytest.approx(0.05 / 2)


def test_an_equivalence_margin_adds_a_three_way_answer_to_each_tested_difference():
    """report.equivalence_margin 1 point: arms within it are equivalent, arms 5 points
    apart differ, three noisy seeds a side cannot tell (TOST, Holm within the family)."""
    near = {"aug=none": [0.700, 0.702, 0.698, 0.701, 0.699, 0.700],
            "aug=standard": [0.701, 0.699, 0.700, 0.702, 0.698, 0.700]}
    far = {"aug=none": near["aug=none"], "aug=standard": [0.75, 0.752, 0.748, 0.751, 0.749, 0.75]}
    few = {"aug=none": [0.70, 0.72, 0.68], "aug=standard": [0.71, 0.69, 0.73]}
    for accs, answer in ((near, "equivalent"), (far, "differs"), (few, "inconclusive")):
        inp = fake_inputs(accs, estimates=accs, margin=1.0)  # tested exactly on these accuracies
        c = inp.summary.checkpoints["last"].comparisons["aug=standard"]
        assert c.answer == answer, (answer, c)
        assert c.equivalence.margin == 0.01 and c.equivalence_p_adjusted == pytest.approx(c.equivalence.p)
        from pipeline.report.stage import answer as closing  # the run's closing lines say it too

        assert closing(inp, Path("r.html")).splitlines()[1].endswith(f"; {answer} within +-1 point(s)")
        md, _ = render(inp)
        assert f"Within +-1 point: **{answer}**" in md and "within +-1 point" in md, md[:3000]


def test_a_declared_estimate_is_what_every_answer_tests_and_quotes():
    """report.mean_of_last: the family's test, the headline metrics, the report's
    answer and its audit file all use the declared estimate, named; the per-class
    analysis stays on the last checkpoint."""
    checkpoints = {"aug=none": [0.70, 0.71, 0.72], "aug=standard": [0.70, 0.71, 0.72]}  # no difference at the last
    estimates = {"aug=none": [0.700, 0.705, 0.710], "aug=standard": [0.750, 0.755, 0.760]}  # a clear one over 2 epochs
    inp = fake_inputs(checkpoints, estimates=estimates)
    s = inp.summary
    c = s.checkpoints["last"].comparisons["aug=standard"]
    assert c.welch.diff == pytest.approx(0.05) and "significant" in c.verdict and c.p_adjusted < 0.05
    assert s.accuracy("aug=standard").mean == pytest.approx(0.755) and s.estimates == estimates
    assert abs(s.checkpoints["last"].arms["aug=standard"].test_acc.mean - 0.71) < 0.03  # the checkpoint's own
    assert len(c.per_class) == 10  # on the last checkpoint's predictions
    assert core.headline(s, list(checkpoints)) == {"aug=none/test_acc": 70.5, "aug=standard/test_acc": 75.5,
                                                   "aug=standard/delta": 5.0, "aug=standard/p_adj": float(f"{c.p_adjusted:.4g}"),
                                                   "n_seeds": 3}
    md, page = render(inp)
    assert "Each run's accuracy is the mean test accuracy of the last 2 epochs" in md
    assert "tested once, on the mean test accuracy of the last 2 epochs" in md
    assert "75.50% vs 70.50%" in md
    table = Tables(page).tables["acc-table"]
    assert table[0][-1] == "Tested acc %" and table[2][-1].startswith("75.50")
    rows = list(csv.DictReader(io.StringIO(build.build_report(inp).files["results.csv"])))
    assert [float(r["tested_acc"]) for r in rows if r["arm"] == "aug=standard"] == estimates["aug=standard"]
    # the default: the last checkpoint, as before
    plain = fake_inputs(checkpoints)
    assert plain.summary.estimate == "the last checkpoint's test accuracy"
    assert plain.summary.accuracy("aug=none") == plain.summary.checkpoints["last"].arms["aug=none"].test_acc
    assert "Tested acc %" not in render(plain)[1]


def test_the_evaluate_stage_averages_each_runs_last_k_epochs():
    from types import SimpleNamespace

    from pipeline.core.errors import PipelineError
    from pipeline.evaluate.stage import last_epochs_estimates

    def rows(accs, val=False):
        return [HistoryRow(epoch=e, train_loss=1.0, train_acc=0.9, test_loss=None if val else 1.0,
                           test_acc=None if val else a, lr=1e-3, epoch_seconds=1.0, images_per_second=1.0,
                           val_loss=1.0 if val else None, val_acc=a if val else None)
                for e, a in enumerate(accs, 1)]

    record = StudyRecord(study="s", arms=["a", "b"], seeds=[0, 1], seeds_reason="listed", runs=[], device="cpu")
    records = {(arm, seed): SimpleNamespace(meta=SimpleNamespace(history=rows(accs)))
               for arm, seed, accs in (("a", 0, [0.1, 0.5, 0.6, 0.7]), ("a", 1, [0.2, 0.3, 0.4, 0.8]),
                                       ("b", 0, [0.9, 0.9, 0.1, 0.2]), ("b", 1, [0.5, 0.5, 0.5, 0.5]))}
    got = last_epochs_estimates(records, record, 3)
    assert got["estimate"] == "the mean test accuracy of the last 3 epochs"
    assert got["estimates"] == {"a": [pytest.approx(0.6), pytest.approx(0.5)],
                                "b": [pytest.approx(0.4), pytest.approx(0.5)]}
    records[("b", 1)] = SimpleNamespace(meta=SimpleNamespace(history=rows([0.5] * 4, val=True)))  # on validation
    with pytest.raises(PipelineError, match=r"b seed=1 has no test accuracy for each of its last 3 "
                                            r"epochs \(report.mean_of_last 3\)"):
        last_epochs_estimates(records, record, 3)


def test_with_few_seeds_the_report_says_its_verdicts_rest_on_normality():
    """3 vs 3 seeds: no exact permutation test goes below p = 0.1 (2 of 20 relabellings);
    6 vs 6 can (2 of 924), so the caveat goes."""
    three = fake_inputs({"aug=none": [0.70, 0.71, 0.72], "aug=standard": [0.74, 0.75, 0.76]})
    assert "cannot go below p = 0.1, so every significant verdict here rests on" in render(three)[0]
    six = fake_inputs({"aug=none": [0.70, 0.71, 0.72] * 2, "aug=standard": [0.74, 0.75, 0.76] * 2})
    assert "permutation test" not in render(six)[0]
    # 4 seeds: 2/70 = 0.029 passes alpha alone, not Holm's first threshold over a 2 x 2 study's 5 hypotheses
    crossed = fake_inputs({"aug=none,dropout=0.0": [0.70, 0.71, 0.70, 0.72], "aug=standard,dropout=0.0": [0.76] * 4,
                           "aug=none,dropout=0.5": [0.72] * 4, "aug=standard,dropout=0.5": [0.72, 0.73, 0.72, 0.71]})
    assert len(crossed.summary.family) == 5 and "cannot go below p = 0.029" in render(crossed)[0]


def test_the_default_dropouts_history_comes_before_any_result():
    """The simple_cnn recipe does not state its dropout rate: the report tells, before
    any number, that the preset's rate was chosen after test results had been seen."""
    md, _ = render(fake_inputs({"aug=none": [0.70, 0.71, 0.72], "aug=standard": [0.74, 0.75, 0.76]}))
    headline = md.split("## 1. Headline")[1]
    choice = headline.index("**The preset's choices.** The recipe does not state its dropout rate.")
    assert "each time after test results had been seen" in headline
    assert choice < headline.index("**The hypothesis.**") < headline.index("**aug=standard** vs")
    assert not re.search(r"\d\.\d+%", headline[:choice])  # no accuracy before it


def test_the_report_states_its_hypothesis_and_one_arm_claims_no_test():
    md, _ = render(fake_inputs({"aug=none": [0.70, 0.71, 0.72], "aug=standard": [0.74, 0.75, 0.76]}))
    assert "**The hypothesis.** aug=standard vs aug=none. Each is tested once" in md
    # no plan: no claim that anything was fixed before the results
    assert "**No analysis plan.**" in md and "before any result" not in md.lower().replace("fixed before any result",
                                                                                         "")
    assert "fixed before any result" not in md.lower()
    md, _ = render(fake_inputs({"aug=none": [0.70, 0.71, 0.72]}))
    assert "With one arm there is no comparison, so no test." in md
    assert "Welch" not in md.split("## 2. ")[1].split("## 3. ")[0] and "bootstrap" not in md


def test_fixed_before_any_result_is_said_only_when_git_says_so():
    """The report's claim follows the plan's precedence (pipeline.core.analysis, from git
    ancestry): said when every record descends from the plan, refused otherwise."""
    import dataclasses

    inp = fake_inputs({"aug=none": [0.70, 0.71, 0.72], "aug=standard": [0.74, 0.75, 0.76]})
    fixed = dataclasses.replace(inp, precedence=("fixed before any result", "the plan's last change (abc) is an "
                                                 "ancestor of the commit that added each of the 6 records"),
                                plan="reports/made-up/plan.yaml", supersedes="an earlier report")
    md = render(fixed)[0]
    assert "**Fixed before any result.** The analysis plan reports/made-up/plan.yaml: the plan's last change" in md
    assert "This report supersedes an earlier report." in md
    for word in ("plan written after results", "records not committed", "no plan"):
        md = render(dataclasses.replace(fixed, precedence=(word, "why")))[0]
        assert "fixed before any result" not in md.lower(), word
    # a withdrawn plan: the study was abandoned, and the report says which runs are void
    md = render(dataclasses.replace(fixed, withdrawn="a bug in the loop; 4 of its 6 runs are void (never recorded, "
                                                     "e.g. aug=none seed=3)"))[0]
    assert "**Abandoned.** The analysis plan reports/made-up/plan.yaml was withdrawn: a bug in the loop; 4 of" in md
    assert "fixed before any result" not in md.lower()


def test_the_report_ships_every_seeds_results_for_an_audit():
    inp = fake_inputs({"aug=none": [0.70, 0.71, 0.72], "aug=standard": [0.74, 0.75, 0.76]}, best=True)
    report = build.build_report(inp)
    rows = list(csv.DictReader(io.StringIO(report.files["results.csv"])))
    assert len(rows) == 2 * 3 * 2  # arm x seed x checkpoint
    assert {(r["arm"], r["seed"], r["checkpoint"]) for r in rows} == {
        (a, str(s), w) for a in ("aug=none", "aug=standard") for s in range(3) for w in ("last", "best")}
    for r in rows:
        ev = next(e for e in inp.per_seed
                  if (e.arm, str(e.seed), e.checkpoint) == (r["arm"], r["seed"], r["checkpoint"]))
        assert float(r["test_acc"]) == ev.test_acc and float(r["acc_cat"]) == ev.per_class_acc[3]
    # the study's mean recomputes from the file
    mean = np.mean([float(r["test_acc"]) for r in rows if r["arm"] == "aug=standard" and r["checkpoint"] == "last"])
    assert mean == pytest.approx(inp.summary.checkpoints["last"].arms["aug=standard"].test_acc.mean)


@pytest.mark.slow
def test_a_study_with_validation_images_chooses_on_them_and_says_so(tmp_path, prepared, monkeypatch):
    """data.val_split through the real stages: the held-out images are never trained
    on, every epoch is evaluated on them and not on the test set, the best checkpoint
    is their peak, the evaluate stage looks at the test set once, and the report names
    the split and describes the best checkpoint as chosen on them."""
    from pipeline.core.contracts import RunMetrics, read_history
    from pipeline.evaluate.contracts import StudySummary as Summary
    from tests.conftest import run_study

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIFAR_ABLATE_TRACKING", "off")
    p = run_study(tmp_path, prepared, seeds=(0,), epochs=3, aug="none", data_params={"val_split": 0.2})
    run = p["runs"] / "aug=none" / "seed=0"
    history = read_history(run / "history.csv")
    assert all(r.val_acc is not None and r.test_acc is None for r in history)
    metrics = RunMetrics.model_validate_json((run / "metrics.json").read_text())
    assert metrics.held_out == "val"
    assert metrics.best_epoch == 1 + [r.val_acc for r in history].index(max(r.val_acc for r in history))
    summary = Summary.model_validate_json((p["evaluation"] / "summary.json").read_text())
    assert summary.best_on == "validation"
    assert summary.checkpoints["best"].arms["aug=none"].test_acc.n == 1
    page = html.unescape((p["reports"] / "report.html").read_text())
    assert "val_split 0.2 (held out of training)" in page and "Validation accuracy per epoch" in page
    assert "on 80 training images" in page  # 100 less the 20 held out
    assert (p["reports"] / "results.csv").read_text().count("\n") == 1 + 2  # header, last and best


def test_make_results_fits_100_columns_with_three_studies():
    """Three studies (one crossed, with long arm names, one with an equivalence margin),
    as `dvc exp show --json` lists them: a block per study, arms down the side,
    accuracy in percent with one decimal, p with two significant figures, the answer."""
    from pipeline import results

    crossed = fake_inputs(CROSSED, primary="aug")
    precision = fake_inputs({"aug=none": [0.700, 0.702, 0.698], "aug=standard": [0.701, 0.699, 0.700]},
                            estimates={"aug=none": [0.700, 0.702, 0.698], "aug=standard": [0.701, 0.699, 0.700]},
                            margin=1.0)
    plain = fake_inputs({"aug=none": [0.70, 0.71, 0.72], "aug=standard": [0.74, 0.75, 0.76]})

    def exp(name, study, inp):
        return {"rev": name, "name": name, "data": {
            "params": {"params.yaml": {"data": {"study": study}}},
            "metrics": {"metrics/study.json": {"data": core.headline(inp.summary, list(inp.summary.estimates))}}}}

    shown = [{**exp("workspace", "dropout", crossed), "experiments": [
        {"revs": [exp("exp-1", "precision", precision)]}, {"revs": [exp("exp-2", "simple_cnn", plain)]}]}]
    text = results.render(shown)
    assert max(map(len, text.splitlines())) <= 100, text
    assert [line.split(" [")[0] for line in text.splitlines() if line and not line.startswith(" ")] == \
        ["dropout", "precision", "simple_cnn"]
    s = crossed.summary
    e = next(e for e in s.effects if e.factor == "aug")
    row = next(line for line in text.splitlines() if line.strip().startswith("aug=standard@dropout=0.0 "))
    assert row.split()[-len(_answer_words(e)):] == _answer_words(e)
    assert f" {stats.format_p(e.p_adjusted)} " in row or "< 0.001" in row
    assert re.search(r"^  aug=standard +\d+\.\d$", text, re.M)
    assert "equivalent" in text


def _answer_words(e) -> list[str]:
    from pipeline.results import _answer

    return _answer(100 * e.test_acc.diff, e.p_adjusted).split()


def test_a_crossed_study_ends_on_its_hypotheses_family_by_family():
    """The lines a run ends with: each arm's accuracy in %, then each family's effects and
    interactions with their verdicts (not the baseline's comparisons with diagonal arms)."""
    from pathlib import Path

    from pipeline.report.stage import answer

    inp = fake_inputs(CROSSED, primary="aug")
    lines = answer(inp, Path("reports/x/report.html")).splitlines()
    assert lines[0].startswith("aug=none,dropout=0.0: test accuracy ") and lines[0].endswith("% (3 seed(s))")
    first = lines.index("primary family (2 hypotheses, Holm):")
    assert lines[first + 1].startswith("  aug=standard vs aug=none at dropout=0.0: ") and " points (" in lines[first + 1]
    assert "secondary family (3 hypotheses, Holm):" in lines and lines[-1] == "report: reports/x/report.html"
    assert not [x for x in lines if "not a hypothesis" in x]
