"""Where a training run executes: one device, or several processes under `torchrun` (PyTorch DDP).

    rt = setup(cfg.device, cfg.precision)     # reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK
    model = wrap(model, rt)                   # DistributedDataParallel when world_size > 1
    for step in ...:
        idx = shard(global_batch_indices, rt) # this rank's equal part of the global batch
        with autocast(rt):
            loss = ...
        scaler.scale(loss).backward()         # scaler = grad_scaler(rt): active for fp16 on cuda only
        ...
    val_loss = all_reduce_mean(val_loss, rt)  # same logged number on every rank
    cleanup(rt)

Several single-device runs started on one machine (DVC queue workers, a shell loop) each claim
their own GPU with claim_gpu(): an exclusive file lock per GPU, held until the process exits.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# open lock files of the GPUs this process claimed: the flock lives as long as the handle
_CLAIMED: list = []


@dataclass
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    precision: str  # "fp32" | "bf16" | "fp16"
    created_group: bool = field(default=False, repr=False)  # setup() called init_process_group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def _lock_dir(lock_dir: str | Path | None) -> Path:
    if lock_dir is None:
        lock_dir = os.environ.get("KWYN_LOCK_DIR") or tempfile.gettempdir()
    path = Path(lock_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _gpu_names(count: int) -> list[str]:
    """A name per visible GPU index for its lock file: the CUDA_VISIBLE_DEVICES entry when set (so two
    runs that see different physical GPUs as index 0 do not block each other), else the index."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    names = []
    for i in range(count):
        name = visible[i] if i < len(visible) else str(i)
        names.append(re.sub(r"[^A-Za-z0-9_.-]", "_", name))
    return names


def claim_gpu(count: int, lock_dir: str | Path | None = None) -> int | None:
    """Index (0..count-1) of the first GPU no other process holds, now held by this one until it exits;
    None when all `count` are taken. Lock files: <lock_dir>/kwyn-gpu-<name>.lock, lock_dir defaulting to
    $KWYN_LOCK_DIR or the temp directory (every run on the machine must use the same one)."""
    directory = _lock_dir(lock_dir)
    for index, name in enumerate(_gpu_names(count)):
        handle = open(directory / f"kwyn-gpu-{name}.lock", "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        _CLAIMED.append(handle)
        return index
    return None


def release_gpus() -> None:
    """Give back every GPU this process claimed (they are also given back when it exits)."""
    while _CLAIMED:
        _CLAIMED.pop().close()


def _check(value: str, allowed, what: str) -> None:
    if value not in allowed and not (what == "device" and re.fullmatch(r"cuda:\d+", str(value))):
        raise ValueError(f"{what} {value!r} is not one of {list(allowed)}")


def _resolve_device(device: str, world_size: int, local_rank: int, under_torchrun: bool) -> torch.device:
    if device == "cpu":
        return torch.device("cpu")
    has_cuda = torch.cuda.is_available()
    if device == "auto" and not has_cuda:
        return torch.device("cpu")
    if not has_cuda:
        raise ValueError(f"device {device!r}: CUDA is not available here (use 'cpu' or 'auto')")
    if device.startswith("cuda:"):
        if world_size > 1:
            raise ValueError(f"device {device!r} under torchrun would put every rank on one GPU; "
                             "use 'auto' or 'cuda' (rank r then runs on cuda:LOCAL_RANK)")
        index = int(device.split(":")[1])
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) visible")
        return torch.device("cuda", index)
    if under_torchrun or device == "cuda":
        return torch.device("cuda", local_rank)
    index = claim_gpu(torch.cuda.device_count())  # device == "auto", one process among several
    if index is None:
        raise RuntimeError(f"all {torch.cuda.device_count()} GPU(s) are claimed by other kwyn runs "
                           f"(lock files kwyn-gpu-*.lock in {_lock_dir(None)}); start at most that many jobs "
                           "(dvc queue start --jobs N) or set train.device")
    return torch.device("cuda", index)


def setup(device: str = "auto", precision: str = "fp32") -> Runtime:
    """The Runtime of this process. Under torchrun (WORLD_SIZE > 1) it joins the process group (nccl on
    cuda, gloo on cpu) unless one exists. device: "auto" (cuda:LOCAL_RANK under torchrun; else a GPU
    claimed with claim_gpu(); cpu without CUDA), "cpu", "cuda", "cuda:N". precision: fp32, bf16, fp16."""
    _check(device, DEVICES, "device")
    _check(precision, PRECISIONS, "precision")
    rank, world_size = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    under_torchrun = "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ
    resolved = _resolve_device(device, world_size, local_rank, under_torchrun)
    if precision == "fp16" and resolved.type == "cpu":
        raise ValueError("precision 'fp16' is not supported on cpu (fp16 autocast training needs a GPU); "
                         "use 'bf16' or 'fp32'")
    if precision == "bf16" and resolved.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision 'bf16' is not supported by {torch.cuda.get_device_name(resolved)}; "
                         "use 'fp16' or 'fp32'")
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    created = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo",
                                rank=rank, world_size=world_size)
        created = True
    return Runtime(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved,
                   precision=precision, created_group=created)


def wrap(module: nn.Module, runtime: Runtime, **ddp_kwargs) -> nn.Module:
    """DistributedDataParallel(module) when distributed (it syncs the parameters from rank 0 and averages
    the gradients of the trainable ones; requires_grad=False parameters are left alone), else `module`."""
    if not runtime.distributed:
        return module
    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, **ddp_kwargs)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (for saving a state_dict without the `module.` prefix)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def shard(batch: list[int], runtime: Runtime) -> list[int]:
    """This rank's part of a global batch of example indices: batch[rank::world_size]. Shards must be
    equal: DDP averages the ranks' gradients, so unequal shards would weight examples unequally."""
    batch = list(batch)
    if not runtime.distributed:
        return batch
    if len(batch) < runtime.world_size or len(batch) % runtime.world_size:
        raise ValueError(f"a global batch of {len(batch)} examples cannot be split equally over "
                         f"{runtime.world_size} processes; set train.batch_size to a multiple of the world size")
    return batch[runtime.rank::runtime.world_size]


def autocast(runtime: Runtime) -> contextlib.AbstractContextManager:
    """torch.autocast for bf16/fp16 on the runtime's device; a no-op context for fp32."""
    if runtime.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=runtime.device.type, dtype=_DTYPES[runtime.precision])


def grad_scaler(runtime: Runtime) -> torch.amp.GradScaler:
    """Loss scaler, enabled only for fp16 on cuda (bf16 has fp32's range and needs none); when disabled,
    scale() returns the loss unchanged and step() just calls optimizer.step()."""
    enabled = runtime.precision == "fp16" and runtime.device.type == "cuda"
    return torch.amp.GradScaler(runtime.device.type, enabled=enabled)


def all_reduce_mean(value: float, runtime: Runtime) -> float:
    """Mean of `value` over the ranks (for logging losses and validation metrics); `value` when alone."""
    if not runtime.distributed:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=runtime.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / runtime.world_size


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        if runtime.device.type == "cuda":
            dist.barrier(device_ids=[runtime.device.index])
        else:
            dist.barrier()


def cleanup(runtime: Runtime) -> None:
    """Leave the process group if setup() created it."""
    if runtime.created_group and dist.is_initialized():
        dist.destroy_process_group()
        runtime.created_group = False
