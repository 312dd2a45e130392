"""Stage `report` on a small study made by the real stages (train -> evaluate -> report).

2 arms x 2 seeds x 1 epoch on synthetic images; a 1-seed variant is restored
from the arm cache. Checks every section in both renderings, the table's numbers
against summary.json, that every image is embedded (HTML) or present (Markdown),
the single-seed warning, the words for a non-significant comparison, and the
one-line failure that leaves no reports/ folder.
"""
from __future__ import annotations

import base64
import copy
import html
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline import data as datamod
from pipeline import evaluate, report, stats, train
from pipeline.io import sha256_file
from tests.synthetic import images

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- a study, made by the stages


def write_prepared(folder: Path, train_per_class: int = 10, test_per_class: int = 6) -> None:
    """Synthetic prepared arrays and a manifest like the untar stage's."""
    folder.mkdir(parents=True)
    splits = {"train": images(train_per_class, seed=1), "test": images(test_per_class, seed=2)}
    for split, (x, y) in splits.items():
        np.save(folder / f"{split}_x.npy", x, allow_pickle=False)
        np.save(folder / f"{split}_y.npy", y, allow_pickle=False)
    arrays = {name: sha256_file(folder / name) for name in datamod.ARRAY_FILES}
    manifest = {"format": "synthetic", "classes": list(datamod.CLASSES),
                "splits": {s: {"count": int(len(y))} for s, (_, y) in splits.items()},
                "arrays": arrays, "data_sha256": datamod.data_sha256(arrays)}
    (folder / datamod.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def write_params(path: Path, seeds, **extra) -> None:
    p = {"study": "report-test", "preset": "simple_cnn", "seeds": list(seeds), "epochs": 1,
         "batch_size": 32, "device": "cpu", "report": {"bootstrap": 200}, **extra}
    path.write_text(yaml.safe_dump(p, sort_keys=False))


def make_project(root: Path) -> None:
    write_prepared(root / "data" / "prepared")


def run_study(root: Path, seeds=(0, 1), tag: str = "", mlflow: bool = False) -> dict[str, Path]:
    """params<tag>.yaml -> runs<tag>/ -> evaluation<tag>/ -> reports<tag>/ through the stages' main()s.
    Call with the cwd at `root`."""
    paths = {k: root / f"{k}{tag}" for k in ("runs", "evaluation", "reports", "metrics", "curves")}
    paths["params"] = root / f"params{tag}.yaml"
    write_params(paths["params"], seeds)
    data = str(root / "data" / "prepared")
    train.main(["--params", str(paths["params"]), "--data", data, "--runs", str(paths["runs"]),
                "--metrics", str(paths["metrics"] / "train.json"), "--curves", str(paths["curves"]) + ".csv",
                "--no-progress"] + ([] if mlflow else ["--no-mlflow"]))
    evaluate.main(["--params", str(paths["params"]), "--data", data, "--runs", str(paths["runs"]),
                   "--out", str(paths["evaluation"]), "--metrics", str(paths["metrics"] / "evaluate.json")])
    report.main(["--params", str(paths["params"]), "--data", data, "--runs", str(paths["runs"]),
                 "--evaluation", str(paths["evaluation"]), "--out", str(paths["reports"])])
    return paths


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        make_project(root)
        two = run_study(root, seeds=(0, 1))
        one = run_study(root, seeds=(0,), tag="1")  # seed 0 comes back from the arm cache
    return {"root": root, "two": two, "one": one}


def texts(paths) -> tuple[str, str]:
    return ((paths["reports"] / "report.md").read_text(encoding="utf-8"),
            (paths["reports"] / "report.html").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- parsing the output back


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


def pm(cell: str) -> tuple[float | None, float | None]:
    m = re.fullmatch(rf"{NUM} ± {NUM}", cell)
    assert m, cell
    return tuple(None if g == "n/a" else float(g) for g in m.groups())


def diff(cell: str) -> tuple[float, float, float]:
    m = re.fullmatch(rf"{NUM} \[{NUM}, {NUM}\]( \*)?", cell)
    assert m, cell
    return tuple(float(g) for g in m.groups()[:3])


def p_of(cell: str) -> float:
    return 0.0 if cell == "< 0.001" else float(cell)


def close(shown: float | None, value: float | None, *, scale: float = 100.0, digits: int = 2) -> bool:
    if value is None or shown is None:
        return shown is value
    return abs(shown - value * scale) <= 0.5 * 10 ** -digits + 1e-9


# --------------------------------------------------------------------------- tests


def test_every_section_in_both_renderings(study):
    md, page = texts(study["two"])
    for i, title in enumerate(report.SECTIONS, 1):
        assert f"\n## {i}. {title}\n" in md
        assert f"<h2>{i}. {title}</h2>" in page
    positions = [page.index(f"<h2>{i}. {t}</h2>") for i, t in enumerate(report.SECTIONS, 1)]
    assert positions == sorted(positions)
    assert (study["two"]["reports"] / "figures").is_dir()


def test_table_numbers_equal_summary(study):
    summary = json.loads((study["two"]["evaluation"] / "summary.json").read_text())
    last = summary["checkpoints"]["last"]
    md, page = texts(study["two"])
    tables = Tables(page).tables

    acc = tables["acc-table"]
    assert acc[1:] == md_table(md, "| Arm | n seeds")[1:]  # the same cells in both renderings
    keys = [k for k, _ in report.METRICS]
    assert len(acc) == 1 + len(last["arms"])
    for row in acc[1:]:
        arm = row[0].removesuffix(" (baseline)")
        entry = last["arms"][arm]
        assert int(row[1]) == entry["test_acc"]["n"] == 2
        for cell, key in zip(row[2:], keys):
            mean, half = pm(cell)
            assert close(mean, entry[key]["mean"]), (arm, key, cell)
            assert close(half, (entry[key]["high"] - entry[key]["low"]) / 2), (arm, key, cell)

    delta = tables["delta-table"]
    assert delta[1:] == md_table(md, "| Arm | Δ test acc")[1:]
    for row in delta[1:]:
        c = last["comparisons"][row[0]]
        w, b = c["welch"], c["paired_bootstrap"]
        assert all(close(s, v) for s, v in zip(diff(row[1]), (w["diff"], w["low"], w["high"])))
        assert close(p_of(row[2]), w["p"], scale=1, digits=3) or (row[2] == "< 0.001" and w["p"] < 0.001)
        assert all(close(s, v) for s, v in zip(diff(row[3]), (b["diff"], b["low"], b["high"])))
        assert close(p_of(row[4]), b["p"], scale=1, digits=3) or (row[4] == "< 0.001" and b["p"] < 0.001)
        mc = re.findall(r"s(\d+): (\d+)/(\d+), p (= [\d.]+|< 0\.001)(?:; |$)", row[5])
        assert [(int(b01), int(b10)) for _, b01, b10, _ in mc] == \
               [(m["b01"], m["b10"]) for m in c["mcnemar_per_seed"]]
        for (_, _, _, shown), m in zip(mc, c["mcnemar_per_seed"]):
            assert close(p_of(shown.removeprefix("= ")), m["p"], scale=1, digits=3) or \
                (shown == "< 0.001" and m["p"] < 0.001)

    classes = tables["class-table"]
    for k, row in enumerate(classes[1:]):
        assert row[0] == summary["classes"][k]
        for j, arm in enumerate(last["arms"]):
            assert close(float(row[1 + j]), last["arms"][arm]["per_class_acc"][k])

    # the verdict strings appear verbatim in the headline
    headline = html.unescape(page.split("<h2>1. Headline</h2>")[1].split("<h2>")[0])
    for c in last["comparisons"].values():
        assert c["verdict"] in headline and c["verdict_images"] in headline


def test_html_is_self_contained_and_every_image_is_an_embedded_png(study):
    md, page = texts(study["two"])
    srcs = re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)
    refs = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", md)
    assert len(srcs) == len(refs) >= 10
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png.startswith(PNG_MAGIC)
        with Image.open(io.BytesIO(png)) as im:
            im.verify()
    for ref in refs:
        path = study["two"]["reports"] / ref
        assert ref.startswith("figures/") and path.is_file(), ref
        assert path.read_bytes().startswith(PNG_MAGIC)
    assert "<script" not in page.lower()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page, re.I)
    assert "<link" not in page.lower() and "@import" not in page and "url(" not in page


