"""ChemNet (Preuer et al. 2018) in JAX: the activations behind the Fréchet ChemNet Distance."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg

from molvae import chem, fetch

log = logging.getLogger(__name__)

H5_MEMBER = "fcd/ChemNet_v0.13_pretrained.h5"
# Symbols in the order of ChemNet's one-hot input (fcd / fcd_torch `get_one_hot`); 'X' = unknown.
VOCAB = (
    "C", "N", "O", "H", "F", "Cl", "P", "B", "Br", "S", "I", "Si", "#", "(", ")", "+", "-",
    "1", "2", "3", "4", "5", "6", "7", "8", "=", "[", "]", "@", "c", "n", "o", "s", "X", ".",
)  # fmt: skip
PAD_LEN = 350
_INDEX = {s: i for i, s in enumerate(VOCAB)}
_UNK, _END = _INDEX["X"], _INDEX["."]
_TWO_LETTERS = frozenset("ril")  # second letters of Cl, Br, Si (and anything else before r/i/l)
_LAYERS = ("conv1d_7", "conv1d_8", "lstm_7", "lstm_8")


def tokenize(smiles: str, pad_len: int = PAD_LEN) -> np.ndarray:
    """Symbol ids of a SMILES as fcd_torch reads it, end marker '.' included; -1 pads to pad_len.

    Mirrors fcd_torch.utils.get_one_hot, quirks included: a character followed by r, i or l is
    read as one two-letter symbol, and a long SMILES is cut so its end marker sits at pad_len - 1.
    """
    s = smiles + "."
    ids = np.full(pad_len, -1, np.int8)
    src = dst = 0
    while True:
        step = 2 if s[src + 1] in _TWO_LETTERS else 1
        ids[dst] = _INDEX.get(s[src : src + step], _UNK)
        src, dst = src + step, dst + 1
        if s[src] == "." or dst == pad_len - 1:
            ids[dst] = _END
            return ids


@functools.cache
def load_params(path: str | None = None) -> dict[str, jax.Array]:
    """ChemNet's conv and LSTM weights from the published Keras file (the fcd 1.1 wheel)."""
    path = Path(path) if path else fetch.wheel_member(fetch.FCD, H5_MEMBER)
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
        _check_config(config)
        weights = f["model_weights"]
        params = {
            "conv1": weights["conv1d_7/conv1d_7_1/kernel:0"][()],  # (4, 35, 32)
            "conv2": weights["conv1d_8/conv1d_8_1/kernel:0"][()],  # (4, 32, 32)
        }
        for name, layer in (("lstm1", "lstm_7"), ("lstm2", "lstm_8")):
            group = weights[f"{layer}/{layer}_1"]
            # One matmul per step on [x, h]: stack the input and recurrent kernels.
            kernel = np.concatenate([group["kernel:0"][()], group["recurrent_kernel:0"][()]])
            params[name] = kernel  # (D + H, 4H), Keras gate order i, f, c, o
            params[name + "_bias"] = group["bias:0"][()]
    return {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}


def _check_config(config: dict) -> None:
    # The forward pass below hard-codes this architecture; fail loudly on any other file.
    layers = {layer["config"]["name"]: layer for layer in config["config"]}
    for name in _LAYERS:
        if name not in layers:
            raise ValueError(f"ChemNet file has no layer {name}")
    for name in _LAYERS[2:]:
        cfg = layers[name]["config"]
        if not cfg["go_backwards"] or cfg["recurrent_activation"] != "sigmoid":
            raise ValueError(f"unexpected ChemNet LSTM configuration {cfg}")


