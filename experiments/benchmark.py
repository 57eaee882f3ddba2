"""Performance table: python experiments/benchmark.py [stages=[...]] [run_dir=DIR].

Every stage runs in a fresh process (experiments/bench_stages.py) so figures are steady-state
and peak memory is per stage. The PyTorch MOSES VAE (the reference) runs in the same session
from .venv-peer when present. Writes benchmark.json and benchmark.md in the run folder.
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import hydra
from _common import log, quiet_libraries, run_dir
from omegaconf import DictConfig

from molvae import runtime

HERE = Path(__file__).parent
PEER = HERE.parent / "scripts" / "peers" / "moses_vae_speed.py"


def stage(name: str, **args) -> dict:
    cmd = [sys.executable, str(HERE / "bench_stages.py"), name, json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
    if proc.returncode != 0:
        log.error("stage %s failed:\n%s", name, proc.stderr[-2000:])
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peer(cfg: DictConfig) -> dict:
    py = Path(cfg.peer_python).absolute()
    if not py.exists():
        return {"error": f"{py} missing: run `make peer` to measure the PyTorch reference"}
    from molvae.data import bundled_files

    cmd = [
        str(py),
        str(PEER),
        str(bundled_files()["train"]),
        str(cfg.peer_molecules),
        str(cfg.peer_batches),
    ]
    env = dict(os.environ)
    if cfg.peer_tuned_allocator:  # the allocator settings molvae's own stages run with
        env["GLIBC_TUNABLES"] = runtime.GLIBC_TUNABLES
    code, stdout, stderr, rss_mb = run_with_peak_rss(cmd, cwd=PEER.parent, env=env)
    if code != 0:
        return {"error": (stderr.strip().splitlines() or [f"exit {code}"])[-1]}
    out = json.loads(stdout.strip().splitlines()[-1])
    out["tuned_allocator"] = bool(cfg.peer_tuned_allocator)
    out["peak_rss_mb"] = rss_mb
    return out


# Runs argv[2:] and writes its peak RSS (kB, from wait4) to the file argv[1]. A child forked from
# a large process can report that process's RSS as its own (the pages before exec), so the
# command is started from this small launcher rather than from the caller.
_LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_with_peak_rss(cmd: list[str], **kwargs) -> tuple[int, str, str, float]:
    """Run cmd to the end: exit code, stdout, stderr and the peak resident set (MB) of that
    process alone (RUSAGE_CHILDREN would give the largest child so far)."""
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "rss"
        launcher = [sys.executable, "-c", _LAUNCHER, str(rss_file), *cmd]
        proc = subprocess.run(launcher, capture_output=True, text=True, **kwargs)
        rss = float(rss_file.read_text()) / 1024.0 if rss_file.exists() else float("nan")
        return proc.returncode, proc.stdout, proc.stderr, rss


def collect(cfg: DictConfig) -> dict:
    out: dict = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": len(__import__("os").sched_getaffinity(0)),
        }
    }
    results: dict = {}
    for name in cfg.stages:
        log.info("stage %s ...", name)
        if name == "matmul":
            r = stage("matmul")
        elif name.startswith("train_"):  # train_<preset> or train_<preset>_bf16
            preset = name.removeprefix("train_")
            dtype = "bfloat16" if preset.endswith("_bf16") else None
            preset = preset.removesuffix("_bf16")
            r = stage(
                "train",
                preset=preset,
                batch_size=cfg[f"train_batch_{preset}"],
                steps=cfg.train_steps,
                dtype=dtype,
            )
        elif name == "sample":
            r = stage("sample", run_dir=cfg.run_dir, n=cfg.sample_n)
        elif name == "preprocess":
            r = stage("preprocess", n=cfg.preprocess_n)
        elif name == "evaluate":
            r = stage(
                "evaluate", run_dir=cfg.run_dir, n=cfg.evaluate_n, reference=cfg.evaluate_reference
            )
        elif name == "optimize":
            r = stage("optimize", run_dir=cfg.run_dir, budget=cfg.optimize_budget)
        elif name == "peer":
            r = peer(cfg)
        else:
            raise ValueError(f"unknown stage {name!r}")
        log.info("stage %s: %s", name, r)
        results[name] = r
    out["stages"] = results
    out.update(summary(results))
    return out


# The train_<preset> stages the summary reports (molecules/s, MFU), in the table's order.
TRAIN_PRESETS = (
    "default",
    "gru512",
    "lstm512",
    "cifg512",
    "cifg768",
    "moses_gru",
    "default_bf16",
    "cifg512_bf16",
    "cifg768_bf16",
    "moses_gru_bf16",
)


def summary(r: dict) -> dict:
    """The flat keys of the benchmark contract, plus ratios against the reference."""
    s: dict = {}
    get = lambda st, k: r.get(st, {}).get(k)  # noqa: E731
    s["matmul_gflops"] = get("matmul", "matmul_gflops")
    s["matmul_gflops_bf16"] = get("matmul", "matmul_gflops_bf16")
    for preset in TRAIN_PRESETS:
        st = f"train_{preset}"
        s[f"train_mol_per_s_{preset}"] = get(st, "train_mol_per_s")
        key = "matmul_gflops_bf16" if preset.endswith("_bf16") else "matmul_gflops"
        # Against the peak of the stage's own dtype: the higher of the matmul stage's and the
        # one measured beside the stage's timed windows (the host's speed drifts).
        peak = max((p for p in (s[key], get(st, f"{key}_here")) if p), default=None)
        if get(st, "train_gflops") and peak:
            s[f"mfu_{preset}"] = get(st, "train_gflops") / peak
        s[f"recompiles_after_warmup_{preset}"] = get(st, "recompiles_after_warmup")
    for k in (
        "sample_decode_mol_per_s",
        "sample_end_to_end_mol_per_s",
        "rdkit_selfies_floor_mol_per_s",
        "sample_decode_mol_per_s_bf16",
        "sample_end_to_end_mol_per_s_bf16",
        "sample_decode_mol_per_s_grammar",
        "sample_end_to_end_mol_per_s_grammar",
    ):
        s[k] = get("sample", k)
    floor = s["rdkit_selfies_floor_mol_per_s"]
    for sfx in ("", "_bf16", "_grammar"):
        e2e, dec = s[f"sample_end_to_end_mol_per_s{sfx}"], s[f"sample_decode_mol_per_s{sfx}"]
        if e2e and floor:
            s[f"sample_floor_ratio{sfx}"] = floor / e2e
        if dec and floor:  # the ratio if decoding and RDKit ran one after the other
            s[f"sample_floor_ratio_serial{sfx}"] = 1 + floor / dec
        if sfx == "_grammar":  # the same matmuls as float32: no MFU figure of its own
            continue
        # Decoding FLOPs utilization, and the best ratio this machine allows when the network
        # shares its cores with RDKit: decoding at the matmul peak with no overhead.
        key = "matmul_gflops_bf16" if sfx else "matmul_gflops"
        peak = max((p for p in (s[key], get("sample", f"{key}_here")) if p), default=None)
        mflop = get("sample", "sample_decode_mflop_per_mol")
        if dec and peak and mflop:
            s[f"mfu_sample_decode{sfx}"] = dec * mflop / 1e3 / peak
            if floor:
                s[f"sample_floor_ratio_bound{sfx}"] = 1 + floor * mflop / 1e3 / peak
    s["preprocess_mol_per_s"] = get("preprocess", "preprocess_mol_per_s")
    s["evaluate_30k_seconds"] = get("evaluate", "evaluate_30k_seconds")
    for k in ("optimize_gradient_calls_per_s", "optimize_bo_calls_per_s"):
        s[k] = get("optimize", k)
    ours = [v.get("peak_rss_mb", 0) for name, v in r.items() if name != "peer"]
    s["peak_rss_mb"] = max(ours, default=None)  # molvae's stages; the reference's is its own
    s["peer_peak_rss_mb"] = get("peer", "peak_rss_mb")
    s["peer_train_mol_per_s"] = get("peer", "train_mol_per_s")
    for k in ("moses_gru", "moses_gru_bf16"):
        if s["peer_train_mol_per_s"] and s[f"train_mol_per_s_{k}"]:
            s[f"{k}_vs_peer"] = s[f"train_mol_per_s_{k}"] / s["peer_train_mol_per_s"]
    return {k: v for k, v in s.items() if v is not None}


def markdown(res: dict) -> str:
    rows = [("stage", "figure", "value", "peak RSS (MB)")]
    for name, r in res["stages"].items():
        for k, v in r.items():
            if k in ("peak_rss_mb", "tuned_allocator"):
                continue
            val = f"{v:,.2f}" if isinstance(v, float) else str(v)
            rows.append((name, k, val, f"{r.get('peak_rss_mb', float('nan')):,.0f}"))
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.insert(1, "|---|---|---|---|")
    ratios = [
        f"- {k}: {res[k]:.3f}"
        for k in (
            *(f"mfu_{p}" for p in TRAIN_PRESETS),
            "moses_gru_vs_peer",
            "moses_gru_bf16_vs_peer",
            "sample_floor_ratio",
            "sample_floor_ratio_serial",
            "sample_floor_ratio_bf16",
            "sample_floor_ratio_serial_bf16",
            "sample_floor_ratio_grammar",
            "sample_floor_ratio_serial_grammar",
            "mfu_sample_decode",
            "mfu_sample_decode_bf16",
            "sample_floor_ratio_bound",
            "sample_floor_ratio_bound_bf16",
        )
        if k in res
    ]
    m = res["machine"]
    tuned = any(r.get("tuned_allocator") for r in res["stages"].values())
    return (
        f"# molvae benchmark\n\n{m['platform']}, Python {m['python']}, {m['cpus']} CPUs; "
        f"glibc allocator tuned (molvae/runtime.py): {'yes' if tuned else 'no'}\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(ratios)
        + "\n"
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    quiet_libraries()
    out = run_dir()
    res = collect(cfg)
    (out / "benchmark.json").write_text(json.dumps(res, indent=1))
    md = markdown(res)
    (out / "benchmark.md").write_text(md)
    print(md)  # the table is this script's output
    log.info("wrote %s", out / "benchmark.json")


if __name__ == "__main__":
    main()
