"""Training: the ELBO, jitted train/eval steps, the loop, orbax checkpoints and resume."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from molvae import runs
from molvae.distributed import state_sharding
from molvae.loggers import Logger, truncate_jsonl
from molvae.models.vae import VAE, ModelConfig

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became nan/inf; the run stops and its last good checkpoint is kept."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not match the run (names the folder)."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # constant | cosine (to lr_end_factor * lr)
    lr_end_factor: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.0  # > 0 switches Adam to AdamW
    clip_norm: float = 1.0
    kl_schedule: str = "linear"  # constant | linear | cyclical
    kl_max: float = 1.0  # the KL weight beta reached by the schedule
    kl_start: float = 0.0
    kl_warmup_steps: int = 1000  # linear: steps from kl_start to kl_max
    kl_cycles: int = 4  # cyclical (Fu et al. 2019): number of cycles over `steps`
    kl_ratio: float = 0.5  # cyclical: fraction of each cycle spent increasing beta
    free_bits: float = 0.0  # nats per latent dimension below which KL is not penalised
    # Stop (with a checkpoint) once the run has used this much process CPU time, summed over
    # resumes; 0 = no limit. Quality studies compare arms at equal CPU time with it.
    cpu_budget_s: float = 0.0
    eval_every: int = 500
    eval_size: int = 1000
    log_every: int = 50
    ckpt_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    progress: bool = True
    param_sharding: str = "replicated"  # replicated | fsdp (large arrays split over devices)
    # Joint training (Gomez-Bombarelli et al. 2018): an MLP on the latent means predicts these
    # properties and its loss, times property_weight, is added to the ELBO. 0 switches it off.
    property_weight: float = 0.0
    property_targets: tuple[str, ...] = ("qed", "logp", "sa")
    property_hidden: tuple[int, ...] = (128, 128)
    property_models: int = 1  # ensemble members of the jointly trained predictor

    def __post_init__(self) -> None:
        # Hydra hands lists; keep the config hashable and comparable.
        object.__setattr__(self, "property_targets", tuple(self.property_targets))
        object.__setattr__(self, "property_hidden", tuple(int(h) for h in self.property_hidden))
        if self.property_weight < 0:
            raise ValueError(f"train.property_weight must be >= 0, got {self.property_weight}")
        if self.property_weight > 0 and not self.property_targets:
            raise ValueError("train.property_targets is empty but train.property_weight > 0")
        if self.property_models < 1 or any(h < 1 for h in self.property_hidden):
            raise ValueError("train.property_models and train.property_hidden must be positive")
        for name in (
            "steps",
            "batch_size",
            "log_every",
            "eval_every",
            "ckpt_every",
            "keep_checkpoints",
            "eval_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be positive, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be positive, got {self.lr}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"train.lr_schedule must be constant or cosine: {self.lr_schedule!r}")
        if self.kl_schedule not in ("constant", "linear", "cyclical"):
            raise ValueError(
                f"train.kl_schedule must be constant, linear or cyclical: {self.kl_schedule!r}"
            )
        if self.kl_max < 0 or self.free_bits < 0:
            raise ValueError("train.kl_max and train.free_bits must be >= 0")
        if self.cpu_budget_s < 0:
            raise ValueError(f"train.cpu_budget_s must be >= 0, got {self.cpu_budget_s}")
        if self.param_sharding not in ("replicated", "fsdp"):
            raise ValueError(
                f"train.param_sharding must be replicated or fsdp: {self.param_sharding!r}"
            )
        if not 0 < self.kl_ratio <= 1:
            raise ValueError(f"train.kl_ratio must be in (0, 1], got {self.kl_ratio}")


# ----------------------------------------------------------------------------- schedules


def kl_weight(step: jax.Array | int, cfg: TrainConfig) -> jax.Array:
    """KL weight beta at `step` (pure; works on traced steps)."""
    step = jnp.asarray(step, jnp.float32)
    if cfg.kl_schedule == "constant":
        return jnp.asarray(cfg.kl_max, jnp.float32)
    if cfg.kl_schedule == "linear":
        frac = jnp.clip(step / max(cfg.kl_warmup_steps, 1), 0.0, 1.0)
    else:  # cyclical: ramp for kl_ratio of each cycle, then hold at kl_max
        period = max(cfg.steps / cfg.kl_cycles, 1.0)
        frac = jnp.clip(jnp.mod(step, period) / (period * cfg.kl_ratio), 0.0, 1.0)
    return cfg.kl_start + (cfg.kl_max - cfg.kl_start) * frac


def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
    if cfg.lr_schedule == "constant":
        return (
            optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1))
            if cfg.warmup_steps
            else optax.constant_schedule(cfg.lr)
        )
    return optax.warmup_cosine_decay_schedule(
        0.0,
        cfg.lr,
        max(cfg.warmup_steps, 1),
        max(cfg.steps, cfg.warmup_steps + 1),
        end_value=cfg.lr * cfg.lr_end_factor,
    )


def make_tx(cfg: TrainConfig) -> optax.GradientTransformation:
    sched = lr_schedule(cfg)
    opt = (
        optax.adamw(sched, weight_decay=cfg.weight_decay) if cfg.weight_decay else optax.adam(sched)
    )
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt) if cfg.clip_norm else opt


# ----------------------------------------------------------------------------- loss


def gaussian_kl(mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mu, exp(logvar)) || N(0, I)) per dimension, (B, Z)."""
    return 0.5 * (jnp.square(mu) + jnp.exp(logvar) - 1.0 - logvar)


