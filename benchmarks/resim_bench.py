"""Relative-similarity loss, reference vs fast path: time and peak extra memory of forward + backward.

    python benchmarks/resim_bench.py                  # CPU, 2 threads, reference B = 32..128, fast B = 32..4096
    python benchmarks/resim_bench.py --with-192       # also the reference at B = 192 (~8.7 GB, ~18 s)
    python benchmarks/resim_bench.py --device cuda

Inputs: B x 384 student, B x 1024 teacher, L2-normalised, float32, margin 0.015. Each case runs in a fresh
subprocess. Time: one forward + backward after a warm-up at B = 8 (best of 3 when it takes under a second).
Peak extra memory: CPU: the process's peak resident set (getrusage ru_maxrss) minus its resident set just before
the case (inputs already built); CUDA: torch.cuda.max_memory_allocated minus memory allocated before the case.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _child(impl: str, b: int, device: str, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    from jasper.core.resim import relative_similarity_loss, relative_similarity_loss_reference

    torch.set_num_threads(threads)
    loss = {"reference": relative_similarity_loss_reference, "fast": relative_similarity_loss}[impl]
    g = torch.Generator().manual_seed(0)

    def inputs(n):
        s = F.normalize(torch.randn(n, 384, generator=g), dim=-1).to(device).requires_grad_()
        return s, F.normalize(torch.randn(n, 1024, generator=g), dim=-1).to(device)

    def run(s, t):
        loss(s, t).backward()
        if device == "cuda":
            torch.cuda.synchronize()

    run(*inputs(8))  # warm-up: kernels, allocator
    student, teacher = inputs(b)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_mb()
    times = []
    while len(times) < 3 and sum(times) < 1.0:
        student.grad = None
        start = time.perf_counter()
        run(student, teacher)
        times.append(time.perf_counter() - start)
    if device == "cuda":
        extra = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    return {"seconds": min(times), "extra_mb": max(extra, 0.0)}


def _case(impl: str, b: int, device: str, threads: int) -> dict | None:
    cmd = [sys.executable, __file__, "--child", impl, str(b), "--device", device, "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"# {impl} B={b} failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--with-192", action="store_true", help="also run the reference at B=192 (~8.7 GB)")
    parser.add_argument("--max-b", type=int, default=4096)
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]), args.device, args.threads)))
        return
    reference_bs = [32, 64, 128] + ([192] if args.with_192 else [])
    fast_bs = [b for b in [32, 64, 128, 192, 256, 512, 1024, 2048, 4096] if b <= args.max_b]
    memory = (
        "peak RSS - RSS before (ru_maxrss)" if args.device == "cpu" else "cuda max_memory_allocated - before"
    )
    print(
        f"# relative_similarity_loss fwd+bwd, B x 384 student, B x 1024 teacher, float32, {args.device}",
        end="",
    )
    print(f", {args.threads} threads" if args.device == "cpu" else "")
    print(f"# extra memory: {memory}")
    print("| B | M pairs | reference s | reference MB | fast s | fast MB | speed-up | memory ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for b in sorted(set(reference_bs) | set(fast_bs)):
        ref = _case("reference", b, args.device, args.threads) if b in reference_bs else None
        fast = _case("fast", b, args.device, args.threads) if b in fast_bs else None
        cells = [str(b), str(b * (b - 1) // 2)]
        for r in (ref, fast):
            cells += [f"{r['seconds']:.4f}", f"{r['extra_mb']:.1f}"] if r else ["-", "-"]
        both = ref is not None and fast is not None
        cells.append(f"{ref['seconds'] / fast['seconds']:.0f}x" if both else "-")
        cells.append(f"{ref['extra_mb'] / max(fast['extra_mb'], 0.1):.0f}x" if both else "-")
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
