"""Training classifiers with PyTorch, in one process or data-parallel: the local PyTorchJob.

`train_classifier` runs a cross-entropy loop over a DataLoader, with a checkpoint per epoch, and
returns the weights and per-epoch metrics. With `workers > 1` it spawns that many processes that
rendezvous the way a PyTorchJob's pods do (`MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE` in
the environment) and train with `DistributedDataParallel`: gloo on CPU, nccl with one GPU per
worker. One loop serves every case: a single process is a world of one (the same
`DistributedSampler`, unsharded), and nccl differs from gloo only in the device each rank trains
on. Only the CPU paths run in this repository's tests. Spawning and supervising the worker
processes is `_distributed`'s job; this module holds the loop they run.

With `placement="ray"` the workers are Ray actors anywhere in a Ray cluster instead, one per CPU or
per GPU, spread over the nodes (`_ray_distributed`), with the same loop, checkpoints and metrics.
A worker whose node dies fails the run (WorkerFailed); it does not resume by itself, but a re-run
with the same `checkpoint_dir` resumes after the last checkpoint.

Every epoch's randomness (shuffling, dropout) derives from `(seed, epoch)`, so a run is repeatable
and a run resumed from a checkpoint retraces the one that was interrupted.

`export_onnx` and `export_torchscript` write the trained module (usually
`preprocess.serving_model(...)`) in the two formats the serving runtimes load.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import pickle
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from serving.pipelines._distributed import WorkerFailed, run_workers

__all__ = [
    "EpochMetrics",
    "TrainConfig",
    "TrainResult",
    "WorkerFailed",
    "evaluate",
    "export_onnx",
    "export_torchscript",
    "mlp",
    "train_classifier",
]

_OPTIMIZERS = ("adam", "sgd")
_BACKENDS = ("gloo", "nccl")
_PLACEMENTS = ("local", "ray")
#: ONNX Runtime has loaded opset 17 since 1.14; the legacy exporter writes it without onnxscript.
_ONNX_OPSET = 17
_EVAL_BATCH = 4096


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Invalid values raise ValueError here, before anything starts.

    epochs: the total number of epochs; a resumed run trains only those not yet checkpointed.
    batch_size: samples per optimizer step *per worker*: with `workers=N` a step sees N * batch_size
        samples. The learning rate is not scaled with it.
    optimizer: "adam", or "sgd" (momentum 0.9). weight_decay: L2 penalty passed to the optimizer.
    seed: seeds model initialization (all workers start from the same weights), shuffling and dropout.
    workers: processes training data-parallel; 1 trains in the calling process (placement "local").
    backend: torch.distributed backend for workers > 1. None: nccl when the device is CUDA and there
        is a GPU per worker, else gloo.
    checkpoint_dir: where `epoch-NNNN.pt` is written after every epoch (model, optimizer, epoch,
        history). A call whose directory holds checkpoints resumes after the latest one; if that is
        already at `epochs` or past it, nothing trains and the checkpoint's weights come back.
    device: "cpu", "cuda" or "cuda:N". None: CUDA when available (for workers > 1, only with nccl).
        Worker `rank` trains on GPU `rank`.
    placement: where the workers run. "local": processes on this machine (workers=1: the calling
        process). "ray": one Ray actor per worker (workers=1 included), anywhere in the Ray cluster,
        holding one CPU, or one GPU and one CPU when the device is CUDA; placed on different nodes
        where the cluster has room (placement group, strategy SPREAD), else sharing nodes. There the
        device is "cpu" or "cuda" (each worker trains on the GPU Ray gives it); None means CUDA when
        the cluster has a GPU per worker. Checkpoints still land in `checkpoint_dir` on this machine
        (rank 0 sends each one back; a resumed run sends the latest to every worker), so the nodes
        need no shared filesystem. A worker that dies, or whose node dies, fails the run with
        WorkerFailed naming its rank and node; it is not restarted: re-run to resume from the last
        checkpoint. A cluster that has no room for the workers within two minutes (an autoscaler may
        add nodes meanwhile) raises TimeoutError.
    ray_address: the cluster for placement "ray": "HOST:PORT" (the head's GCS port),
        "ray://HOST:PORT" or "auto", joined as all of servegate joins (`serving.raycluster.connect`):
        a malformed or unreachable address, or a Ray too old, raises RayUnavailable before anything
        starts; the connection stays for later calls. None: a local Ray started for the call and
        shut down after it. A process already connected to Ray (`ray.init` called) trains on that
        cluster.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    seed: int = 0
    workers: int = 1
    backend: str | None = None
    checkpoint_dir: Path | None = None
    device: str | None = None
    placement: str = "local"
    ray_address: str | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use one of {_OPTIMIZERS}")
        if self.backend is not None and self.backend not in _BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; use one of {_BACKENDS} or None")
        if self.placement not in _PLACEMENTS:
            raise ValueError(f"unknown placement {self.placement!r}; use one of {_PLACEMENTS}")
        if self.ray_address is not None and self.placement != "ray":
            raise ValueError(
                f"ray_address {self.ray_address!r} is for placement 'ray', not {self.placement!r}"
            )
        if self.checkpoint_dir is not None:
            object.__setattr__(self, "checkpoint_dir", Path(self.checkpoint_dir))
        if self.device is not None:
            try:
                torch.device(self.device)
            except RuntimeError as exc:
                raise ValueError(f"invalid device {self.device!r}: {exc}") from None


@dataclass
class EpochMetrics:
    """One epoch, numbered from 1. Losses are mean cross-entropy per sample; the validation fields
    are None without validation data; `seconds` is the epoch's wall time (training + validation)."""

    epoch: int
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float