def sequence_nll(
    logits: jax.Array, targets: jax.Array, lengths: jax.Array
) -> tuple[jax.Array, ...]:
    """Masked token cross-entropy summed per molecule (B,), and token hits/counts."""
    mask = jnp.arange(targets.shape[1])[None, :] < lengths[:, None]  # (B, L)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    hits = (jnp.argmax(logits, -1) == targets) & mask
    return jnp.sum(ce * mask, axis=1), jnp.sum(hits, axis=1), jnp.sum(mask, axis=1)


def elbo_terms(
    model: VAE,
    tokens: jax.Array,
    lengths: jax.Array,
    weights: jax.Array,
    key: jax.Array,
    beta: jax.Array,
    free_bits: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Loss = E[recon] + beta * KL (with optional free bits); weights (B,) mask padding rows."""
    loss, aux, _ = _elbo(model, tokens, lengths, weights, key, beta, free_bits)
    return loss, aux


def _elbo(model, tokens, lengths, weights, key, beta, free_bits):
    """elbo_terms plus the posterior means (for the joint property loss)."""
    logits, mu, logvar = model(tokens, lengths, key)
    recon, hits, count = sequence_nll(logits, tokens[:, 1:], lengths)
    kl_dim = gaussian_kl(mu, logvar)  # (B, Z)
    n = jnp.maximum(weights.sum(), 1.0)
    mean = lambda x: jnp.sum(x * weights) / n  # noqa: E731 - weighted batch mean
    kl_per_dim = jnp.sum(kl_dim * weights[:, None], 0) / n  # (Z,)
    kl_term = jnp.sum(jnp.maximum(kl_per_dim, free_bits)) if free_bits > 0 else kl_per_dim.sum()
    loss = mean(recon) + beta * kl_term
    aux = {
        "loss": loss,
        "recon": mean(recon),
        "kl": kl_per_dim.sum(),
        "beta": beta,
        "token_acc": jnp.sum(hits * weights) / jnp.maximum(jnp.sum(count * weights), 1),
    }
    return loss, aux, mu


# ----------------------------------------------------------------------------- steps


def make_train_step(graphdef: nnx.GraphDef, cfg: TrainConfig):
    """jit over split NNX state (not nnx.jit: its per-call graph walk costs on small models)."""

    @jax.jit
    def train_step(state, tokens, lengths, weights, key):
        model, opt = nnx.merge(graphdef, state)
        step = opt.step[...]
        beta = kl_weight(step, cfg)
        k = jax.random.fold_in(key, step)  # noise depends on the step only: resume is exact

        def loss_fn(m):
            return elbo_terms(m, tokens, lengths, weights, k, beta, cfg.free_bits)

        (_, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        aux["grad_norm"] = optax.tree.norm(grads)
        opt.update(model, grads)
        return nnx.state((model, opt)), aux

    return train_step


def make_joint_train_step(graphdef: nnx.GraphDef, cfg: TrainConfig):
    """Train step for state (model, opt, predictor, predictor_opt): ELBO + weighted property
    loss of the predictor on the posterior means; gradients reach the encoder through mu."""
    from molvae.models.predictor import property_loss

    @jax.jit
    def train_step(state, tokens, lengths, weights, y, key):
        model, opt, pred, popt = nnx.merge(graphdef, state)
        step = opt.step[...]
        beta = kl_weight(step, cfg)
        k = jax.random.fold_in(key, step)
        mask = jnp.isfinite(y) * weights[:, None]  # missing properties and padding rows: 0

        def loss_fn(m, p):
            loss, aux, mu = _elbo(m, tokens, lengths, weights, k, beta, cfg.free_bits)
            prop = property_loss(p, mu, y, mask)
            aux["prop_loss"] = prop
            aux["loss"] = loss + cfg.property_weight * prop
            return aux["loss"], aux

        (_, aux), (g_model, g_pred) = nnx.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            model, pred
        )
        aux["grad_norm"] = optax.tree.norm((g_model, g_pred))
        opt.update(model, g_model)
        popt.update(pred, g_pred)
        return nnx.state((model, opt, pred, popt)), aux

    return train_step


def make_eval_step(graphdef_model: nnx.GraphDef, max_len: int):
    """Loss terms at z = mu, teacher-forced token accuracy, greedy whole-molecule reconstruction."""

    @jax.jit
    def eval_step(params, tokens, lengths, weights):
        model = nnx.merge(graphdef_model, params)
        mu, logvar = model.encode(tokens, lengths)
        logits = model.decoder(mu, tokens[:, :-1])
        recon, hits, count = sequence_nll(logits, tokens[:, 1:], lengths)
        kl = gaussian_kl(mu, logvar).sum(-1)
        out = model.generate(mu, jax.random.key(0), max_len, greedy=True)  # (B, max_len + 1)
        target = tokens[:, 1:]
        same = jnp.all((out == target) | (jnp.arange(target.shape[1]) >= lengths[:, None]), axis=1)
        return {
            "recon_sum": jnp.sum(recon * weights),
            "kl_sum": jnp.sum(kl * weights),
            "hits": jnp.sum(hits * weights),
            "count": jnp.sum(count * weights),
            "exact": jnp.sum(same * weights),
            "n": jnp.sum(weights),
        }

    return eval_step


# ----------------------------------------------------------------------------- data order


def bucket_width(max_len_in_batch: int, full: int, quantum: int = 8) -> int:
    """Sequence width for a batch: a multiple of `quantum`, so few shapes are ever compiled."""
    return min(full, int(math.ceil(max_len_in_batch / quantum) * quantum))


class Batches:
    """Deterministic, length-grouped batches: batch `step` depends only on (seed, step).

    Each epoch is a seeded permutation cut into pools of `pool` batches; a pool is sorted by
    length and cut into batches, and the epoch's batches are shuffled. Molecules of similar
    length share a batch, so little compute is spent on padding (widths are bucketed to
    multiples of 8, so only a handful of shapes is ever compiled).
    """

    def __init__(
        self, tokens: np.ndarray, lengths: np.ndarray, batch_size: int, seed: int, pool: int = 32
    ):
        if len(tokens) < batch_size:
            raise ValueError(f"{len(tokens)} training molecules < batch size {batch_size}")
        self.tokens, self.lengths, self.bs, self.seed, self.pool = (
            tokens,
            lengths,
            batch_size,
            seed,
            pool,
        )
        self.per_epoch = len(tokens) // batch_size
        self._epoch: tuple[int, np.ndarray] | None = None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """(per_epoch, batch_size) molecule indices for one epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.tokens))[: self.per_epoch * self.bs]
        size = self.pool * self.bs
        chunks = [perm[i : i + size] for i in range(0, len(perm), size)]
        chunks = [c[np.argsort(self.lengths[c], kind="stable")] for c in chunks]
        batches = np.concatenate(chunks).reshape(self.per_epoch, self.bs)
        return batches[rng.permutation(self.per_epoch)]

    def indices(self, step: int) -> np.ndarray:
        """Row indices of batch `step` into the training arrays."""
        epoch, i = divmod(step, self.per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self.epoch_order(epoch))
        return self._epoch[1][i]

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.indices(step)
        lengths = self.lengths[idx]
        width = bucket_width(int(lengths.max()) + 1, self.tokens.shape[1])  # + bos
        return self.tokens[idx, :width], lengths


