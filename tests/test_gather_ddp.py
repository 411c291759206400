"""loss.gather_across_ranks: two gloo CPU processes with B/2 rows each reproduce one process with B rows."""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from jasper.core.distributed import all_gather_with_grad
from jasper.core.losses import DistillLoss

B, D_IN, D = 12, 10, 8
WORLD = 2


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, D_IN, generator=g)
    teacher = F.normalize(torch.randn(B, D, generator=g), dim=-1)
    model = nn.Linear(D_IN, D)
    with torch.no_grad():
        model.weight.copy_(torch.randn(D, D_IN, generator=g))
        model.bias.copy_(torch.randn(D, generator=g))
    return x, teacher, model


def _single_process():
    x, teacher, model = _data()
    terms = DistillLoss(gather_across_ranks=True)(
        F.normalize(model(x), dim=-1), teacher
    )  # not distributed: local
    terms["total"].backward()
    return {k: v.detach() for k, v in terms.items()}, model.weight.grad.clone(), model.bias.grad.clone()


def _worker(rank, port, results):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        x, teacher, model = _data()
        rows = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
        ddp = DistributedDataParallel(model)
        terms = DistillLoss(gather_across_ranks=True)(F.normalize(ddp(x[rows]), dim=-1), teacher[rows])
        terms["total"].backward()  # DDP averages the parameter gradients over the ranks
        # Gradient on this rank's own rows through the gather alone: world_size * the single-process gradient.
        local = torch.randn(B // WORLD, 3, generator=torch.Generator().manual_seed(rank), requires_grad=True)
        gathered = all_gather_with_grad(local)
        (gathered * torch.arange(B * 3.0).view(B, 3)).sum().backward()
        results[rank] = (
            {k: v.detach() for k, v in terms.items()},
            model.weight.grad.clone(),
            model.bias.grad.clone(),
            gathered.detach(),
            local.grad.clone(),
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_match_one_process_with_the_global_batch():
    expected_terms, expected_weight_grad, expected_bias_grad = _single_process()
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), results), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        terms, weight_grad, bias_grad, gathered, local_grad = results[rank]
        for name in ("sim", "resim"):  # global batch on every rank
            torch.testing.assert_close(terms[name], expected_terms[name])
        torch.testing.assert_close(weight_grad, expected_weight_grad)  # after DDP's averaging
        torch.testing.assert_close(bias_grad, expected_bias_grad)
        assert gathered.shape == (B, 3)
        own = torch.arange(B * 3.0).view(B, 3)[rank * B // WORLD : (rank + 1) * B // WORLD]
        torch.testing.assert_close(local_grad, WORLD * own)  # summed over ranks (each rank's loss is global)
    # The cosine term stays local: the mean of the per-rank values is the global value.
    cos = sum(results[rank][0]["cos"] for rank in range(WORLD)) / WORLD
    torch.testing.assert_close(cos, expected_terms["cos"])
