"""One benchmark stage per process (clean peak memory, cold caches): `python bench_stages.py STAGE
'{json args}'` prints one JSON line. experiments/benchmark.py runs every stage and the table."""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np

from molvae import runtime
from molvae.runtime import tune_allocator

TUNED_ALLOCATOR = tune_allocator()  # as the experiment scripts do, before JAX starts


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- machine peak


def matmul(n: int = 2048, reps: int = 20) -> dict:
    """Matmul GFLOP/s of this machine, the ceiling for model FLOPs utilization: float32, and
    bfloat16 operands with float32 sums (what model.dtype=bfloat16 runs)."""
    import jax
    import jax.numpy as jnp

    def peak(dtype) -> float:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
        f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
        f(a).block_until_ready()
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(reps):
                out = f(a)
            out.block_until_ready()
            best = min(best, (time.perf_counter() - t0) / reps)
        return 2 * n**3 / best / 1e9

    return {"matmul_gflops": peak(jnp.float32), "matmul_gflops_bf16": peak(jnp.bfloat16)}


# ----------------------------------------------------------------------------- training


def train_flops_per_token(cfg) -> float:
    """Matmul FLOPs of one training token (forward + backward = 3x forward)."""
    dirs = 2 if cfg.bidirectional else 1
    enc_in = [cfg.embed_dim] + [cfg.enc_hidden * dirs] * (cfg.enc_layers - 1)
    enc = sum(dirs * 2 * 3 * cfg.enc_hidden * (d + cfg.enc_hidden) for d in enc_in)
    dec_in = [cfg.embed_dim] + [cfg.dec_hidden] * (cfg.dec_layers - 1)
    gates = 4 if cfg.decoder == "lstm" else 3
    dec = sum(2 * gates * cfg.dec_hidden * (d + cfg.dec_hidden) for d in dec_in)
    out = 2 * cfg.dec_hidden * cfg.vocab_size
    return 3.0 * (enc + dec + out)


