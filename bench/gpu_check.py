"""`make gpu-check`: on a machine with CUDA, the GPU tests, then the default study
and the resnet18 recipe end to end, and one table of what they took.

    python bench/gpu_check.py [--archive PATH --sha256 SHA256] [--skip-tests] [--out bench/RESULTS.md]

The table (card, seconds per study and per epoch, images/s, the trainer's speed
over the classic DataLoader loop, test accuracy over seeds) is printed and
appended, with the card's name and the date, to bench/RESULTS.md. Without
--archive the studies download data.url as params.yaml has it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pipeline_stages  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGETS = "targets on one H100: default study <= 60 s without download; resnet18 25 epochs <= 40 s; " \
          "trainer / classic >= 5x (simple_cnn) and >= 2x (resnet18)"


def _study_rows(clone: Path, name: str, stages: dict) -> dict:
    runs = json.loads((clone / "runs" / "study.json").read_text())
    histories = []
    for r in runs["runs"]:
        lines = (clone / "runs" / r["arm"] / f"seed={r['seed']}" / "history.csv").read_text().splitlines()[1:]
        histories.append([dict(zip(("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr",
                                    "epoch_seconds", "images_per_second"), map(float, ln.split(","))))
                          for ln in lines])
    epoch_s = statistics.median(h["epoch_seconds"] for hist in histories for h in hist)
    img_s = statistics.median(h["images_per_second"] for hist in histories for h in hist)
    accs = {}
    for r, hist in zip(runs["runs"], histories):
        accs.setdefault(r["arm"], []).append(hist[-1]["test_acc"])
    acc = "; ".join(f"{arm} {100 * statistics.fmean(a):.2f}%" + (f" ± {100 * statistics.stdev(a):.2f}"
                                                                  if len(a) > 1 else "") + f" (n={len(a)})"
                    for arm, a in accs.items())
    return {"study": name, "seconds": stages["total"] - stages["download"], "epoch_s": epoch_s, "img_s": img_s,
            "acc": acc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", help="a local copy of the data (else data.url of params.yaml)")
    ap.add_argument("--sha256", help="its checksum")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu-check needs CUDA: torch.cuda.is_available() is False on this machine")
    card = torch.cuda.get_device_name(0)
    if not args.skip_tests:
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"], cwd=REPO)
        print(f"GPU tests: {'passed' if tests.returncode == 0 else 'FAILED'}", flush=True)
    data = ([f"data.url={Path(args.archive).resolve()}", f"data.sha256={args.sha256}", "data.md5=null"]
            if args.archive else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for name, sets in (("default study", data), ("resnet18 recipe", data + ["preset=resnet18", "seeds=[0]"])):
            print(f"== {name} ==", flush=True)
            clone = Path(tmp) / name.replace(" ", "-")
            stages = pipeline_stages.time_stages(sets, clone)
            rows.append(_study_rows(clone, name, stages))
        prepared = Path(tmp) / "default-study" / "data" / "prepared"
        import compare_loops

        loop_args = argparse.Namespace(presets="simple_cnn,resnet18", images=50_000, epochs=3, seeds=1,
                                       device="cuda", workers=8, no_compile=False)
        ratios = {r["preset"]: r["speedup"] for r in compare_loops.compare(loop_args, prepared)}
    ratio = {"default study": ratios.get("simple_cnn"), "resnet18 recipe": ratios.get("resnet18")}
    head = "| card | study | s per study (no download) | s per epoch | images/s | trainer / classic | test acc |"
    lines = [head, "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        x = ratio[r["study"]]
        lines.append(f"| {card} | {r['study']} | {r['seconds']:.1f} | {r['epoch_s']:.2f} | {r['img_s']:,.0f} | "
                     f"{f'{x:.2f}x' if x else 'n/a'} | {r['acc']} |")
    table = "\n".join(lines)
    print("\n" + table + f"\n\n{TARGETS}")
    with open(args.out, "a") as f:
        f.write(f"\n## {card}, {dt.date.today().isoformat()}, torch {torch.__version__}\n\n{table}\n")
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
