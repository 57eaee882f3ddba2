"""Losses of the VAE: the Gaussian KL, masked sequence NLL and the ELBO (beta, free bits)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from molvae.models import grammar as gram
from molvae.models.vae import VAE


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
    mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Loss = E[recon] + beta * KL (with optional free bits); weights (B,) mask padding rows.
    mask (B, L, V): the tokens the decoder may emit at each target position (grammar-constrained
    decoding, models.grammar.sequence_masks); its softmax is over those only."""
    loss, aux, _ = elbo_with_means(model, tokens, lengths, weights, key, beta, free_bits, mask)
    return loss, aux


def elbo_with_means(model, tokens, lengths, weights, key, beta, free_bits, mask=None):
    """elbo_terms plus the posterior means (for the joint property loss)."""
    logits, mu, logvar = model(tokens, lengths, key)
    if mask is not None:
        logits = gram.restrict(logits, mask)
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
