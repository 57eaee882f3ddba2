"""Data parallelism: one training step on 2 devices (or 2 processes) equals the 1-device step.

Device counts are fixed when JAX starts, so each configuration runs in its own subprocess:
this file doubles as the worker (`python tests/test_sharding.py MODE OUT RUN_DIR`), which trains
on CPU with XLA_FLAGS=--xla_force_host_platform_device_count=N and saves loss and parameters.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SMILES

ROOT = Path(__file__).resolve().parents[1]
MODEL = dict(embed_dim=8, enc_hidden=16, latent_dim=4, dec_hidden=16)
# Constant lr without warm-up: the first step really moves the parameters (a warm-up from 0
# would make the step a no-op and the comparison empty).
TRAIN = dict(
    steps=1,
    batch_size=16,
    lr=1e-2,
    lr_schedule="constant",
    warmup_steps=0,
    log_every=1,
    eval_every=1,
    ckpt_every=1,
    eval_size=16,
    kl_schedule="constant",
    progress=False,
)
# Losses and gradients agree to float32 reduction order. Parameters get one Adam step,
# lr * g / (|g| + eps): where |g| is near eps that ratio amplifies the last-bit differences of a
# cross-device sum, so parameters are compared to 1% of the step size lr.
RTOL, ATOL = 1e-5, 1e-2 * TRAIN["lr"]


# ----------------------------------------------------------------------------- worker


def _arrays():
    from molvae import chem
    from molvae.vocab import Vocab

    selfies = [chem.smiles_to_selfies(s) for s in SMILES] * 6
    vocab = Vocab.fit(selfies)
    return vocab, vocab.encode_batch(selfies, 40)


def _flat_params(model) -> dict[str, np.ndarray]:
    import jax
    from flax import nnx

    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


class _NoLogger:
    def log(self, record) -> None:
        pass

    def finish(self) -> None:
        pass


def worker(mode: str, out: str, run_dir: str) -> None:
    """train: molvae.training.train, one step; fsdp: one step, sharded vs replicated state."""
    from molvae import distributed

    multi = distributed.initialize()  # from JAX_COORDINATOR_ADDRESS etc. in the 2-process test
    import jax

    from molvae.loggers import JsonlLogger
    from molvae.models.vae import ModelConfig
    from molvae.training import TrainConfig, train

    vocab, (tokens, lengths) = _arrays()
    mcfg = ModelConfig(vocab_size=len(vocab), **MODEL)
    cfg = TrainConfig(**TRAIN)
    if mode == "train":
        main = distributed.is_main_process()
        logger = JsonlLogger(Path(run_dir) / "metrics.jsonl") if main else _NoLogger()
        res = train(mcfg, cfg, (tokens, lengths), (tokens[:16], lengths[:16]), run_dir, logger)
        rec = res.history[-1]
        if main:
            np.savez(
                out,
                devices=jax.device_count(),
                processes=jax.process_count(),
                multi=multi,
                loss=rec["loss"],
                grad_norm=rec["grad_norm"],
                val_elbo=rec["val_elbo"],
                **_flat_params(res.model),
            )
    elif mode == "fsdp":
        _fsdp(mcfg, cfg, tokens, lengths, out)
    elif mode == "indivisible":
        try:
            bad = TrainConfig(**{**TRAIN, "batch_size": 15})
            train(mcfg, bad, (tokens, lengths), (tokens, lengths), run_dir, _NoLogger())
        except ValueError as e:
            Path(out).write_text(str(e))
    else:
        raise SystemExit(f"unknown mode {mode}")


def _fsdp(mcfg, cfg, tokens, lengths, out: str) -> None:
    """The same step with state replicated and with state split over devices (fsdp)."""
    import jax
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from molvae.distributed import state_sharding
    from molvae.models.vae import VAE
    from molvae.training import make_train_step, make_tx

    mesh = Mesh(np.array(jax.devices()), ("data",))
    data = NamedSharding(mesh, P("data"))
    t, l_ = tokens[:16, :24], lengths[:16]
    results = {}
    for layout in ("replicated", "fsdp"):
        model = VAE(mcfg, rngs=nnx.Rngs(0))
        opt = nnx.Optimizer(model, make_tx(cfg), wrt=nnx.Param)
        graphdef, state = nnx.split((model, opt))
        shardings = state_sharding(state, mesh, layout, min_size=64)
        state = jax.device_put(state, shardings)
        step = make_train_step(graphdef, cfg)
        with jax.set_mesh(mesh):
            put = lambda x: jax.device_put(x, data)  # noqa: E731
            w = np.ones(len(t), np.float32)
            state, aux = step(state, put(t), put(l_), put(w), jax.random.key(1))
        n_split = sum(any(a is not None for a in x.sharding.spec) for x in jax.tree.leaves(state))
        model, _ = nnx.merge(graphdef, jax.device_get(state))
        results.update({f"{layout}/loss": float(aux["loss"]), f"{layout}/n_split": n_split})
        results.update({f"{layout}/{k}": v for k, v in _flat_params(model).items()})
    np.savez(out, **results)


# ----------------------------------------------------------------------------- tests


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=env.get(
            "JAX_COMPILATION_CACHE_DIR", str(ROOT / ".cache" / "jax")
        ),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
        MOLVAE_DISTRIBUTED=extra.pop("MOLVAE_DISTRIBUTED", "0"),
        **extra,
    )
    return env


def _run(mode: str, out: Path, run_dir: Path, devices: int, **extra: str):
    return subprocess.Popen(
        [sys.executable, __file__, mode, str(out), str(run_dir)],
        env=_env(devices, **extra),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(proc, timeout: float = 240) -> None:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # timed out (e.g. a peer process died): do not leave it behind
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-3000:]


def _assert_same(a: dict, b: dict, prefix_a: str = "", prefix_b: str = "") -> int:
    names = [k[len(prefix_a) :] for k in a if k.startswith(prefix_a + "[")]
    assert names, "no parameters saved"
    for k in names:
        np.testing.assert_allclose(
            a[prefix_a + k], b[prefix_b + k], rtol=RTOL, atol=ATOL, err_msg=k
        )
    return len(names)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one_device")
    _wait(_run("train", tmp / "out.npz", tmp / "run", devices=1))
    return dict(np.load(tmp / "out.npz"))


def test_one_step_on_two_devices_equals_one_device(one_device, tmp_path):
    _wait(_run("train", tmp_path / "out.npz", tmp_path / "run", devices=2))
    two = dict(np.load(tmp_path / "out.npz"))
    assert int(one_device["devices"]) == 1 and int(two["devices"]) == 2
    np.testing.assert_allclose(two["loss"], one_device["loss"], rtol=RTOL)
    np.testing.assert_allclose(two["grad_norm"], one_device["grad_norm"], rtol=RTOL)
    np.testing.assert_allclose(two["val_elbo"], one_device["val_elbo"], rtol=RTOL)
    assert _assert_same(one_device, two) >= 8
    # The step moved the parameters: the comparison is not between two initialisations.
    fresh = _fresh_params()
    assert any(not np.allclose(fresh[k], two[k]) for k in fresh)


def _fresh_params() -> dict[str, np.ndarray]:
    """The parameters train() starts from (VAE seeded with train.seed)."""
    from flax import nnx

    from molvae.models.vae import VAE, ModelConfig
    from molvae.training import TrainConfig

    vocab, _ = _arrays()
    seed = TrainConfig(**TRAIN).seed
    return _flat_params(VAE(ModelConfig(vocab_size=len(vocab), **MODEL), rngs=nnx.Rngs(seed)))


def test_sharded_state_step_equals_replicated(tmp_path):
    _wait(_run("fsdp", tmp_path / "out.npz", tmp_path / "run", devices=2))
    got = dict(np.load(tmp_path / "out.npz"))
    assert int(got["replicated/n_split"]) == 0 and int(got["fsdp/n_split"]) > 0
    np.testing.assert_allclose(got["fsdp/loss"], got["replicated/loss"], rtol=RTOL)
    _assert_same(got, got, "replicated/", "fsdp/")


def test_batch_that_does_not_divide_over_devices_is_refused(tmp_path):
    _wait(_run("indivisible", tmp_path / "msg.txt", tmp_path / "run", devices=2))
    assert "must divide over 2 devices" in (tmp_path / "msg.txt").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_joined_by_distributed_initialize_equal_one_device(one_device, tmp_path):
    """Multi-host on one machine: 2 processes x 1 CPU device, started from JAX_* variables."""
    addr = f"127.0.0.1:{_free_port()}"
    procs = [
        _run(
            "train",
            tmp_path / "out.npz",
            tmp_path / "run",
            devices=1,
            MOLVAE_DISTRIBUTED="",
            JAX_COORDINATOR_ADDRESS=addr,
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(i),
        )
        for i in range(2)
    ]
    try:
        for p in procs:
            _wait(p)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    got = dict(np.load(tmp_path / "out.npz"))
    assert bool(got["multi"]) and int(got["processes"]) == 2 and int(got["devices"]) == 2
    np.testing.assert_allclose(got["loss"], one_device["loss"], rtol=RTOL)
    np.testing.assert_allclose(got["grad_norm"], one_device["grad_norm"], rtol=RTOL)
    _assert_same(one_device, got)


# ----------------------------------------------------------------------------- multi-host plan

SLURM = {
    "SLURM_JOB_ID": "77",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "1",
    "SLURM_STEP_NODELIST": "n[1-2]",
}


@pytest.mark.parametrize(
    ("env", "args", "expected"),
    [
        ({}, {}, None),  # a laptop
        ({**SLURM, "SLURM_NTASKS": "1"}, {}, None),  # one task per array job: a sweep on SLURM
        ({**SLURM, "SLURM_NTASKS": "8"}, {}, {}),  # srun with 8 tasks: JAX reads SLURM_*
        ({**SLURM, "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "1"}, {}, None),  # batch step
        ({**SLURM, "SLURM_NTASKS": "8", "MOLVAE_DISTRIBUTED": "0"}, {}, None),  # switched off
        ({"OMPI_COMM_WORLD_SIZE": "4"}, {}, {}),  # mpirun -n 4
        (
            {"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
            {},
            {"coordinator_address": "h:1234", "num_processes": 2, "process_id": 1},
        ),
        (  # config beats environment
            {"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
            {"coordinator_address": "c:9", "process_id": 0},
            {"coordinator_address": "c:9", "num_processes": 2, "process_id": 0},
        ),
        ({"JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}, {}, None),  # explicitly alone
        (
            {**SLURM, "SLURM_NTASKS": "8"},
            {"coordinator_address": "c:9"},
            {"coordinator_address": "c:9"},
        ),
    ],
)
def test_distributed_plan_follows_the_environment(env, args, expected):
    from molvae.distributed import plan

    assert plan(**args, env=env) == expected


def test_distributed_plan_names_what_is_missing():
    from molvae.distributed import plan

    with pytest.raises(ValueError, match=r"missing \['process_id'\]"):
        plan(coordinator_address="h:1", num_processes=2, env={})
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES must be an integer"):
        plan(env={"JAX_NUM_PROCESSES": "two"})


def test_initialize_is_a_no_op_for_one_process(monkeypatch):
    import jax

    from molvae import distributed

    for var in (
        "SLURM_JOB_ID",
        "OMPI_COMM_WORLD_SIZE",
        "JAX_COORDINATOR_ADDRESS",
        "JAX_NUM_PROCESSES",
    ):
        monkeypatch.delenv(var, raising=False)
    assert distributed.initialize() is False
    assert jax.process_count() == 1 and distributed.is_main_process()


def test_state_sharding_layouts():
    import jax
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    from molvae.distributed import state_sharding

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    state = {"w": np.zeros((64, 32)), "b": np.zeros(3)}
    for mode in ("replicated", "fsdp"):  # on one device every layout is replication
        assert all(s.spec == P() for s in jax.tree.leaves(state_sharding(state, mesh, mode)))
    with pytest.raises(ValueError, match="replicated or fsdp"):
        state_sharding(state, mesh, "zero3")


if __name__ == "__main__":
    worker(*sys.argv[1:4])
