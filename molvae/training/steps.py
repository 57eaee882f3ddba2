"""Jitted steps over split NNX state: train (ELBO, or ELBO + property loss), evaluate."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from molvae.models import grammar as gram
from molvae.models.losses import elbo_terms, elbo_with_means, gaussian_kl, sequence_nll
from molvae.models.predictor import property_loss
from molvae.training.config import TrainConfig
from molvae.training.schedules import kl_weight


def _masks(grammar: gram.GrammarTables | None, tokens: jax.Array, max_len: int):
    """The grammar's teacher-forced masks for tokens (None without a grammar)."""
    return None if grammar is None else gram.sequence_masks(grammar, tokens[:, 1:], max_len)


def make_train_step(
    graphdef: nnx.GraphDef,
    cfg: TrainConfig,
    grammar: gram.GrammarTables | None = None,
    max_len: int = 0,
):
    """jit over split NNX state (not nnx.jit: its per-call graph walk costs on small models).
    grammar: the vocabulary's tables for a model with grammar-constrained decoding (the loss
    is then the likelihood under the masked decoder), max_len its longest string."""

    @jax.jit
    def train_step(state, tokens, lengths, weights, key):
        model, opt = nnx.merge(graphdef, state)
        step = opt.step[...]
        beta = kl_weight(step, cfg)
        k = jax.random.fold_in(key, step)  # noise depends on the step only: resume is exact
        mask = _masks(grammar, tokens, max_len)

        def loss_fn(m):
            return elbo_terms(m, tokens, lengths, weights, k, beta, cfg.free_bits, mask)

        (_, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        aux["grad_norm"] = optax.tree.norm(grads)
        opt.update(model, grads)
        return nnx.state((model, opt)), aux

    return train_step


def make_joint_train_step(
    graphdef: nnx.GraphDef,
    cfg: TrainConfig,
    grammar: gram.GrammarTables | None = None,
    max_len: int = 0,
):
    """Train step for state (model, opt, predictor, predictor_opt): ELBO + weighted property
    loss of the predictor on the posterior means; gradients reach the encoder through mu.
    grammar, max_len: as make_train_step."""

    @jax.jit
    def train_step(state, tokens, lengths, weights, y, key):
        model, opt, pred, popt = nnx.merge(graphdef, state)
        step = opt.step[...]
        beta = kl_weight(step, cfg)
        k = jax.random.fold_in(key, step)
        mask = jnp.isfinite(y) * weights[:, None]  # missing properties and padding rows: 0
        tmask = _masks(grammar, tokens, max_len)

        def loss_fn(m, p):
            loss, aux, mu = elbo_with_means(
                m, tokens, lengths, weights, k, beta, cfg.free_bits, tmask
            )
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


def make_eval_step(
    graphdef_model: nnx.GraphDef, max_len: int, grammar: gram.GrammarTables | None = None
):
    """Loss terms at z = mu, teacher-forced token accuracy, greedy whole-molecule reconstruction
    (under the grammar's masks, for a model with grammar-constrained decoding)."""

    @jax.jit
    def eval_step(params, tokens, lengths, weights):
        model = nnx.merge(graphdef_model, params)
        mu, logvar = model.encode(tokens, lengths)
        logits = model.decoder(mu, tokens[:, :-1])
        if grammar is not None:
            logits = gram.restrict(logits, _masks(grammar, tokens, max_len))
        recon, hits, count = sequence_nll(logits, tokens[:, 1:], lengths)
        kl = gaussian_kl(mu, logvar).sum(-1)
        out = model.generate(mu, jax.random.key(0), max_len, greedy=True, grammar=grammar)
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