@dataclass
class TrainResult:
    """The trained weights (CPU tensors, keys as `model_fn()`'s state dict) and every epoch's metrics,
    including epochs restored from a checkpoint. `nodes`: for placement "ray", the Ray node id each
    worker ran on, by rank; empty otherwise."""

    state_dict: dict[str, torch.Tensor]
    history: list[EpochMetrics] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)

    @property
    def final(self) -> EpochMetrics:
        return self.history[-1]


def train_classifier(
    model_fn: Callable[[], nn.Module],
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> TrainResult:
    """Train `model_fn()` to predict `y` (int labels) from `x` (float features) with cross-entropy.

    `model_fn` runs once in every worker, after the process group is up (so it may read `RANK`); for
    `workers > 1` it must be picklable (a module-level function or a `functools.partial` of one).
    `on_epoch` runs in the calling process after each epoch, epochs restored from a checkpoint
    excepted; the workers wait for it. If it raises, every worker stops after that epoch and the
    exception propagates: early stopping. A worker's exception is re-raised here, with the worker's
    traceback as its cause; a worker that dies silently raises WorkerFailed.

    Workers are spawned, so they import the caller's `__main__` again: a script that trains with
    `workers > 1` needs the usual `if __name__ == "__main__":` guard. Each worker gets a copy of
    the data, and on CPU an equal share of the cores as torch threads.

    With `placement="ray"` (see TrainConfig) `model_fn` travels by cloudpickle (a closure will do),
    and the modules it refers to must import on every node; the data travels once, through Ray's
    object store; a worker's exception is noted with its rank and node.
    """
    data = _check_data(x, y, val)
    if config.checkpoint_dir is not None:
        config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if config.placement == "ray":
        return _train_on_ray(model_fn, data, config, on_epoch)
    job = _Job(model_fn, *data, config, *_placement(config))
    if config.workers == 1:

        def report(metrics: EpochMetrics) -> bool:
            if on_epoch is not None:
                on_epoch(metrics)
            return False

        state, history = _train(job, 0, 1, torch.device(job.device), report)
        return TrainResult(state, history)
    try:
        pickle.dumps(model_fn)
    except Exception as exc:
        raise ValueError(
            "model_fn must be picklable for workers > 1 (a module-level function or a functools.partial "
            f"of one): {exc}"
        ) from None
    state, history = run_workers(_train, job, config.workers, job.backend, job.device, on_epoch)
    return TrainResult(state, history)


def mlp(n_features: int, hidden: Sequence[int], n_classes: int) -> nn.Sequential:
    """A ReLU multilayer perceptron returning logits. Module-level, so
    `functools.partial(mlp, 64, (32,), 10)` is a `model_fn` that worker processes can unpickle."""
    sizes = [n_features, *hidden]
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], n_classes))


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """`{"accuracy", "loss"}` of `model` on `(x, y)`, in eval mode on the model's device."""
    x, y, _ = _check_data(x, y, None)
    device = next(model.parameters(), torch.empty(0)).device
    loss, correct, n = _eval_sums(model, x, y, device).tolist()
    return {"accuracy": correct / n, "loss": loss / n}


def export_onnx(model: nn.Module, n_features: int, path: Path) -> Path:
    """Write `model` as ONNX: input "input" (FP32, [batch, n_features]), output "output", any batch.

    The file is loaded back into ONNX Runtime and its output compared with torch's before returning,
    so a model that exports but computes something else fails here rather than in a server.
    """
    import onnxruntime

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().eval()  # leave the caller's module where and as it was
    with warnings.catch_warnings():
        # The torch.export-based exporter needs onnxscript, which is not a dependency; the legacy
        # exporter warns about its own deprecation, which says nothing to our callers.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, n_features),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=_ONNX_OPSET,
        )
    probe = torch.randn(3, n_features, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["output"], {"input": probe.numpy()})
    with torch.no_grad():
        expected = model(probe).numpy()
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"{path} computes something else in ONNX Runtime than the torch module")
    return path