# ----------------------------------------------------------------------------- checkpoints


def warn_partial_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Orbax commits a checkpoint by renaming its temporary folder; leftovers of a killed save
    are never read. Say so, so a user knows why an older step is used."""
    partial = sorted(p for p in ckpt_dir.glob("*") if p.is_dir() and "tmp" in p.name)
    for p in partial:
        log.warning(
            "ignoring half-written checkpoint %s (interrupted save); using the latest complete one",
            p,
        )
    return partial


def checkpoint_manager(run_dir: Path, cfg: TrainConfig) -> ocp.CheckpointManager:
    warn_partial_checkpoints(run_dir / "checkpoints")
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.keep_checkpoints, create=True, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager((run_dir / "checkpoints").absolute(), options=opts)


# Checkpoint items, in the order of the training state tuple (a joint run has all four).
STATE_ITEMS = ("params", "opt", "predictor", "predictor_opt")


def save_checkpoint(mngr: ocp.CheckpointManager, step: int, state: nnx.State, meta: dict) -> None:
    items = {
        name: ocp.args.StandardSave(nnx.to_pure_dict(state[i]))
        for i, name in enumerate(STATE_ITEMS[: len(state)])
    }
    mngr.save(step, args=ocp.args.Composite(**items, meta=ocp.args.JsonSave(meta)), force=True)
    mngr.wait_until_finished()


def restore_into(mngr: ocp.CheckpointManager, step: int, state: nnx.State, with_opt: bool = True):
    """Restore checkpoint `step` into the structure of `state`: the training state tuple
    ((params, opt) or, for joint training, (params, opt, predictor, predictor_opt)), or, with
    with_opt=False, the model's state alone."""
    target = state if with_opt else (state,)
    abstract = lambda s: jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(s))  # noqa: E731
    items = {
        name: ocp.args.StandardRestore(abstract(target[i]))
        for i, name in enumerate(STATE_ITEMS[: len(target)])
    }
    items["meta"] = ocp.args.JsonRestore()
    try:
        got = mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 - orbax raises many types; name the folder instead
        raise CheckpointError(
            f"cannot restore checkpoint {mngr.directory}/{step}: {type(e).__name__}: {e}"
        ) from e
    for i, name in enumerate(STATE_ITEMS[: len(target)]):
        nnx.replace_by_pure_dict(target[i], got[name])
    return got["meta"]