def _same_padding(length: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding (more on the right when odd)."""
    out = -(-length // stride)
    total = max((out - 1) * stride + kernel - length, 0)
    return total // 2, total - total // 2


def _conv_selu(x: jax.Array, kernel: jax.Array, stride: int = 2) -> jax.Array:
    pad = _same_padding(x.shape[1], kernel.shape[0], stride)
    y = jax.lax.conv_general_dilated(
        x, kernel, (stride,), [pad], dimension_numbers=("NWC", "WIO", "NWC")
    )
    return jax.nn.selu(y)


def _lstm(xs: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """Keras LSTM (sigmoid gates, tanh) over time-major xs (T, B, D) -> all outputs (T, B, H)."""
    hidden = kernel.shape[1] // 4
    zeros = jnp.zeros((xs.shape[1], hidden), xs.dtype)

    def step(carry, x):
        h, c = carry
        i, f, g, o = jnp.split(jnp.concatenate([x, h], -1) @ kernel + bias, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    _, hs = jax.lax.scan(step, (zeros, zeros), xs)
    return hs


@jax.jit
def forward(params: dict[str, jax.Array], ids: jax.Array) -> jax.Array:
    """ChemNet activations (B, 512) of token ids (B, 350): the second LSTM's last output."""
    x = jax.nn.one_hot(ids, len(VOCAB), dtype=jnp.float32) / len(VOCAB)  # (B, 350, 35); -1 -> 0
    x = _conv_selu(x, params["conv1"])  # (B, 175, 32)
    x = _conv_selu(x, params["conv2"])  # (B, 88, 32)
    xs = jnp.swapaxes(x, 0, 1)[::-1]  # (T, B, 32); go_backwards
    hs = _lstm(xs, params["lstm1"], params["lstm1_bias"])  # (T, B, 128), reversed time
    hs = _lstm(hs[::-1], params["lstm2"], params["lstm2_bias"])  # go_backwards again
    return hs[-1]  # (B, 512)


def chemnet_activations(
    smiles: Sequence[str], batch_size: int = 256, canonize: bool = True, n_jobs: int | None = None
) -> np.ndarray:
    """ChemNet activations (n, 512) float32, as fcd_torch computes them (canonical SMILES in).

    Raises ValueError on an invalid SMILES, as fcd_torch does: remove invalid ones first.
    """
    smiles = list(smiles)
    if canonize:
        canon = chem.parallel_map(chem.canonical, smiles, n_jobs=n_jobs)
        bad = [s for s, c in zip(smiles, canon, strict=True) if c is None]
        if bad:
            raise ValueError(f"{len(bad)} invalid SMILES given to ChemNet, e.g. {bad[0]!r}")
        smiles = canon
    if _MEMO is not None:  # inside memoized(): compute each distinct SMILES once
        todo = list(dict.fromkeys(s for s in smiles if s not in _MEMO))
        if todo:
            _MEMO.update(zip(todo, _activations(todo, batch_size), strict=True))
        return np.stack([_MEMO[s] for s in smiles]) if smiles else np.zeros((0, 512), np.float32)
    return _activations(smiles, batch_size)


_MEMO: dict[str, np.ndarray] | None = None


@contextlib.contextmanager
def memoized():
    """Within this block chemnet_activations computes each distinct SMILES once (scoring the
    same samples twice, e.g. as sampled and with strict decoding, costs one ChemNet pass)."""
    global _MEMO
    outer, _MEMO = _MEMO, {} if _MEMO is None else _MEMO
    try:
        yield
    finally:
        _MEMO = outer


def _activations(smiles: list[str], batch_size: int) -> np.ndarray:
    params = load_params()
    out = np.zeros((len(smiles), 512), np.float32)
    for start in _progress(range(0, len(smiles), batch_size), len(smiles), batch_size):
        chunk = smiles[start : start + batch_size]
        ids = np.full((batch_size, PAD_LEN), -1, np.int8)  # fixed shape: one compilation
        for row, s in enumerate(chunk):
            ids[row] = tokenize(s)
        out[start : start + len(chunk)] = np.asarray(forward(params, ids))[: len(chunk)]
    return out


def _progress(it, total: int, batch_size: int):
    if total < 20 * batch_size:
        return it
    from tqdm.auto import tqdm

    n = -(-total // batch_size)
    return tqdm(it, desc="ChemNet", unit="batch", total=n, leave=False, mininterval=5)


def fcd_stats(
    activations: np.ndarray, counts: np.ndarray | None = None, chunk: int = 16384
) -> tuple[np.ndarray, np.ndarray]:
    """Mean (512,) and covariance (512, 512) in float64, as fcd_torch (np.mean, np.cov).

    counts: how often each row occurs (the same as repeating rows). Chunked: the reference sets
    have 176k rows and np.cov would hold several float64 copies of them.
    """
    counts = np.ones(len(activations)) if counts is None else np.asarray(counts, np.float64)
    n = counts.sum()
    mu = np.zeros(activations.shape[1])
    for i in range(0, len(activations), chunk):
        mu += counts[i : i + chunk] @ activations[i : i + chunk].astype(np.float64)
    mu /= n
    scatter = np.zeros((activations.shape[1],) * 2)
    for i in range(0, len(activations), chunk):
        centered = activations[i : i + chunk].astype(np.float64) - mu
        scatter += (centered * counts[i : i + chunk, None]).T @ centered
    return mu, scatter / (n - 1)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance of two Gaussians, as fcd_torch.calculate_frechet_distance computes it."""
    diff = mu1 - mu2
    with warnings.catch_warnings():  # fcd_torch passes disp=False: a singular product is expected
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # product nearly singular: regularize as the original
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in FCD")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))