def export_torchscript(model: nn.Module, path: Path, n_features: int | None = None) -> Path:
    """Write `model` as a scripted TorchScript archive (CPU, eval mode).

    With `n_features`, the archive embeds the signature the pytorch serving runtime reads
    (`servegate.json`: input FP32 [-1, n_features], output FP32 [-1, classes]), so the served model
    has typed, batchable inputs; without it the runtime declares them shapeless.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.script(copy.deepcopy(model).cpu().eval())
    extra = {}
    if n_features is not None:
        (argument, *_) = [arg.name for arg in scripted.forward.schema.arguments[1:]]
        with torch.no_grad():
            classes = scripted(torch.zeros(1, n_features)).shape[-1]
        signature = {
            "inputs": [{"name": argument, "datatype": "FP32", "shape": [-1, n_features]}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, classes]}],
        }
        extra["servegate.json"] = json.dumps(signature)
    torch.jit.save(scripted, str(path), _extra_files=extra)
    return path


# -- the loop: one process, or one rank of many ---------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs, picklable."""

    model_fn: Callable[[], nn.Module]
    x: np.ndarray
    y: np.ndarray
    val: tuple[np.ndarray, np.ndarray] | None
    config: TrainConfig
    backend: str | None
    device: str  # "cpu", "cuda" or "cuda:N"; for workers > 1, "cuda" means GPU `rank`


def _check_data(
    x: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.ndim != 1:
        raise ValueError(f"x must be 2-D (samples, features) and y 1-D, got shapes {x.shape} and {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)} labels")
    if len(x) == 0:
        raise ValueError("no data: x and y are empty")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError(f"y must hold class indices (non-negative integers), got {y.dtype}")
    checked_val = None
    if val is not None:
        vx, vy, _ = _check_data(*val, None)
        if vx.shape[1] != x.shape[1]:
            raise ValueError(f"validation data has {vx.shape[1]} features, training data {x.shape[1]}")
        checked_val = (vx, vy)
    return np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64), checked_val


def _train_on_ray(
    model_fn: Callable[[], nn.Module],
    data: tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None],
    config: TrainConfig,
    on_epoch: Callable[[EpochMetrics], None] | None,
) -> TrainResult:
    from serving.pipelines import _ray_distributed

    with _ray_distributed.connected(config.ray_address):
        backend, device = _ray_placement(config, _ray_distributed.cluster_gpus())
        job = _Job(model_fn, *data, config, backend, device)
        mirror = None
        if config.checkpoint_dir is not None:
            latest = _checkpoints(config.checkpoint_dir)[-1:]
            mirror = _ray_distributed.Mirror(config.checkpoint_dir, _with_checkpoint_dir, tuple(latest))
        state, history, nodes = _ray_distributed.run_ray_workers(
            _train, job, config.workers, backend, device, on_epoch, mirror
        )
    return TrainResult(state, history, nodes)


def _with_checkpoint_dir(job: _Job, directory: Path) -> _Job:
    """`job` checkpointing into `directory`: a Ray worker's private stand-in for the driver's."""
    return dataclasses.replace(job, config=dataclasses.replace(job.config, checkpoint_dir=directory))


def _ray_placement(config: TrainConfig, cluster_gpus: float) -> tuple[str, str]:
    """(backend, device) for workers on Ray, or ValueError. The driver's own CUDA does not matter:
    the workers' nodes have the GPUs, one per worker, each its `cuda:0`."""
    gpus = cluster_gpus >= config.workers and config.backend != "gloo"
    device = config.device or ("cuda" if gpus else "cpu")
    if torch.device(device).index is not None:
        raise ValueError(
            f"with placement 'ray' the device is 'cpu' or 'cuda' (Ray assigns the GPUs), not {device!r}"
        )
    backend = config.backend or ("nccl" if device == "cuda" else "gloo")
    if backend == "nccl" and device != "cuda":
        raise ValueError(f"nccl needs CUDA, but the device is {device!r}")
    return backend, device


