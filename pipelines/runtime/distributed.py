"""Running a command on several processes: `torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK, this module turns
them into a process group (gloo on CPU, NCCL on GPU) and gives the commands the few collectives they need.

A plain single-process run never creates a process group: every helper then answers for a world of one
(`rank()` 0, `barrier()` nothing, `all_gather_object(x)` [x]), so the commands use them unconditionally.
See docs/SCALING.md for the launch commands.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from pipelines.runtime.device import resolve_device

T = TypeVar("T")
R = TypeVar("R")
# A rank waits at a barrier while another finishes its last chunk of work (a classify chunk of long documents
# on a CPU, a test set on rank 0): longer than the backends' 10-30 minute defaults, still finite.
TIMEOUT = timedelta(hours=2)


def launched() -> bool:
    """Whether this process is one of several started by torchrun (or another launcher setting WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "auto") -> torch.device:
    """Join the process group when launched by torchrun; returns the device this process computes on.

    Under torchrun `auto` and `cuda` mean the GPU of this process's LOCAL_RANK, so N processes on one machine
    use N GPUs; the backend follows the device: NCCL for a GPU, gloo for the CPU.
    """
    if not launched():
        return resolve_device(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT,
                                device_id=dev if dev.type == "cuda" else None)
    return dev


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[torch.device]:
    """`init` for the length of a command; the process group is destroyed at the end if this call made it
    (a caller that made one itself, e.g. a test running several commands in the same processes, keeps it)."""
    made = launched() and not dist.is_initialized()
    try:
        yield init(device)
    finally:
        if made:
            cleanup()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_object(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order (any picklable object; a list of one without a process group)."""
    if not dist.is_initialized():
        return [obj]
    out: list = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share: items rank, rank + world, ... (strided, so a length-sorted list splits evenly)."""
    return list(items[rank()::world()])


def unshard(parts: Sequence[Sequence[T]]) -> list[T]:
    """The inverse of `shard` given every rank's share in rank order: the items back in their order."""
    out: list = [None] * sum(map(len, parts))
    for r, part in enumerate(parts):
        out[r::len(parts)] = part
    return out


def map_sharded(fn: Callable[[list[T]], list[R]], items: Sequence[T]) -> list[R]:
    """`fn(items)` computed as `fn` of each rank's shard, gathered: the same list on every rank."""
    return unshard(all_gather_object(fn(shard(items))))


def any_rank(flag: bool) -> bool:
    """True on every rank when any rank says so: one decision that all ranks act on (e.g. a checkpoint)."""
    return bool(max_over_ranks(float(flag)))


def max_over_ranks(value: float) -> float:
    """The largest of the ranks' `value`s, on every rank: one figure all ranks act on (e.g. the time spent,
    which sets the learning rate under a time budget; clocks differ, weights must not)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def sum_gradients(params: Sequence[torch.nn.Parameter], extra: torch.Tensor) -> torch.Tensor:
    """Sum the parameters' gradients and the 1-D tensor `extra` over the ranks, in one all-reduce.

    A parameter without a gradient on one rank (its share of the batch was empty) counts as zero there and
    keeps no gradient only if it has none on any rank, as a single process would leave it. Returns the
    summed `extra`. Without a process group nothing changes.
    """
    if not dist.is_initialized():
        return extra
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    present = torch.tensor([float(p.grad is not None) for p in params], device=extra.device)
    flat = torch.cat([g.reshape(-1).to(extra.dtype) for g in grads] + [present, extra])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p).to(p.dtype)
        offset += p.numel()
    for p, has in zip(params, flat[offset:offset + len(params)].tolist()):
        if not has:
            p.grad = None
    return flat[offset + len(params):]


def _collective_device() -> torch.device:
    """NCCL only moves GPU tensors; gloo takes CPU tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
