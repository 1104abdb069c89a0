"""How many threads a replica's runtimes use: one pure policy, and the few reads it needs.

A runtime left to its defaults (ONNX Runtime, torch, OpenBLAS) starts one spinning intra-op thread
per core, as if it had the machine to itself. A replica rarely has: the gateway and other replicas
run beside it, and spinning threads take the CPU their event loops need. `plan_threads` sizes the
pool from the CPUs the replica may use instead; `available_cores` says how many this process may
run on (its affinity, capped by its cgroup's CPU quota); `thread_env` is the plan as the
environment variables the BLAS and OpenMP libraries read when they load.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ThreadPlan", "available_cores", "cgroup_cpus", "cores_allowed", "plan_threads", "thread_env"]

#: cgroup v2's quota file ("QUOTA PERIOD" or "max PERIOD").
_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
#: cgroup v1's quota (-1: none) and period files, in microseconds.
_CFS_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
_CFS_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


@dataclass(frozen=True, slots=True)
class ThreadPlan:
    """The thread settings of one replica process.

    intra_op: threads one model call may use (ONNX Runtime's intra-op pool, torch's threads).
    inter_op: threads running independent parts of a graph at once; always 1, since a replica's
    concurrency comes from its executor (`instances`). spinning: whether idle pool threads
    busy-wait for the next piece of work instead of sleeping. why: the reason, for the log.
    """

    intra_op: int
    inter_op: int
    spinning: bool
    why: str


def plan_threads(*, cores: int, cpus: float | None = None, requested: int | None = None) -> ThreadPlan:
    """The threads for a replica that may use `cpus` CPUs of the `cores` it may run on.

    cores: the cores this process may run on (`available_cores()`). cpus: the CPUs the replica may
    use: its CPU limit, or its share of the machine as its engine gives it (None: all of `cores`).
    requested: an explicit thread count (`--threads N`, an annotation) that wins over the sizing.

    The pool gets one thread per whole CPU of the share (at least one). Its threads spin only when
    the share has at least one CPU beyond them: spinning uses slack the replica owns, and where its
    threads fill its share, spinning would take the CPU its event loop and the gateway need.
    """
    if cpus is not None and cpus <= 0:
        raise ValueError(f"cpus must be > 0, not {cpus}")
    if requested is not None and requested < 1:
        raise ValueError(f"requested threads must be >= 1, not {requested}")
    cores = max(1, cores)
    share = float(cores) if cpus is None else min(cpus, cores)
    intra_op = requested or max(1, math.floor(share))
    spinning = intra_op > 1 and share >= intra_op + 1
    sized = "as requested" if requested else "one per whole CPU"
    why = (
        f"{_count(intra_op, 'thread')} ({sized}) for a share of {share:.3g} of {_count(cores, 'core')}; "
        + ("spinning: the share has a CPU to spare" if spinning else "not spinning: no CPU to spare")
    )
    return ThreadPlan(intra_op=intra_op, inter_op=1, spinning=spinning, why=why)


def thread_env(plan: ThreadPlan) -> dict[str, str]:
    """`plan` as the variables torch, sklearn and numpy's BLAS read when they load (set them first)."""
    threads = str(plan.intra_op)
    return {
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "OMP_WAIT_POLICY": "ACTIVE" if plan.spinning else "PASSIVE",
    }


def cgroup_cpus(text: str) -> float | None:
    """The CPUs a cgroup quota allows, from "QUOTA PERIOD" (cgroup v2's `cpu.max`, or v1's two
    files joined by a space); None when there is no quota ("max", -1) or the text is not one."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:  # v1 writes -1 for "no quota"
        return None
    return quota / period


def cores_allowed(affinity: int, quota: float | None) -> int:
    """Cores a process may keep busy: its affinity, capped by a CPU quota rounded up; at least 1."""
    cores = max(1, affinity)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by its cgroup's CPU quota."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count() or 1
    return cores_allowed(affinity, _quota())


def _quota() -> float | None:
    try:
        return cgroup_cpus(_CPU_MAX.read_text())
    except OSError:
        pass
    try:
        return cgroup_cpus(f"{_CFS_QUOTA.read_text().strip()} {_CFS_PERIOD.read_text().strip()}")
    except OSError:
        return None


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
