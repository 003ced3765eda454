"""Training under torchrun: process-group set-up, a DDP wrapper that survives thinning, mask
broadcast and metric reduction.

Masks are computed on every rank from the same weights (DDP keeps them identical), then broadcast
from rank 0 after each pruning event so that criteria which see data (activations, gradients,
random draws) cannot make ranks disagree.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from .masks import MaskStore
from .thinning.record import recipes_of


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(cpu: bool = False) -> Optional[DistInfo]:
    """Join the process group torchrun describes in the environment; None in a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not cpu
    backend = "nccl" if use_cuda else "gloo"
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local_rank, device, backend)


def structure_version(module: nn.Module) -> int:
    """How many thinning recipes the module has had applied (its shape changes with each)."""
    return len(recipes_of(module))


class ElasticDDP(nn.Module):
    """DistributedDataParallel that rebuilds itself after thinning changes parameter shapes.

    DDP's gradient buckets are laid out for the parameter sizes it was built with; when a thinning
    recipe has been applied since, the next forward rebuilds the DDP wrapper (all ranks thin at the
    same step, so they rebuild together). ``.module`` is the plain model.
    """

    is_wrapper = True   # compressor.masks.unwrap looks through it

    def __init__(self, module: nn.Module, **ddp_kwargs):
        super().__init__()
        self.module = module
        self._kwargs = ddp_kwargs
        self._build()

    def _build(self) -> None:
        ddp = nn.parallel.DistributedDataParallel(self.module, **self._kwargs)
        object.__setattr__(self, "_ddp", ddp)      # not a registered child: no duplicate params
        self._version = structure_version(self.module)

    def forward(self, *args, **kwargs):
        if structure_version(self.module) != self._version:
            self._build()
        return self._ddp(*args, **kwargs)


def broadcast_masks(store: MaskStore, src: int = 0) -> None:
    """Make every rank's masks equal rank ``src``'s (in sorted name order), then apply them."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    names = sorted(store.masks)
    counts = torch.tensor([len(names)], dtype=torch.long)
    dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    if int(counts) != len(names):
        raise RuntimeError(f"ranks disagree on which parameters are masked ({len(names)} here, "
                           f"{int(counts)} elsewhere)")
    for name in names:
        dist.broadcast(store.masks[name], src=src)
    store.apply_after_step()


def reduce_mean(values: dict, count: int) -> dict:
    """Sample-weighted means of ``values`` across ranks (each rank saw ``count`` samples)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([values[k] * count for k in keys] + [float(count)], dtype=torch.float64)
    dist.all_reduce(t)
    total = float(t[-1]) or 1.0
    return {k: float(v) / total for k, v in zip(keys, t[:-1])}


def reduce_sum_tensor(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def reduce_meter_state(state: dict) -> dict:
    """A stopped epoch's running sums (``training.meters_state``) summed over ranks; the seconds
    are the slowest rank's. Rank 0 saves this and resumes with it while the other ranks start
    from zero, so the ranks' sums add up to the whole epoch's again."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return state
    keys = sorted(k for k in state if k not in ("components", "seconds"))
    comps = sorted(state.get("components", {}))
    pairs = [state[k] for k in keys] + [state["components"][k] for k in comps]
    t = torch.tensor([float(v) for pair in pairs for v in pair], dtype=torch.float64)
    dist.all_reduce(t)
    seconds = torch.tensor([float(state.get("seconds", 0.0))], dtype=torch.float64)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    summed = [[float(t[2 * i]), int(t[2 * i + 1])] for i in range(len(pairs))]
    out = dict(zip(keys, summed[:len(keys)]))
    out["components"] = dict(zip(comps, summed[len(keys):]))
    out["seconds"] = float(seconds)
    return out


def wait_for_peers_to_fail(seconds: float = 10.0) -> None:
    """After an error every rank finds (a schedule mistake, a non-finite loss they agreed on):
    wait up to ``seconds`` until every rank has reached this point, so that all of them exit with
    their own code 2 instead of torchrun terminating the slower ones when the first exits.

    Counted in the process group's key-value store, not with a collective: a rank that did not
    fail is never made to wait for a collective it does not join (after the timeout this rank
    exits anyway and torchrun stops the rest)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    try:
        store = dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError):   # a private helper: without it, exit at once
        return
    world, key = dist.get_world_size(), "compressor/ranks_failed"
    failed, deadline = store.add(key, 1), time.monotonic() + seconds
    while failed < world and time.monotonic() < deadline:
        time.sleep(0.02)
        failed = store.add(key, 0)
