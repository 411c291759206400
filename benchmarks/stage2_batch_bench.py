"""How large a batch one stage-2 step of the embedded default takes on this machine.

One training step (forward, the three losses, backward, optimiser step) of Stage2 on the first 3 layers of the
packaged all-MiniLM-L6-v2 with the 768-d FC1, texts of `--tokens` tokens, per batch size, each in a fresh
process: wall time and peak resident memory. Run: python benchmarks/stage2_batch_bench.py --sizes 128 512 2048
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import time


def one_step(batch_size: int, tokens: int) -> dict:
    import torch
    import torch.nn.functional as F

    from jasper.core.losses import DistillLoss
    from jasper.models.packaged import packaged_minilm
    from jasper.models.student import Student
    from jasper.training.stages.stage2 import Stage2

    torch.manual_seed(0)
    student = Student(
        packaged_minilm(), fc1_dim=768, mrl_dims=[256, 128, 64], num_layers=3, max_length=tokens
    )
    module = Stage2(student, DistillLoss(), optimizer=functools.partial(torch.optim.AdamW, lr=1e-4))
    optimizer = module.configure_optimizers()
    words = "distillation of embedding models into a small student " * tokens
    batch = dict(student.tokenize([f"{i} {words}" for i in range(batch_size)]))
    batch["teacher"] = F.normalize(torch.randn(batch_size, 768), dim=-1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_mb": peak / 1024, "step_extra_mb": (peak - before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128, 512, 1024, 2048])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_step(args.child, args.tokens)))
        return
    print(f"stage-2 step, MiniLM[:3] student, {args.tokens} tokens a text, each size in a fresh process")
    print("| batch | step s | s per 1k texts | peak RSS MB | step's extra MB |")
    print("|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        run = subprocess.run(
            [sys.executable, __file__, "--child", str(size), "--tokens", str(args.tokens)],
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            print(f"| {size} | failed: {run.stderr.strip().splitlines()[-1][:80]} | | | |")
            continue
        r = json.loads(run.stdout.strip().splitlines()[-1])
        print(
            f"| {size} | {r['seconds']:.2f} | {1000 * r['seconds'] / size:.2f} | {r['peak_mb']:.0f} | {r['step_extra_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