def test_single_seed_study_shows_the_warning(study):
    md, page = texts(study["one"])
    assert report.SINGLE_SEED_WARNING in md and report.SINGLE_SEED_WARNING in page
    assert "single seed: no interval; not a finding" in page  # Welch's verdict, passed through
    tables = Tables(page).tables
    for row in tables["acc-table"][1:]:
        assert row[1] == "1" and all(pm(cell)[1] is None for cell in row[2:])
    md2, page2 = texts(study["two"])
    assert report.SINGLE_SEED_WARNING not in md2 and report.SINGLE_SEED_WARNING not in page2


def _inputs(study) -> dict:
    p = study["two"]
    return report.load_inputs(p["params"], study["root"] / "data" / "prepared", p["runs"], p["evaluation"])


def _stub(summary: dict, diff: float, low: float, high: float, p: float) -> None:
    """One comparison of the last checkpoint rewritten to a chosen result, as evaluate would word it."""
    c = next(iter(summary["checkpoints"]["last"]["comparisons"].values()))
    c["welch"].update(diff=diff, low=low, high=high, p=p, p_holm=p)
    c["verdict"] = stats.verdict(stats.Interval(diff, low, high, 0.95), p)
    c["paired_bootstrap"].update(diff=diff, low=low, high=high, p=p)
    c["verdict_images"] = stats.verdict(stats.Interval(diff, low, high, 0.95), p)


