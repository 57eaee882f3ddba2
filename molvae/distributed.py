"""Multi-host start (`jax.distributed`) from the environment or config; state layout on a mesh.

One process per host (or per GPU) runs the same program; `initialize()` joins them into one JAX
runtime so `jax.devices()` lists every device of the job and the training mesh spans them all.
It must run before anything touches a JAX backend (`jax.devices()`, the first array, ...).

When it starts the runtime (first match wins):
1. `MOLVAE_DISTRIBUTED=0` in the environment: never (an escape hatch for debugging).
2. An explicit coordinator: arguments (from config) or `JAX_COORDINATOR_ADDRESS`,
   `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`, with more than one process.
3. SLURM with more than one task in the step (`srun`, or submitit with `tasks_per_node` /
   `nodes` > 1): JAX reads the rest from `SLURM_*` (one GPU per task by default).
4. Open MPI with more than one rank (`mpirun -n N`).
Otherwise it does nothing, so a laptop, one GPU, and a one-task SLURM array job are unchanged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

OFF_VALUES = ("0", "false", "off", "no")


def _int(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be an integer, got {value!r}") from e


def plan(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """The keyword arguments for `jax.distributed.initialize`, or None for a single process.

    Pure (reads only `env`, default `os.environ`), so the decision is testable anywhere.
    Arguments left None are taken from the environment; any still unknown are left to JAX's
    own cluster detection (SLURM, Open MPI), or raise ValueError outside a cluster.
    """
    env = os.environ if env is None else env
    if env.get("MOLVAE_DISTRIBUTED", "").strip().lower() in OFF_VALUES:
        return None
    address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
    n = _int(num_processes, "num_processes")
    if n is None:
        n = _int(env.get("JAX_NUM_PROCESSES"), "JAX_NUM_PROCESSES")
    pid = _int(process_id, "process_id")
    if pid is None:
        pid = _int(env.get("JAX_PROCESS_ID"), "JAX_PROCESS_ID")
    ids = list(local_device_ids) if local_device_ids is not None else None
    explicit = {
        k: v
        for k, v in {
            "coordinator_address": address,
            "num_processes": n,
            "process_id": pid,
            "local_device_ids": ids,
        }.items()
        if v is not None
    }

    # srun sets SLURM_STEP_NUM_TASKS for its step; a batch script without srun is one process.
    slurm_tasks = _int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS"), "SLURM_NTASKS")
    in_slurm = all(v in env for v in ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_STEP_NODELIST"))
    mpi_ranks = _int(env.get("OMPI_COMM_WORLD_SIZE"), "OMPI_COMM_WORLD_SIZE")
    cluster_multi = (in_slurm and (slurm_tasks or 1) > 1) or (mpi_ranks or 1) > 1

    if n is not None and n <= 1:
        return None
    if n is not None or address is not None or pid is not None:
        needed = ("coordinator_address", "num_processes", "process_id")
        missing = [k for k in needed if k not in explicit]
        if missing and not cluster_multi:
            raise ValueError(
                f"multi-host start needs coordinator_address, num_processes and process_id; "
                f"missing {missing} (set them in config or as JAX_COORDINATOR_ADDRESS, "
                f"JAX_NUM_PROCESSES, JAX_PROCESS_ID)"
            )
        return explicit
    if cluster_multi:
        return explicit  # JAX fills in the rest from SLURM_* / OMPI_* variables
    return None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
) -> bool:
    """Start `jax.distributed` when the environment or the arguments ask for it (see module doc).

    Returns True if this call (or an earlier one) started a multi-process runtime, False for a
    single process. Call it once, first thing in an entry point, before any JAX computation.
    """
    import jax

    if jax.distributed.is_initialized():
        return True
    kwargs = plan(coordinator_address, num_processes, process_id, local_device_ids)
    if kwargs is None:
        return False
    jax.distributed.initialize(**kwargs)
    log.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def is_main_process() -> bool:
    """True on process 0: the one that writes logs, metrics and reports of a multi-host run."""
    import jax

    return jax.process_index() == 0


# ----------------------------------------------------------------------------- state layout


def state_sharding(state: Any, mesh: Any, mode: str = "replicated", min_size: int = 1024) -> Any:
    """A NamedSharding per leaf of `state` on `mesh` (first mesh axis is the data axis).

    replicated: every device holds every array (plain data parallelism).
    fsdp: arrays of at least `min_size` elements are split along their largest dimension that
      divides over the mesh (parameters and optimizer moments alike); the rest stay replicated.
      Saves memory per device for large models; XLA inserts the all-gathers.
    """
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    if mode not in ("replicated", "fsdp"):
        raise ValueError(f"param sharding must be replicated or fsdp, got {mode!r}")
    axis = mesh.axis_names[0]
    size = mesh.shape[axis]

    def one(x: Any) -> NamedSharding:
        shape = getattr(x, "shape", ())
        if mode == "replicated" or size == 1 or int(np.prod(shape)) < min_size:
            return NamedSharding(mesh, P())
        dims = [d for d in np.argsort(shape)[::-1] if shape[d] % size == 0]
        if not dims:
            return NamedSharding(mesh, P())
        spec = [None] * len(shape)
        spec[int(dims[0])] = axis
        return NamedSharding(mesh, P(*spec))

    return jax.tree.map(one, state)
