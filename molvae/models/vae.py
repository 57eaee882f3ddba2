"""The SELFIES VAE: bidirectional GRU encoder, z-conditioned GRU decoder, and their wiring."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from molvae.models import grammar as gram
from molvae.models.gru import GRU, reverse_padded
from molvae.models.lstm import CIFG, LSTM
from molvae.models.transformer import TransformerDecoder

DECODERS = ("gru", "lstm", "cifg", "transformer")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture. Defaults are conf/model/default.yaml's (the demo model; tests/test_config.py
    keeps them equal); `model=moses_gru` mirrors the MOSES VAE."""

    vocab_size: int = 0  # set from the vocabulary
    embed_dim: int = 32
    enc_hidden: int = 128
    enc_layers: int = 1
    bidirectional: bool = True
    latent_dim: int = 64
    dec_hidden: int = 256
    dec_layers: int = 1
    dtype: str = "float32"  # operand type of the GRU matmuls (float32 or bfloat16; f32 sums)
    decoder: str = "gru"  # gru | lstm | cifg | transformer (dec_hidden wide, dec_layers deep)
    dec_heads: int = 4  # transformer: attention heads
    dec_ff_mult: int = 4  # transformer: MLP width as a multiple of dec_hidden
    # Grammar-constrained decoding (models.grammar): the decoder's softmax is over the tokens
    # after which the SELFIES decoder needs no repair, in training, likelihoods and sampling.
    # Parameters are those of the unconstrained model (a run may branch from one).
    grammar: bool = False
    # With grammar: ring bonds that would close a ring of more than max_ring atoms are masked
    # too (models.grammar._near), in training, likelihoods and sampling (0: no limit). The
    # training strings must be written so (data.max_ring <= max_ring).
    max_ring: int = 0

    def __post_init__(self) -> None:
        for name in (
            "embed_dim",
            "enc_hidden",
            "enc_layers",
            "latent_dim",
            "dec_hidden",
            "dec_layers",
            "dec_heads",
            "dec_ff_mult",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.max_ring and not (self.grammar and 3 <= self.max_ring <= gram.MAX_RING):
            raise ValueError(
                f"model.max_ring must be 0 (no limit) or 3..{gram.MAX_RING} with "
                f"model.grammar=true, got "
                f"{self.max_ring} (grammar={self.grammar})"
            )
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"model.dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"model.decoder must be one of {DECODERS}, got {self.decoder!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Encoder(nnx.Module):
    """Token ids -> (mu, logvar) of q(z|x) from the final states of a (bi)GRU stack."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dirs = 2 if cfg.bidirectional else 1
        self.embed = nnx.Embed(cfg.vocab_size, cfg.embed_dim, rngs=rngs)
        ins = [cfg.embed_dim] + [cfg.enc_hidden * dirs] * (cfg.enc_layers - 1)
        self.fwd = nnx.List([GRU(d, cfg.enc_hidden, dtype=cfg.dtype, rngs=rngs) for d in ins])
        self.bwd = nnx.List(
            [GRU(d, cfg.enc_hidden, dtype=cfg.dtype, rngs=rngs) for d in ins]
            if cfg.bidirectional
            else []
        )
        self.to_mu = nnx.Linear(cfg.enc_hidden * dirs, cfg.latent_dim, rngs=rngs)
        self.to_logvar = nnx.Linear(cfg.enc_hidden * dirs, cfg.latent_dim, rngs=rngs)

    def __call__(self, tokens: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """tokens (B, T) = [bos, symbols, eos, pad]; reads symbols + eos (lengths of them)."""
        x = self.embed(tokens[:, 1:])  # (B, L, E)
        mask = jnp.arange(x.shape[1])[None, :] < lengths[:, None]  # (B, L)
        B, H = x.shape[0], self.cfg.enc_hidden
        finals = []
        for i, fwd in enumerate(self.fwd):
            h0 = jnp.zeros((B, H), jnp.float32)
            ys, hf = fwd(x, h0, mask)
            if self.cfg.bidirectional:
                ys_b, hb = self.bwd[i](reverse_padded(x, lengths), h0, mask)
                ys = jnp.concatenate([ys, reverse_padded(ys_b, lengths)], axis=-1)
                finals = [hf, hb]
            else:
                finals = [hf]
            x = ys
        h = jnp.concatenate(finals, axis=-1)  # (B, H * dirs) of the last layer
        return self.to_mu(h), self.to_logvar(h)


class Decoder(nnx.Module):
    """Recurrent stack (GRU, or LSTM with model.decoder=lstm, or its coupled-gate CIFG with
    model.decoder=cifg) conditioned on z: z sets the initial states (an LSTM's cells start
    empty) and is fed at every step."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        cell = {"lstm": LSTM, "cifg": CIFG}.get(cfg.decoder, GRU)
        self.embed = nnx.Embed(cfg.vocab_size, cfg.embed_dim, rngs=rngs)
        self.z_to_h = nnx.Linear(cfg.latent_dim, cfg.dec_hidden * cfg.dec_layers, rngs=rngs)
        # Layer 0's input is [embedding, z]; z's part of the projection is constant over time.
        self.z_to_in = nnx.Linear(
            cfg.latent_dim, cell.gates * cfg.dec_hidden, use_bias=False, rngs=rngs
        )
        ins = [cfg.embed_dim] + [cfg.dec_hidden] * (cfg.dec_layers - 1)
        self.layers = nnx.List([cell(d, cfg.dec_hidden, dtype=cfg.dtype, rngs=rngs) for d in ins])
        self.out = nnx.Linear(cfg.dec_hidden, cfg.vocab_size, rngs=rngs)

    def initial_state(self, z: jax.Array, length: int | None = None) -> tuple[jax.Array, list]:
        """Per-layer initial states (a list of (B, H), or of (h, c) pairs for an LSTM) and the z
        input projection (B, gates * H). length (the positions to decode) matters to the
        Transformer's cache only."""
        h = jnp.tanh(self.z_to_h(z))
        hs = jnp.split(h, self.cfg.dec_layers, axis=-1)
        return self.z_to_in(z), [layer.start(hi) for layer, hi in zip(self.layers, hs, strict=True)]

    def __call__(self, z: jax.Array, tokens_in: jax.Array) -> jax.Array:
        """Teacher forcing: logits (B, L, V) for inputs tokens_in (B, L) = [bos, symbols...]."""
        zin, hs = self.initial_state(z)
        x = self.embed(tokens_in)
        for i, layer in enumerate(self.layers):
            x, _ = layer(x, hs[i], extra=zin if i == 0 else None)
        return self.out(x)

    def input_table(self) -> jax.Array:
        """Layer 0's projected input for every symbol (V, gates * H): a lookup, not a matmul."""
        return self.layers[0].project(self.embed.embedding[...])

    def step(
        self,
        token: jax.Array,
        zin: jax.Array,
        hs: list,
        table: jax.Array | None = None,
        t: jax.Array | None = None,
    ) -> tuple[jax.Array, list]:
        """One decoding step: token (B,) -> logits (B, V) and the new per-layer states.
        `table` is input_table(), computed once per decode rather than per step; the position
        t is the Transformer's business, not the recurrent one's."""
        table = self.input_table() if table is None else table
        x, new = None, []
        for i, layer in enumerate(self.layers):
            xp = table[token] + zin if i == 0 else layer.project(x)
            state = layer.step(xp, hs[i])
            new.append(state)
            x = layer.output(state)
        return self.out(x), new


class VAE(nnx.Module):
    """Encoder + reparameterisation + decoder."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if cfg.vocab_size <= 3:
            raise ValueError("ModelConfig.vocab_size must be set from the vocabulary")
        self.cfg = cfg
        self.encoder = Encoder(cfg, rngs=rngs)
        self.decoder = (
            TransformerDecoder(cfg, rngs=rngs)
            if cfg.decoder == "transformer"
            else Decoder(cfg, rngs=rngs)
        )

    def encode(self, tokens: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encoder(tokens, lengths)

    def __call__(
        self, tokens: jax.Array, lengths: jax.Array, key: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Logits (B, L, V) for targets tokens[:, 1:], and (mu, logvar) (B, Z)."""
        mu, logvar = self.encode(tokens, lengths)
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)
        return self.decoder(z, tokens[:, :-1]), mu, logvar

    def generate(
        self,
        z: jax.Array,
        key: jax.Array,
        max_len: int,
        temperature: float | jax.Array = 1.0,
        greedy: bool = False,
        grammar: gram.GrammarTables | None = None,
    ) -> jax.Array:
        """Decode z (B, Z) autoregressively to ids (B, max_len + 1); pad (0) after eos (2).

        Each row draws from its own key (split from `key`), so a row's molecule does not depend
        on the other rows: the decoding engine (molvae.inference.engine) gives the same ids.
        With `grammar` (models.grammar.grammar_tables of the vocabulary), tokens that would make
        the SELFIES decoder repair the string are masked out at every step."""
        B = z.shape[0]
        zin, hs = self.decoder.initial_state(z, max_len + 1)
        bos = jnp.full((B,), 1, jnp.int32)
        done = jnp.zeros((B,), bool)
        row_keys = jax.random.split(key, B)
        gstate = None if grammar is None else gram.init_state(B, max_len)
        *_, out, _ = self.decode_steps(
            zin, hs, bos, done, row_keys, 0, max_len + 1, temperature, greedy, grammar, gstate
        )
        return out

    def decode_steps(
        self,
        zin: jax.Array,
        hs: list[jax.Array],
        token: jax.Array,
        done: jax.Array,
        row_keys: jax.Array,
        t0: int | jax.Array,
        steps: int,
        temperature: float | jax.Array = 1.0,
        greedy: bool = False,
        grammar: gram.GrammarTables | None = None,
        gstate: gram.GrammarState | None = None,
    ) -> tuple[jax.Array, list[jax.Array], jax.Array, jax.Array, gram.GrammarState | None]:
        """`steps` decoding steps from position t0 (a scalar, or (B,) for rows at different
        positions): (token, states, done) after them, the ids emitted (B, steps) and the grammar
        state (None without `grammar`). Rows that are done emit pad (0); position t of row i
        samples with fold_in(row_keys[i], t). With `grammar` and its state `gstate`, each step
        draws only among the tokens models.grammar allows."""

        table = self.decoder.input_table()

        def body(carry, t):
            token, hs, done, g = carry
            logits, hs = self.decoder.step(token, zin, hs, table, t)
            logits = logits.at[:, :2].set(-jnp.inf)  # never emit pad or bos
            if grammar is not None:
                g, logits = gram.mask_logits(g, grammar, logits)
            if greedy:
                nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            else:
                nxt = _draw(row_keys, t, logits / temperature)
            nxt = jnp.where(done, 0, nxt)
            done = done | (nxt == 2)
            if grammar is not None:
                g = gram.advance(g, nxt, grammar)
            return (nxt, hs, done, g), nxt

        ts = jnp.arange(steps)[:, None] + jnp.broadcast_to(t0, token.shape)[None, :]  # (steps, B)
        (token, hs, done, gstate), out = jax.lax.scan(body, (token, hs, done, gstate), ts)
        return token, hs, done, out.T, gstate


def _draw(row_keys: jax.Array, t: jax.Array, logits: jax.Array) -> jax.Array:
    """One categorical draw per row from logits (B, V), by inverting the CDF with a single
    uniform per row from fold_in(row_keys[i], t[i]): one random word per row and step, where
    Gumbel-max needs V of them."""
    t = jnp.broadcast_to(t, row_keys.shape)  # one position for all rows, or one per row
    u = jax.vmap(lambda k, ti: jax.random.uniform(jax.random.fold_in(k, ti)))(row_keys, t)
    cdf = jnp.cumsum(jax.nn.softmax(logits, axis=-1), axis=-1)  # (B, V)
    below = cdf <= (u * cdf[:, -1])[:, None]  # the first entry with cdf > u is drawn
    return jnp.minimum(below.sum(-1), logits.shape[-1] - 1).astype(jnp.int32)