def _headline(model: dict) -> tuple[str, str]:
    only = {"title": model["title"], "sections": model["sections"][:1]}
    return report.render_markdown(only), report.render_html(only, {})


def test_not_significant_is_said_plainly(study):
    inp = _inputs(study)
    inp["summary"] = copy.deepcopy(inp["summary"])
    _stub(inp["summary"], 0.004, -0.011, 0.019, 0.52)
    md, page = _headline(report.build_report(inp))
    for text in (md, page):
        assert "not significant (p = 0.52)" in text
        assert "+0.40 points (95% CI -1.10 to +1.90)" in text
        assert "no significant difference" in text

    _stub(inp["summary"], 0.025, 0.012, 0.038, 0.0004)
    md, page = _headline(report.build_report(inp))
    assert "significant (p < 0.001)" in md and "not significant" not in md
    assert "helped" in md and 'class="tone-good"' in page


def test_missing_evaluation_fails_in_one_line_and_writes_nothing(study, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    p = study["two"]
    with pytest.raises(SystemExit) as exc:
        report.main(["--params", str(p["params"]), "--data", str(study["root"] / "data" / "prepared"),
                     "--runs", str(p["runs"]), "--evaluation", str(tmp_path / "evaluation"),
                     "--out", str(tmp_path / "reports")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "evaluate" in err
    assert list(tmp_path.iterdir()) == []  # no reports/, no temporary left behind


def test_a_failed_render_keeps_the_previous_report(study, tmp_path, monkeypatch):
    p = study["two"]
    out = tmp_path / "reports"
    shutil.copytree(p["reports"], out)
    before = (out / "report.html").read_bytes()

    def boom(*_a, **_k):
        raise RuntimeError("render failed")

    monkeypatch.setattr(report, "render_html", boom)
    with pytest.raises(RuntimeError):
        report.main(["--params", str(p["params"]), "--data", str(study["root"] / "data" / "prepared"),
                     "--runs", str(p["runs"]), "--evaluation", str(p["evaluation"]), "--out", str(out)])
    assert (out / "report.html").read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["reports"]


def test_markdown_escapes_and_formatting():
    assert report.pct(0.98765) == "98.77" and report.pct(None) == "n/a"
    assert report.signed(0.0184) == "+1.84" and report.signed(-0.00001) == "0.00" and report.signed(-0.002) == "-0.20"
    assert report.pval(0.0004) == "< 0.001" and report.pval(0.1836) == "0.184"
    assert report.md_escape("a|b_c*<x> p < 0.001") == r"a\|b\_c\*\<x> p < 0.001"
    block = report.table(["a|b"], [["<script>"]])
    assert "<script>" not in report._html_block(block, {}) and "&lt;script&gt;" in report._html_block(block, {})
