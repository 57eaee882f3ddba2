"""Schedules: the KL weight beta and the learning rate, and the optimizer built on them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from molvae.training.config import TrainConfig


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
    """Learning rate at each step: linear warm-up, then constant, cosine decay, or wsd
    (warmup-stable-decay: constant, then down to lr_end_factor * lr over the last
    lr_decay_steps of `steps`, linearly or as 1 - sqrt; Hu et al. 2024, Hägele et al. 2024)."""
    warm = (
        optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1))
        if cfg.warmup_steps
        else optax.constant_schedule(cfg.lr)
    )
    if cfg.lr_schedule == "constant":
        return warm
    if cfg.lr_schedule == "wsd":
        start = max(cfg.steps - cfg.lr_decay_steps, 0)
        lo, n = cfg.lr * cfg.lr_end_factor, cfg.lr_decay_steps
        if cfg.lr_decay_shape == "sqrt":

            def decay(count: jax.Array) -> jax.Array:
                frac = jnp.clip(jnp.asarray(count, jnp.float32) / n, 0.0, 1.0)
                return lo + (cfg.lr - lo) * (1.0 - jnp.sqrt(frac))

        else:
            decay = optax.linear_schedule(cfg.lr, lo, n)
        return optax.join_schedules([warm, decay], [start])  # warm holds lr after warm-up
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
