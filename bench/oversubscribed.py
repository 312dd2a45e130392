"""Benchmark: CPU jobs that share a node, as the Ray engine runs them.

Every CPU job keeps the node's thread count (so results are bitwise equal however
many run at once); two jobs on one node then run twice as many threads as it has
cores. This times simple_cnn's training step in 1 and in 2 processes at once, each
with the node's thread count, with OpenMP's default wait policy (threads spin while
they wait for work) and with OMP_WAIT_POLICY=PASSIVE (what the Ray engine sets for
its workers), and prints images/s per process and in all, and a digest of the final
weights (the same in every row: the wait policy changes no result).

    python bench/oversubscribed.py --batch-size 128 --images 24000 --repeat 3
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(batch_size: int, images: int) -> None:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(REPO))
    from models.simple_cnn import simple_cnn

    torch.manual_seed(0)
    model = simple_cnn().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters())
    x = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,))

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(5):
        step()
    steps = max(1, images // batch_size)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    rate = steps * batch_size / (time.perf_counter() - t)
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()[:12]
    print(f"{rate:.1f} {digest}")


def run(procs: int, passive: bool, args) -> tuple[list[float], set[str]]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    cmd = [sys.executable, __file__, "--worker", "--batch-size", str(args.batch_size), "--images", str(args.images)]
    ps = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    out = [p.communicate()[0].split() for p in ps]
    return [float(o[0]) for o in out], {o[1] for o in out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--images", type=int, default=24_000, help="images each process trains on (timed)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; each runs every row once, in turn")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.batch_size, args.images)
    import torch

    print(f"{os.cpu_count()} CPU(s), {torch.get_num_threads()} torch threads per process, "
          f"batch {args.batch_size}, {args.images} images per process, {args.repeat} round(s)")
    rows = [(1, False), (1, True), (2, False), (2, True)]
    rates: dict = {r: [] for r in rows}
    digests: set[str] = set()
    for _ in range(args.repeat):
        for row in rows:
            r, d = run(*row, args)
            rates[row].append(r)
            digests |= d
    print("| processes | OpenMP waits | images/s per process (median) | images/s in all (median) |")
    print("| ---: | --- | ---: | ---: |")
    for (procs, passive), rs in rates.items():
        per = statistics.median(x for r in rs for x in r)
        total = statistics.median(sum(r) for r in rs)
        print(f"| {procs} | {'passive' if passive else 'spinning (default)'} | {per:.0f} | {total:.0f} |")
    print(f"final weights: {'the same in every process' if len(digests) == 1 else 'DIFFER: ' + str(digests)}")


if __name__ == "__main__":
    main()