def _placement(config: TrainConfig) -> tuple[str | None, str]:
    """(backend, device) for `config`, or ValueError for a combination this machine cannot run."""
    cuda = torch.cuda.is_available()
    device = config.device or ("cuda" if cuda else "cpu")
    if torch.device(device).type == "cuda" and not cuda:
        raise ValueError(f"device {device!r} asked for, but CUDA is not available")
    if config.workers == 1:
        return None, device
    if not dist.is_available():
        raise ValueError("workers > 1 needs torch.distributed, which this torch build lacks")
    gpus = torch.cuda.device_count()
    backend = config.backend or ("nccl" if device == "cuda" and config.workers <= gpus else "gloo")
    if backend == "nccl" and not (device == "cuda" and config.workers <= gpus and dist.is_nccl_available()):
        raise ValueError(f"nccl needs CUDA and a GPU per worker: {config.workers} workers, {gpus} GPUs")
    if config.device is None and backend == "gloo":
        device = "cpu"  # more workers than GPUs: sharing GPUs would be slower than not using them
    elif torch.device(device).index is not None:
        raise ValueError(f"with workers > 1 the device is 'cpu' or 'cuda' (one GPU per rank), not {device!r}")
    return backend, device


def _train(
    job: _Job, rank: int, world: int, device: torch.device, report: Callable[[EpochMetrics], bool]
) -> tuple[dict[str, torch.Tensor], list[EpochMetrics]]:
    """Train as `rank` of `world` (a process group is up when world > 1). `report` is called on rank
    0 after each epoch and says whether to stop; every rank learns its answer."""
    cfg = job.config
    torch.manual_seed(cfg.seed)  # every rank builds the same initial weights
    model = job.model_fn().to(device)
    optimizer = _optimizer(model, cfg)
    start, history = _resume(cfg.checkpoint_dir, model, optimizer, device)
    net: nn.Module = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    data = TensorDataset(torch.from_numpy(job.x), torch.from_numpy(job.y))
    # Pads the data so every rank runs the same number of steps: DDP's all-reduce in backward()
    # would otherwise wait forever on a rank that ran out of batches.
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(data, batch_size=cfg.batch_size, sampler=sampler)
    val = (job.val[0][rank::world], job.val[1][rank::world]) if job.val is not None else None

    for epoch in range(start + 1, cfg.epochs + 1):
        started = time.perf_counter()
        torch.manual_seed(cfg.seed + epoch)
        sampler.set_epoch(epoch)
        net.train()
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss * n, n
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            loss = F.cross_entropy(net(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums[0] += loss.detach().double() * len(yb)  # no .item(): it would sync a GPU every step
            sums[1] += len(yb)
        # Evaluate the bare module: DDP's forward would sync buffers, a collective that deadlocks
        # when ranks hold different numbers of validation batches.
        val_sums = _eval_sums(model, *val, device) if val is not None else torch.zeros(3, device=device)
        totals = torch.cat([sums, val_sums.to(sums)])
        if world > 1:
            dist.all_reduce(totals)
        loss_sum, n, val_loss, val_correct, val_n = totals.tolist()
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=loss_sum / n,
            val_loss=val_loss / val_n if val is not None else None,
            val_accuracy=val_correct / val_n if val is not None else None,
            seconds=time.perf_counter() - started,
        )
        history.append(metrics)
        if rank == 0 and cfg.checkpoint_dir is not None:
            _save_checkpoint(cfg.checkpoint_dir, model, optimizer, history)
        stop = report(metrics) if rank == 0 else False
        if world > 1:
            flag = torch.tensor([int(stop)], device=device)
            dist.broadcast(flag, src=0)
            stop = bool(flag.item())
        if stop:
            break
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, history


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def _eval_sums(model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device) -> torch.Tensor:
    """(summed loss, correct, count) as float64, so shards can be all-reduced before dividing."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for i in range(0, len(x), _EVAL_BATCH):
        xb = torch.from_numpy(x[i : i + _EVAL_BATCH]).to(device)
        yb = torch.from_numpy(y[i : i + _EVAL_BATCH]).to(device)
        logits = model(xb)
        sums[0] += F.cross_entropy(logits, yb, reduction="sum").double()
        sums[1] += (logits.argmax(dim=1) == yb).sum()
        sums[2] += len(yb)
    model.train(was_training)
    return sums


# -- checkpoints ----------------------------------------------------------------------------------


def _save_checkpoint(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, history: list[EpochMetrics]
) -> None:
    epoch = history[-1].epoch
    path = directory / f"epoch-{epoch:04d}.pt"
    partial = path.with_suffix(".tmp")
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": [asdict(m) for m in history],
    }
    torch.save(state, partial)
    os.replace(partial, path)  # a crash mid-write leaves no truncated "latest" checkpoint


def _resume(
    directory: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> tuple[int, list[EpochMetrics]]:
    """Load the latest checkpoint into model and optimizer: (its epoch, its history), or (0, [])."""
    checkpoints = _checkpoints(directory) if directory is not None else []
    if not checkpoints:
        return 0, []
    state = torch.load(checkpoints[-1], map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["epoch"], [EpochMetrics(**m) for m in state["history"]]


def _checkpoints(directory: Path) -> list[Path]:
    """The checkpoints in `directory`, oldest first."""
    return sorted(directory.glob("epoch-*.pt"))