def train(
    preset: str,
    batch_size: int,
    warmup: int = 12,
    steps: int = 24,
    windows: int = 3,
    n_molecules: int = 20000,
    dtype: str | None = None,
) -> dict:
    """Steady-state training molecules/s on bundled MOSES molecules, after compiling every
    bucket width once: the median of `windows` timed windows of `steps` steps each. Counts
    compilations during the measured steps (should be 0)."""
    import dataclasses

    import jax
    from flax import nnx
    from omegaconf import OmegaConf

    from molvae.data import DataConfig, load_dataset
    from molvae.models.vae import VAE, ModelConfig
    from molvae.training import Batches, TrainConfig, make_train_step, make_tx
    from molvae.vocab import Vocab

    ds = load_dataset(DataConfig())
    vocab = Vocab.fit(ds.train.selfies)
    tokens, lengths = vocab.encode_batch(ds.train.selfies[:n_molecules], 72)
    conf = OmegaConf.load(f"conf/model/{preset}.yaml")
    cfg = dataclasses.replace(ModelConfig(**conf), vocab_size=len(vocab))
    if dtype is not None:  # the preset with another matmul operand type (model.dtype=...)
        cfg = dataclasses.replace(cfg, dtype=dtype)
    tcfg = TrainConfig(batch_size=batch_size, steps=10**6)
    model = VAE(cfg, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, make_tx(tcfg), wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))
    step_fn = make_train_step(graphdef, tcfg)
    batches, key = Batches(tokens, lengths, batch_size, seed=0), jax.random.key(0)
    w = np.ones(batch_size, np.float32)
    widths = sorted({batches(i)[0].shape[1] for i in range(batches.per_epoch)})
    seen: set[int] = set()
    i = 0
    while len(seen) < len(widths) or i < warmup:  # compile every width before timing
        t, l_ = batches(i)
        state, aux = step_fn(state, t, l_, w, key)
        seen.add(t.shape[1])
        i += 1
    jax.block_until_ready(aux)
    # The host's speed drifts (shared cores): measure the peak again next to the timed windows.
    peak = matmul(reps=10)
    traced = runtime.traces()  # only the train step runs from here on
    rates, tok_rates = [], []
    for _ in range(windows):  # the median window: one window's figure moves by ~20% on 2 cores
        n_tok = n_mol = 0
        t0 = time.perf_counter()
        for j in range(i, i + steps):
            t, l_ = batches(j)
            state, aux = step_fn(state, t, l_, w, key)
            n_mol += len(t)
            n_tok += int(t.shape[0] * (t.shape[1] - 1))  # padded tokens are computed too
        jax.block_until_ready(aux)
        dt = time.perf_counter() - t0
        i += steps
        rates.append(n_mol / dt)
        tok_rates.append(n_tok / dt)
    order = np.argsort(rates)
    mid = int(order[len(rates) // 2])
    flops = train_flops_per_token(cfg) * tok_rates[mid]
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return {
        "train_mol_per_s": rates[mid],
        "train_mol_per_s_windows": [round(r, 1) for r in rates],
        "train_gflops": flops / 1e9,
        "params": n_params,
        "batch": batch_size,
        "dtype": cfg.dtype,
        "compiled_shapes": len(widths),
        "recompiles_after_warmup": runtime.traces() - traced,
        "padding_fraction": 1 - float(np.mean(lengths)) / (tok_rates[mid] / rates[mid]),
        **{f"{k}_here": v for k, v in peak.items()},
    }


# ----------------------------------------------------------------------------- sampling


def decode_flops_per_molecule(cfg, mean_tokens: float) -> float:
    """Matmul FLOPs the decoder cannot avoid for one molecule of mean_tokens tokens (eos
    included): the latent's projections once, then per token every layer's recurrent matmul,
    the input matmuls of layers above the first (the first layer's is a table lookup) and the
    output layer."""
    H, L = cfg.dec_hidden, cfg.dec_layers
    G = 4 if cfg.decoder == "lstm" else 3  # gates
    once = 2 * cfg.latent_dim * (H * L + G * H)
    per_token = 2 * G * H * H * L + 2 * G * H * H * (L - 1) + 2 * H * cfg.vocab_size
    return once + per_token * mean_tokens


def sample(run_dir: str, n: int = 4096, reps: int = 3) -> dict:
    """Decoder-only molecules/s, end-to-end valid SMILES/s, and the RDKit+SELFIES floor alone
    (on all cores, through the same shared process pool). Steady state: each figure is the
    median of `reps` timed runs after one untimed run (compilation, worker start-up)."""
    import molvae
    from molvae import chem

    model = molvae.load(run_dir)
    dec = model.engine
    z = np.random.default_rng(0).normal(size=(n, model.latent_dim)).astype(np.float32)
    dec.warm_up(greedy=False)  # compile every packed batch size

    def timed(fn):
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return out, float(np.median(times))

    ids, t_decode = timed(lambda: dec.decode_ids(z, seed=1, greedy=False, grammar=False))
    flops = decode_flops_per_molecule(model.model.cfg, float((ids > 0).sum(1).mean()))
    selfies = dec.vocab.decode_selfies_batch(ids)
    smiles, t_floor = timed(lambda: chem.parallel_map(chem.selfies_to_smiles, selfies))
    out, t_e2e = timed(lambda: model.sample(n, seed=2, grammar=False))
    valid = sum(bool(s) for s in out)
    res = {
        "sample_decode_mol_per_s": n / t_decode,
        "sample_end_to_end_mol_per_s": valid / t_e2e,
        "rdkit_selfies_floor_mol_per_s": sum(bool(s) for s in smiles) / t_floor,
        "sample_valid_fraction": valid / n,
        "sample_decode_mflop_per_mol": flops / 1e6,
    }
    # The same with bfloat16 matmul operands in the decoder (molvae.load(..., decode_dtype)).
    bf16 = molvae.load(run_dir, decode_dtype="bfloat16")
    bf16.engine.warm_up(greedy=False)
    _, t_decode = timed(lambda: bf16.engine.decode_ids(z, seed=1, greedy=False))
    out, t_e2e = timed(lambda: bf16.sample(n, seed=2))
    res["sample_decode_mol_per_s_bf16"] = n / t_decode
    res["sample_end_to_end_mol_per_s_bf16"] = sum(bool(s) for s in out) / t_e2e
    # Grammar-constrained decoding (molvae.models.grammar): what the mask costs the decoder.
    try:
        dec.grammar_tables()
    except ValueError:  # a BPE vocabulary: no mask
        pass
    else:
        dec.warm_up(greedy=False, grammar=True)
        _, t_decode = timed(lambda: dec.decode_ids(z, seed=1, greedy=False, grammar=True))
        out, t_e2e = timed(lambda: model.sample(n, seed=2, grammar=True))
        res["sample_decode_mol_per_s_grammar"] = n / t_decode
        res["sample_end_to_end_mol_per_s_grammar"] = sum(bool(s) for s in out) / t_e2e
    # The host's speed drifts (shared cores): the matmul peak beside the timed runs.
    return res | {f"{k}_here": v for k, v in matmul(reps=10).items()}


# ----------------------------------------------------------------------------- data, metrics


def preprocess(n: int = 100_000) -> dict:
    """Canonicalize + SELFIES-encode + filter rate on the first n MOSES training molecules."""
    import pandas as pd

    from molvae import data

    path = data.moses_files()["train"]
    smiles = pd.read_csv(path, nrows=n)["SMILES"].tolist()

    t0 = time.perf_counter()
    data.preprocess(smiles, 72, "largest")  # what load_dataset runs
    dt = time.perf_counter() - t0
    return {"preprocess_mol_per_s": n / dt, "preprocess_n": n}


def evaluate(run_dir: str, n: int = 30_000, reference: str = "moses") -> dict:
    """Wall time of the full MOSES metric suite on n samples (reference statistics cached)."""
    import molvae
    from molvae.evaluation import metrics

    smiles = molvae.load(run_dir).sample(n, seed=0)
    metrics.reference_stats(reference)  # build or load the cache outside the timing
    t0 = time.perf_counter()
    scores = metrics.evaluate(smiles, reference=reference)
    return {
        "evaluate_30k_seconds": time.perf_counter() - t0,
        "evaluate_n": n,
        "evaluate_reference": reference,
        "evaluate_valid": scores["valid"],
    }


def optimize(run_dir: str, budget: int = 1000) -> dict:
    """Oracle calls/s (distinct molecules scored per second, wall time) for gradient and BO."""
    import molvae

    model = molvae.load(run_dir)
    out = {"optimize_budget": budget}
    for method in ("gradient", "bo"):
        t0 = time.perf_counter()
        res = molvae.optimize(model, "qed", method=method, budget=budget, seed=0, progress=False)
        dt = time.perf_counter() - t0
        out[f"optimize_{method}_calls_per_s"] = len(res.history) / dt
        out[f"optimize_{method}_seconds"] = dt
        out[f"optimize_{method}_qed_top1"] = float(res.top(1)["score"].iloc[0])
    return out


STAGES = {
    "matmul": matmul,
    "train": train,
    "sample": sample,
    "preprocess": preprocess,
    "evaluate": evaluate,
    "optimize": optimize,
}

if __name__ == "__main__":
    stage, args = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    result = STAGES[stage](**args)
    result["peak_rss_mb"] = peak_rss_mb()
    result["tuned_allocator"] = TUNED_ALLOCATOR
    print(json.dumps(result))