# ----------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    model: VAE
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    final_eval: dict[str, float] = field(default_factory=dict)
    predictor: Any = None  # the jointly trained Predictor (train.property_weight > 0)


def pad_rows(x: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([x, np.zeros((n - len(x),) + x.shape[1:], x.dtype)]) if n > len(x) else x


def evaluate_split(eval_step, params, tokens, lengths, batch_size: int) -> dict[str, float]:
    """Eval metrics over a whole split in fixed-shape batches (padding rows have weight 0)."""
    tot: dict[str, float] = {}
    for i in range(0, len(tokens), batch_size):
        t, l_ = tokens[i : i + batch_size], lengths[i : i + batch_size]
        w = pad_rows(np.ones(len(t), np.float32), batch_size)
        out = eval_step(params, pad_rows(t, batch_size), pad_rows(np.maximum(l_, 1), batch_size), w)
        for k, v in jax.device_get(out).items():
            tot[k] = tot.get(k, 0.0) + float(v)
    n = max(tot["n"], 1.0)
    return {
        "val_recon": tot["recon_sum"] / n,
        "val_kl": tot["kl_sum"] / n,
        "val_elbo": (tot["recon_sum"] + tot["kl_sum"]) / n,
        "val_token_acc": tot["hits"] / max(tot["count"], 1.0),
        "val_recon_acc": tot["exact"] / n,
    }


def train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    train_data: tuple[np.ndarray, np.ndarray],
    val_data: tuple[np.ndarray, np.ndarray],
    run_dir: str | Path,
    logger: Logger,
    extra_meta: dict | None = None,
    properties: tuple[np.ndarray, np.ndarray] | None = None,
) -> TrainResult:
    """Train a VAE on token arrays, checkpointing into run_dir and resuming from it if present.

    Joint training (cfg.property_weight > 0) needs `properties`: float arrays (n_train, T) and
    (n_val, T) of cfg.property_targets, nan where unknown. The predictor is saved at the end as
    run_dir/predictor.{json,npz}, where molvae.load and the optimizers find it.
    """
    run_dir = Path(run_dir)
    tokens, lengths = train_data
    joint = cfg.property_weight > 0
    if joint:
        if properties is None:
            raise ValueError("train.property_weight > 0 needs property values for the molecules")
        y_train = np.asarray(properties[0], np.float32)
        if y_train.shape != (len(tokens), len(cfg.property_targets)):
            raise ValueError(
                f"properties {y_train.shape} do not match {len(tokens)} molecules x "
                f"{len(cfg.property_targets)} targets {cfg.property_targets}"
            )
    max_len = tokens.shape[1] - 2

    # -- mesh: data parallel over every device; a no-op on one device ---------------------------
    mesh = Mesh(np.array(jax.devices()), ("data",))
    if cfg.batch_size % mesh.size:
        raise ValueError(f"train.batch_size {cfg.batch_size} must divide over {mesh.size} devices")
    data_sh = NamedSharding(mesh, P("data"))

    # -- model and optimizer ---------------------------------------------------------------------
    model = VAE(model_cfg, rngs=nnx.Rngs(cfg.seed))
    opt = nnx.Optimizer(model, make_tx(cfg), wrt=nnx.Param)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    log.info("model: %s parameters, %s", f"{n_params:,}", model_cfg)
    if joint:
        pred = _joint_predictor(model_cfg, cfg, y_train)
        graphdef, state = nnx.split(
            (model, opt, pred, nnx.Optimizer(pred, make_tx(cfg), wrt=nnx.Param))
        )
    else:
        graphdef, state = nnx.split((model, opt))

    # -- resume ----------------------------------------------------------------------------------
    mngr = checkpoint_manager(run_dir, cfg)
    start, cpu_before = 0, 0.0  # cpu_before: CPU seconds spent by earlier runs of this folder
    if (latest := mngr.latest_step()) is not None:
        meta = restore_into(mngr, latest, state)
        start, cpu_before = int(meta["step"]), float(meta.get("cpu_s", 0.0))
        log.info("resumed from checkpoint at step %d", start)
    # A resumed run rewrites the metrics logged after its checkpoint; a fresh one starts empty.
    truncate_jsonl(run_dir / runs.METRICS_JSONL, start if latest is not None else -1)
    state = jax.device_put(state, state_sharding(state, mesh, cfg.param_sharding))

    train_step = (make_joint_train_step if joint else make_train_step)(graphdef, cfg)
    model_graphdef = nnx.split(model)[0]
    eval_step = make_eval_step(model_graphdef, max_len)
    batches = Batches(tokens, lengths, cfg.batch_size, cfg.seed)
    base_key = jax.random.key(cfg.seed + 1)
    eval_bs = min(cfg.batch_size, 512)
    val_t, val_l = val_data[0][: cfg.eval_size], val_data[1][: cfg.eval_size]
    meta_base = {"format": runs.RUN_FORMAT, **(extra_meta or {})}

    cpu0 = time.process_time()  # all threads of this process: the run's compute, not wall time

    def cpu_s() -> float:
        return cpu_before + time.process_time() - cpu0

    def checkpoint(step: int) -> None:
        meta = {"step": step, "cpu_s": cpu_s(), "mols_seen": step * cfg.batch_size}
        save_checkpoint(mngr, step, state, {**meta_base, **meta})

    # -- loop ------------------------------------------------------------------------------------
    history: list[dict[str, Any]] = []
    pending: list[dict[str, jax.Array]] = []
    t_last, n_last, t0 = time.perf_counter(), 0, time.perf_counter()
    bar = tqdm(
        total=cfg.steps,
        initial=start,
        desc="train",
        disable=not cfg.progress,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    step = start
    with jax.set_mesh(mesh):
        while step < cfg.steps:
            t, l_ = batches(step)
            w = np.ones(len(t), np.float32)
            args = [t, l_, w] + ([y_train[batches.indices(step)]] if joint else [])
            state, aux = train_step(state, *(jax.device_put(a, data_sh) for a in args), base_key)
            pending.append(aux)
            step += 1
            n_last += len(t)
            bar.update(1)
            out_of_cpu = bool(cfg.cpu_budget_s) and cpu_s() >= cfg.cpu_budget_s
            is_ckpt = step % cfg.ckpt_every == 0 or step == cfg.steps or out_of_cpu
            if step % cfg.log_every == 0 or is_ckpt or step % cfg.eval_every == 0:
                rec = _flush(pending, step, cfg)
                now = time.perf_counter()
                rec["mol_per_s"] = n_last / (now - t_last)
                rec["lr"] = float(lr_schedule(cfg)(step))
                rec["time"] = now - t0
                rec["cpu_s"] = cpu_s()
                rec["mols_seen"] = step * cfg.batch_size
                t_last, n_last = now, 0
                if step % cfg.eval_every == 0 or step == cfg.steps or out_of_cpu:
                    rec.update(evaluate_split(eval_step, state[0], val_t, val_l, eval_bs))
                logger.log(rec)
                history.append(rec)
                bar.set_postfix(
                    loss=f"{rec['loss']:.3f}",
                    kl=f"{rec['kl']:.2f}",
                    mol_s=f"{rec['mol_per_s']:.0f}",
                )
                if is_ckpt:
                    checkpoint(step)
            if out_of_cpu:
                log.info("train.cpu_budget_s %.0f reached at step %d", cfg.cpu_budget_s, step)
                break
    bar.close()
    model, _, *joint_parts = nnx.merge(graphdef, jax.device_get(state))
    final = {k: v for k, v in history[-1].items() if k.startswith("val_")} if history else {}
    pred = None
    if joint:
        pred = joint_parts[0]
        y_val = np.asarray(properties[1], np.float32)[: cfg.eval_size]
        scores = _save_joint_predictor(model, pred, (val_t, val_l), y_val, cfg, run_dir)
        final.update(scores)
        logger.log({"step": step, **scores})
    if start >= cfg.steps:  # a finished run started again: nothing was trained
        final = {**last_validation(run_dir / runs.METRICS_JSONL), **final}
        log.info(
            "run already complete at step %d (train.steps=%d); final validation: %s",
            step,
            cfg.steps,
            json.dumps({k: round(v, 4) for k, v in final.items()}),
        )
    else:
        log.info(
            "trained to step %d in %.1f s; %s",
            step,
            time.perf_counter() - t0,
            json.dumps({k: round(v, 4) for k, v in final.items()}),
        )
    return TrainResult(model=model, step=step, history=history, final_eval=final, predictor=pred)


def _joint_predictor(model_cfg: ModelConfig, cfg: TrainConfig, y: np.ndarray):
    """A fresh predictor whose output scaling is the training targets' mean and spread."""
    from molvae.models.predictor import Predictor, PredictorConfig

    pcfg = PredictorConfig(
        latent_dim=model_cfg.latent_dim,
        targets=cfg.property_targets,
        hidden=cfg.property_hidden,
        n_models=cfg.property_models,
    )
    pred = Predictor(pcfg, rngs=nnx.Rngs(cfg.seed + 2))
    ok = np.isfinite(y)
    if not ok.any(0).all():
        missing = [t for t, o in zip(cfg.property_targets, ok.any(0), strict=True) if not o]
        raise ValueError(f"no training molecule has a value for property {missing}")
    pred.y_mean[...] = jnp.asarray(np.nanmean(y, 0), jnp.float32)
    pred.y_std[...] = jnp.asarray(np.maximum(np.nanstd(y, 0), 1e-6), jnp.float32)
    return pred


def _save_joint_predictor(model, pred, val, y_val, cfg: TrainConfig, run_dir: Path) -> dict:
    """Held-out R^2 / MAE of the joint predictor on latent means; saves it into the run."""
    from molvae.optimize.predictor import regression_metrics, save_predictor

    encode = jax.jit(lambda t, l_: model.encode(t, l_)[0])
    mus = [np.asarray(encode(val[0][i : i + 512], val[1][i : i + 512]))
           for i in range(0, len(val[0]), 512)]  # fmt: skip
    mu = np.concatenate(mus) if mus else np.zeros((0, model.cfg.latent_dim), np.float32)
    pm, _ = pred.predict(jnp.asarray(mu))
    metrics = regression_metrics(y_val[: len(mu)], np.asarray(pm), cfg.property_targets)
    save_predictor(pred, run_dir, {"joint": True, "validation": metrics})
    log.info("joint predictor (held out): %s", json.dumps(metrics))
    return {
        f"val_{t}_{k}": v for t, m in metrics.items() for k, v in m.items() if k in ("r2", "mae")
    }


def _flush(pending: list[dict[str, jax.Array]], step: int, cfg: TrainConfig) -> dict[str, Any]:
    """Average the step metrics since the last log; stop on a non-finite loss."""
    got = jax.device_get(pending)
    pending.clear()
    losses = np.array([g["loss"] + 0.0 * g["grad_norm"] for g in got])  # nan grads count too
    if not np.all(np.isfinite(losses)):
        bad = step - len(losses) + int(np.argmin(np.isfinite(losses)))
        raise NonFiniteLossError(
            f"non-finite loss at step {bad + 1}; stopping. The last good checkpoint is kept "
            f"(lower train.lr or raise train.clip_norm)"
        )
    rec = {"step": step}
    for k in got[-1]:
        rec[k] = float(np.mean([g[k] for g in got]))
    rec["beta"] = float(got[-1]["beta"])
    return rec


def config_dict(*cfgs: Any) -> dict[str, Any]:
    return {type(c).__name__: dataclasses.asdict(c) for c in cfgs}


def last_validation(path: Path) -> dict[str, float]:
    """The val_* metrics of the last record of a metrics.jsonl that has them ({} if none)."""
    if not path.exists():
        return {}
    for line in reversed(path.read_text().splitlines()):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash mid-write
            continue
        if val := {k: v for k, v in rec.items() if k.startswith("val_")}:
            return val
    return {}


# ----------------------------------------------------------------------------- data -> run


def train_and_evaluate(
    data_cfg,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    run_dir: str | Path,
    logger: Logger,
    config: dict[str, Any] | None = None,
) -> TrainResult:
    """Load and preprocess data, fit (or reload) the vocabulary, write run.json, train."""
    from molvae import data as data_mod
    from molvae.chem import PROPERTIES
    from molvae.vocab import UnknownSymbolError, Vocab

    run_dir = Path(run_dir)
    if cfg.property_weight > 0:  # fail before the data work starts
        known = set(PROPERTIES) | set(data_cfg.property_columns)
        if unknown := [t for t in cfg.property_targets if t not in known]:
            raise ValueError(
                f"train.property_targets {unknown}: not a data property column "
                f"{list(data_cfg.property_columns)} nor a known property {sorted(PROPERTIES)}"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    ds = data_mod.load_dataset(data_cfg)
    data_mod.write_report(ds, run_dir)
    vocab_path = run_dir / runs.VOCAB_JSON
    resuming = vocab_path.exists() and (run_dir / runs.CHECKPOINTS).exists()
    vocab = (
        Vocab.load(vocab_path)
        if resuming
        else Vocab.fit(ds.train.selfies, bpe_merges=data_cfg.bpe_merges)
    )
    max_len = data_cfg.max_len
    train_arr = vocab.encode_batch(ds.train.selfies, max_len, ds.train.smiles)
    # Test molecules with a symbol never seen in training cannot be scored: listed in the report.
    keep, keep_rows, skipped = [], [], []
    for i, (s, m) in enumerate(zip(ds.test.selfies, ds.test.smiles, strict=True)):
        try:
            vocab.encode(s, m)
            keep.append(s)
            keep_rows.append(i)
        except UnknownSymbolError:
            skipped.append(i)
    if skipped:
        unknown = data_mod.report_rows(ds, "test", skipped, "unknown_symbol")
        data_mod.write_report(ds, run_dir, unknown)
        log.warning(
            "%d test molecules have symbols outside the training vocabulary; skipped in "
            "validation, listed in %s (reason unknown_symbol)",
            len(skipped),
            run_dir / "data_report.csv",
        )
    val_arr = vocab.encode_batch(keep, max_len)
    model_cfg = dataclasses.replace(model_cfg, vocab_size=len(vocab))
    if resuming:
        old_cfg, *_ = runs.read_run_info(run_dir)
        if old_cfg != model_cfg:
            raise CheckpointError(
                f"{run_dir} holds a run of another model ({old_cfg}); use a new run folder"
            )
    runs.write_run_info(run_dir, model_cfg, vocab, max_len, config or {})
    log.info(
        "data: %d train / %d validation molecules, vocabulary of %d symbols, max_len %d",
        len(train_arr[0]),
        len(val_arr[0]),
        len(vocab),
        max_len,
    )
    props = None
    if cfg.property_weight > 0:
        val_rows = keep_rows[: cfg.eval_size]
        props = (
            property_table(ds.train, cfg.property_targets),
            property_table(ds.test, cfg.property_targets)[val_rows],
        )
    return train(model_cfg, cfg, train_arr, val_arr, run_dir, logger, properties=props)


def property_table(split, targets: tuple[str, ...]) -> np.ndarray:
    """(n, T) float32 values of `targets` for a data split: the split's own property columns
    (a user's CSV) where they exist, else computed with RDKit; nan where unknown."""
    from molvae import chem

    have = split.properties if split.properties is not None else None
    from_file = [t for t in targets if have is not None and t in have.columns]
    computed = [t for t in targets if t not in from_file]
    unknown = [t for t in computed if t not in chem.PROPERTIES]
    if unknown:
        raise ValueError(
            f"train.property_targets {unknown} are neither data property columns nor known "
            f"properties ({sorted(chem.PROPERTIES)})"
        )
    table = chem.properties(split.smiles, computed) if computed else None
    cols = [
        (have[t] if t in from_file else table[t]).to_numpy(np.float64).astype(np.float32)
        for t in targets
    ]
    return np.stack(cols, 1) if cols else np.zeros((len(split), 0), np.float32)
