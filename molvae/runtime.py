"""Process settings for fast JAX on CPU hosts: keep XLA's large buffers mapped between steps.

XLA:CPU allocates each execution's temporary buffers (one block of ~150 MB for a training step
of the default model at batch 128) with malloc and frees them when the step ends. glibc serves
blocks that large with a fresh mmap and returns them with munmap, so every step touches new pages:
~39,000 page faults per step, about a quarter of the step's time on 2 cores (measured with
`resource.getrusage` around 10 steps: 160 ms/step before, 115-125 ms/step after).

`tune_allocator()` tells glibc to serve every block from one heap that it never trims. Freed
memory then stays with the process and is reused, and resident memory stays at its peak instead
of shrinking between steps. It must run before JAX starts its threads, so the experiment scripts
and the `molvae` command call it first. Set MOLVAE_TUNE_MALLOC=0 to leave the allocator alone.
It does nothing outside glibc (macOS, musl) or on accelerators, where device memory is separate.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_done: bool | None = None

# The same settings for another process, through glibc's environment tunables (the trim
# threshold is a size there: 1 TiB stands for "never"). The benchmark gives them to the PyTorch
# reference so both sides of the comparison run with the same allocator.
GLIBC_TUNABLES = (
    "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776"
)


def release_memory() -> bool:
    """Give the heap's free memory back to the system (glibc malloc_trim); True if it did.

    With tune_allocator the heap keeps its high-water mark for the life of the process: the
    right trade while training, but a short run then holds its training peak through sampling,
    evaluation and likelihoods. Called between such stages, resident memory falls to what is in
    use and the next stage grows the heap only as far as it needs. A no-op outside glibc.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    return libc.malloc_trim(0) == 1


def tune_allocator() -> bool:
    """Serve large blocks from one never-trimmed glibc heap; True if the settings took effect.

    Idempotent, and a no-op returning False when MOLVAE_TUNE_MALLOC=0 or libc is not glibc.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("MOLVAE_TUNE_MALLOC", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    # One arena: threads created later (XLA's pool) allocate from the main heap, where large
    # blocks can come from the heap instead of mmap (thread arenas fall back to mmap).
    ok = libc.mallopt(_M_ARENA_MAX, 1) == 1
    ok &= libc.mallopt(_M_MMAP_MAX, 0) == 1  # no mmap'd blocks: reuse the heap
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1  # -1: never give the heap top back (man mallopt)
    _done = bool(ok)
    return _done


# x86 CPU flags of bfloat16 matmul units (AVX-512 BF16, AMX tiles). Without either, XLA:CPU
# emulates bfloat16 matmuls, and they run slower than float32 ones (dtype_advice).
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_bfloat16_units(cpuinfo: str | None = None) -> bool | None:
    """Whether this x86 CPU has bfloat16 matmul units (AVX-512 BF16 or AMX): True or False from
    the `flags` line of /proc/cpuinfo (or the text given), None where that cannot be read (not
    Linux, not x86)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return bool(_BF16_FLAGS & set(value.split()))
    return None


def dtype_advice(dtype: str, backend: str, cpuinfo: str | None = None) -> str | None:
    """A warning for a compute dtype that is slower than float32 on this host, else None.

    Measured with `experiments/benchmark.py 'stages=[matmul,train_cifg512,train_cifg512_bf16]'`
    on 2 cores: bfloat16 trains the CIFG 1 x 512 1.39x faster than float32 on a CPU with AMX,
    but 0.80x (246 against 306 molecules/s) on an AMD EPYC with AVX2 only (2026-12-06)."""
    if dtype != "bfloat16" or backend != "cpu" or cpu_bfloat16_units(cpuinfo) is not False:
        return None
    return (
        "model.dtype=bfloat16 on a CPU without bfloat16 matmul units (no avx512_bf16 or "
        "amx_bf16 flag): XLA emulates them, and training runs ~0.8x the float32 speed "
        "(README: Training, mixed precision). model.dtype=float32 trains the same model "
        "faster here, at the same quality per step."
    )


_TRACES = [0]  # functions traced (a new shape or static argument: a compile) since start-up


def _count_trace(event: str, duration: float, **_: object) -> None:
    if event == "/jax/core/compile/jaxpr_trace_duration":
        _TRACES[0] += 1


def traces() -> int:
    """How many jitted functions JAX has traced in this process since the first call (each new
    input shape or static argument is one): take the difference around a loop to see whether it
    recompiles. Counts every function, so read it around code that runs only the one of interest."""
    global _listening
    if not _listening:
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(_count_trace)
        _listening = True
    return _TRACES[0]


_listening = False
