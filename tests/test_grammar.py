"""Grammar-constrained SELFIES decoding (molvae.models.grammar): judged by chem.selfies_repair,
the independent replay of the SELFIES decoder, on strings drawn under the mask."""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import selfies as sf

from molvae import chem, data
from molvae.models import grammar as gram
from molvae.models.losses import sequence_nll
from molvae.vocab import Vocab

# The MOSES alphabet (the symbols of the shipped models' vocabulary).
ALPHABET = [
    "[#Branch1]",
    "[#Branch2]",
    "[#C]",
    "[#N]",
    "[=Branch1]",
    "[=Branch2]",
    "[=C]",
    "[=N]",
    "[=O]",
    "[=Ring1]",
    "[=Ring2]",
    "[=S]",
    "[Br]",
    "[Branch1]",
    "[Branch2]",
    "[C]",
    "[Cl]",
    "[F]",
    "[NH1]",
    "[N]",
    "[O]",
    "[P]",
    "[Ring1]",
    "[Ring2]",
    "[S]",
]
VOCAB = Vocab(("<pad>", "<bos>", "<eos>", *ALPHABET))
TABLES = gram.grammar_tables(VOCAB.tokens, VOCAB.eos_id)


def test_tables_read_each_symbol_as_the_selfies_decoder_does():
    kind, order, cap, nidx, digit = (
        np.asarray(x) for x in (TABLES.kind, TABLES.order, TABLES.cap, TABLES.nidx, TABLES.digit)
    )
    at = {t: i for i, t in enumerate(VOCAB.tokens)}
    assert kind[at["<eos>"]] == gram.EOS and kind[at["<pad>"]] == gram.NEVER
    assert (kind[at["[=C]"]], order[at["[=C]"]], cap[at["[=C]"]]) == (gram.ATOM, 2, 4)
    assert (kind[at["[#Branch2]"]], order[at["[#Branch2]"]], nidx[at["[#Branch2]"]]) == (
        gram.BRANCH,
        3,
        2,
    )
    assert (kind[at["[=Ring1]"]], order[at["[=Ring1]"]], nidx[at["[=Ring1]"]]) == (gram.RING, 2, 1)
    # index symbols: [C]=0 ... [P]=15 (selfies' index alphabet); others read as 0
    assert digit[at["[Ring1]"]] == 1 and digit[at["[P]"]] == 15 and digit[at["[F]"]] == 0


def test_tables_refuse_bpe_tokens_and_unknown_symbols():
    with pytest.raises(ValueError, match="one SELFIES symbol per token"):
        gram.grammar_tables(("<pad>", "<bos>", "<eos>", "[C]", "[C][O]"), 2)
    with pytest.raises(ValueError, match="cannot read"):
        gram.grammar_tables(("<pad>", "<bos>", "<eos>", "[Xyz]"), 2)


@jax.jit
def _draw_masked(key, bias, tables=TABLES):
    """Strings drawn from random logits (+ bias per token) under the mask: (ids, lost, done)."""
    batch, max_len, v = 512, 48, len(VOCAB)
    g = gram.init_state(batch, max_len)

    def body(carry, t):
        g, done = carry
        logits = 2.0 * jax.random.normal(jax.random.fold_in(key, t), (batch, v)) + bias
        logits = logits.at[:, :2].set(-jnp.inf)
        g, logits = gram.mask_logits(g, tables, logits)
        nxt = jax.random.categorical(jax.random.fold_in(key, 10_000 + t), logits)
        nxt = jnp.where(done, 0, nxt.astype(jnp.int32))
        return (gram.advance(g, nxt, tables), done | (nxt == 2)), nxt

    (g, done), ids = jax.lax.scan(body, (g, jnp.zeros(batch, bool)), jnp.arange(max_len + 1))
    return ids.T, g.lost, done


@pytest.mark.parametrize("seed", range(4))
def test_no_string_drawn_under_the_mask_needs_a_repair(seed):
    """Random logits, pushed towards branches and rings (where the repairs are), never lead to
    a string the SELFIES decoder repairs, nor to an empty mask."""
    kind = np.asarray(TABLES.kind)
    bias = np.zeros(len(VOCAB), np.float32)
    bias[kind == gram.BRANCH] = [0.0, 1.5, 3.0, 2.0][seed]
    bias[kind == gram.RING] = [0.0, 3.0, 1.5, 2.0][seed]
    bias[VOCAB.eos_id] = -1.5
    ids, lost, done = (np.asarray(x) for x in _draw_masked(jax.random.key(seed), bias))
    assert not lost.any()
    ended = [s for s, d in zip(VOCAB.decode_selfies_batch(ids), done, strict=True) if d]
    assert len(ended) > 300
    kinds = Counter(chem.selfies_repair_kind(s) for s in ended)
    assert kinds == {None: len(ended)}, kinds
    # and the strings are not trivial: rings and branches are used
    assert np.mean(["Ring" in s for s in ended]) > 0.2
    assert np.mean(["Branch" in s for s in ended]) > 0.2


def _largest_ring(selfies: str) -> int:
    mol = chem.mol_from_smiles(sf.decoder(selfies))
    return max((len(r) for r in mol.GetRingInfo().AtomRings()), default=0)


@pytest.mark.parametrize("max_ring", [6, 7])
def test_max_ring_masks_every_larger_ring(max_ring):
    """With max_ring, strings drawn from random logits pushed towards rings have no ring of
    more atoms (RDKit's rings, as MOSES's filters read them) and still need no repair; without
    it, the same draws do have larger rings (so the check can fail)."""
    kind = np.asarray(TABLES.kind)
    bias = np.zeros(len(VOCAB), np.float32)
    bias[kind == gram.RING] = 3.0
    bias[VOCAB.eos_id] = -1.5
    tables = gram.grammar_tables(VOCAB.tokens, VOCAB.eos_id, max_ring=max_ring)
    largest = {}
    for name, tab in (("free", TABLES), ("limited", tables)):
        ids, lost, done = (np.asarray(x) for x in _draw_masked(jax.random.key(7), bias, tab))
        assert not lost.any()
        ended = [s for s, d in zip(VOCAB.decode_selfies_batch(ids), done, strict=True) if d]
        assert len(ended) > 300
        assert Counter(chem.selfies_repair_kind(s) for s in ended) == {None: len(ended)}
        largest[name] = Counter(_largest_ring(s) for s in ended)
    assert max(largest["limited"]) == max_ring  # rings up to the limit are still drawn
    assert sum(c for size, c in largest["free"].items() if size > max_ring) >= 5
    with pytest.raises(ValueError, match="max_ring"):
        gram.grammar_tables(VOCAB.tokens, VOCAB.eos_id, max_ring=2)


def _moses_selfies(n: int) -> list[str]:
    smiles = data.read_smiles_file(data.moses_files()["test"])["smiles"][:n]
    selfies = [chem.smiles_to_selfies(s) for s in smiles]  # as the training data is
    known = set(ALPHABET)  # the training set's alphabet (a few test molecules have [H])
    selfies = [s for s in selfies if set(sf.split_selfies(s)) <= known]
    assert len(selfies) > 0.99 * n
    return selfies


def _moses_ids(n: int, max_len: int) -> np.ndarray:
    return VOCAB.encode_batch(_moses_selfies(n), max_len)[0]


def test_the_mask_allows_every_moses_molecule_at_every_step():
    """The mask is never stricter than the data: every symbol of 2,000 MOSES molecules (and
    their eos) is allowed where it stands."""
    max_len = 72
    selfies = _moses_selfies(2000)
    tokens = VOCAB.encode_batch(selfies, max_len)[0]
    masks = jax.jit(lambda t: gram.sequence_masks(TABLES, t, max_len))(jnp.asarray(tokens[:, 1:]))
    target_ok = np.take_along_axis(np.asarray(masks), tokens[:, 1:, None], -1)[..., 0]
    assert target_ok.all(), np.argwhere(~target_ok)[:5]
    # and it does exclude things: on average most tokens are masked at a position
    assert np.asarray(masks)[:, :10].mean() < 0.8
    # max_ring=7: some canonical MOSES strings close a fused system's outer ring first and
    # split it later (145 of these 1,999 when measured), which the limit forbids ...
    t7 = gram.grammar_tables(VOCAB.tokens, VOCAB.eos_id, max_ring=7)
    masks7 = jax.jit(lambda t: gram.sequence_masks(t7, t, max_len))

    def ok7(strings):
        ids = VOCAB.encode_batch(strings, max_len)[0]
        m = np.asarray(masks7(jnp.asarray(ids[:, 1:])))
        return np.take_along_axis(m, ids[:, 1:, None], -1)[..., 0].all(1)

    canonical = ok7(selfies)
    assert 0.03 < 1 - canonical.mean() < 0.12
    # ... exactly those whose ring bonds chem.ring_closures (a replay in Python) finds closing
    # a ring of more than 7 atoms when read
    replay = np.array([max(chem.ring_closures(s), default=0) <= 7 for s in selfies])
    np.testing.assert_array_equal(canonical, replay)
    # written small-ring-first (data.max_ring), every molecule has a string the mask allows
    smiles = [chem.selfies_to_smiles(s) for s in selfies]
    small = [
        s if ok else chem.small_ring_selfies(m, 7, max_len)
        for s, ok, m in zip(selfies, replay, smiles, strict=True)
    ]
    assert all(small) and ok7(small).all()
    assert [chem.selfies_to_smiles(s) for s in small] == smiles


def test_the_masked_likelihood_is_never_below_the_unmasked_one():
    """Renormalising over a set of tokens that holds the target raises its probability."""
    tokens = _moses_ids(64, 72)
    tokens, lengths = jnp.asarray(tokens), jnp.asarray((tokens[:, 1:] > 0).sum(1))
    logits = jax.random.normal(jax.random.key(0), (*tokens[:, 1:].shape, len(VOCAB)))
    mask = gram.sequence_masks(TABLES, tokens[:, 1:], 72)
    free, _, _ = sequence_nll(logits, tokens[:, 1:], lengths)
    masked, _, _ = sequence_nll(gram.restrict(logits, mask), tokens[:, 1:], lengths)
    assert np.all(np.asarray(masked) <= np.asarray(free) + 1e-4)
    assert np.mean(np.asarray(free) - np.asarray(masked)) > 10.0  # nats: most tokens masked


def test_a_model_samples_without_repairs_under_grammar_and_the_engine_equals_one_scan(tiny_run):
    """Through the continuous-batching engine (slots refilled, rows packed), grammar-
    constrained samples of a barely trained model are the ids of one scan per chunk, and no
    finished one needs a repair; unconstrained, many do."""
    from molvae.api import load
    from molvae.inference import engine, latent

    model = load(tiny_run)
    dec = model.engine
    z = latent.prior(engine.CHUNK + 21, model.latent_dim, seed=3)
    ids = dec.decode_ids(z, seed=4, greedy=False, grammar=True)
    key = jax.random.fold_in(jax.random.key(4), 1)
    zc = np.concatenate([z[engine.CHUNK :], np.zeros((engine.CHUNK - 21, z.shape[1]), "f4")])
    full = engine._generate(
        dec.graphdef,
        dec.params,
        zc,
        key,
        jnp.float32(1.0),
        dec.max_len,
        False,
        dec.grammar_tables(),
    )
    np.testing.assert_array_equal(ids[engine.CHUNK :], np.asarray(full)[:21])
    ended = [s for s, r in zip(dec.vocab.decode_selfies_batch(ids), ids, strict=True) if 2 in r]
    assert len(ended) > 0.9 * len(ids)
    assert not any(chem.selfies_repaired(s) for s in ended)
    free = dec.vocab.decode_selfies_batch(dec.decode_ids(z, seed=4, greedy=False))
    assert np.mean([chem.selfies_repaired(s) for s in free]) > 0.1
    smiles = model.sample(64, seed=1, strict=True, grammar=True)
    assert np.mean([s != "" for s in smiles]) > 0.9
    # max_ring through the API: the grammar implied, no ring of more atoms, nothing repaired
    limited = model.sample(256, seed=1, strict=True, max_ring=5)
    mols = [chem.mol_from_smiles(s) for s in limited if s]
    assert len(mols) > 0.9 * len(limited)
    assert max(len(r) for m in mols for r in m.GetRingInfo().AtomRings()) <= 5


def test_a_grammar_model_trains_and_scores_under_its_masks(tiny_run, tmp_path):
    """model.grammar=true: a run branched from an unconstrained one trains on the masked
    likelihood, samples under the mask by default, and its log-likelihood bound is that of the
    masked decoder (above the unconstrained one for the same parameters)."""
    from molvae.api import load
    from molvae.data import DataConfig
    from molvae.loggers import JsonlLogger
    from molvae.models.vae import ModelConfig
    from molvae.training import TrainConfig, train_and_evaluate

    data_cfg = DataConfig(limit=300, max_len=40)
    model_cfg = ModelConfig(embed_dim=16, enc_hidden=32, latent_dim=8, dec_hidden=32, grammar=True)
    train_cfg = TrainConfig(
        steps=40,
        batch_size=32,
        log_every=10,
        eval_every=40,
        ckpt_every=40,
        eval_size=64,
        warmup_steps=5,
        kl_warmup_steps=10,
        progress=False,
        init_from=str(tiny_run),
    )
    config = {"data": data_cfg.__dict__ | {"property_columns": []}}
    out = tmp_path / "grammar"
    res = train_and_evaluate(
        data_cfg, model_cfg, train_cfg, out, JsonlLogger(out / "metrics.jsonl"), config
    )
    assert res.step == 40 and np.isfinite(res.final_eval["val_recon"])
    model = load(out)
    assert model.engine.grammar
    ids = model.engine.decode_ids(latent_z(model), seed=0, greedy=False)
    ended = [s for s, r in zip(model.vocab.decode_selfies_batch(ids), ids, strict=True) if 2 in r]
    assert ended and not any(chem.selfies_repaired(s) for s in ended)
    mols = ["CCO", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O"]
    masked = model.log_likelihood(mols, k=4)
    free = copy.copy(model.codec)
    free.grammar = None  # the same parameters, the unconstrained decoder
    assert np.all(np.isfinite(masked))
    assert np.all(masked >= free.log_likelihood(mols, k=4)["log_likelihood"] - 1e-4)


def test_a_model_trained_under_a_ring_limit_samples_under_it(tiny_run, tmp_path):
    """model.max_ring: a branch trained on strings written small-ring-first (data.max_ring)
    under the ring-size mask records the limit, and samples under it unless told otherwise;
    without such data, or without the grammar, it is an error before any work."""
    from molvae.api import load
    from molvae.data import DataConfig
    from molvae.loggers import JsonlLogger
    from molvae.models.vae import ModelConfig
    from molvae.training import TrainConfig, train_and_evaluate

    data_cfg = DataConfig(limit=300, max_len=40, max_ring=6)
    model_cfg = ModelConfig(
        embed_dim=16, enc_hidden=32, latent_dim=8, dec_hidden=32, grammar=True, max_ring=6
    )
    train_cfg = TrainConfig(
        steps=40, batch_size=32, log_every=10, eval_every=40, ckpt_every=40, eval_size=64,
        warmup_steps=5, kl_warmup_steps=10, progress=False, init_from=str(tiny_run),
    )  # fmt: skip
    config = {"data": data_cfg.__dict__ | {"property_columns": []}}
    out = tmp_path / "ring6"
    res = train_and_evaluate(
        data_cfg, model_cfg, train_cfg, out, JsonlLogger(out / "metrics.jsonl"), config
    )
    assert res.step == 40 and np.isfinite(res.final_eval["val_recon"])  # no target masked out
    model = load(out)
    assert model.engine.max_ring == 6 and model.codec.grammar.max_ring == 6

    def largest(smiles):
        mols = [chem.mol_from_smiles(s) for s in smiles if s]
        return max(len(r) for m in mols for r in m.GetRingInfo().AtomRings())

    # (strict: a string cut off at max_len, never ended, may be repaired into anything)
    assert largest(model.sample(256, seed=1, strict=True)) <= 6
    assert largest(model.sample(256, seed=1, strict=True, max_ring=0)) > 6  # the limit lifted
    # likelihoods read molecules as the training data was written: a fused system whose
    # canonical string closes its 9-atom outer ring first scores like the others, and a
    # molecule with a larger ring than the limit cannot be read
    ll = model.log_likelihood(["NCC(=O)c1noc2ccc(Br)cc12", "CC(=O)Nc1ccc(Br)cc1"], k=4)
    assert np.all(np.isfinite(ll)) and abs(ll[0] - ll[1]) < 100
    with pytest.raises(ValueError, match="max_ring=6"):
        model.encode(["C1CCCCCCC1"])
    bad = dataclasses.replace(data_cfg, max_ring=0)
    with pytest.raises(ValueError, match="data.max_ring=6"):
        train_and_evaluate(bad, model_cfg, train_cfg, tmp_path / "x", None, config)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="max_ring"):
        ModelConfig(max_ring=7)  # without the grammar


def latent_z(model, n: int = 128) -> np.ndarray:
    from molvae.inference import latent

    return latent.prior(n, model.latent_dim, seed=0)


def _spy_on_steps(monkeypatch) -> tuple[list[bool], Counter]:
    """Record, per training step run, whether it was the masked step function, and count the
    step functions built (masked: True)."""
    from molvae.training import loop

    calls: list[bool] = []
    built: Counter = Counter()
    make = loop.make_train_step

    def spy(graphdef, cfg, grammar, max_len):
        built[grammar is not None] += 1
        step = make(graphdef, cfg, grammar, max_len)

        def counted(*args):
            calls.append(grammar is not None)
            return step(*args)

        return counted

    monkeypatch.setattr(loop, "make_train_step", spy)
    return calls, built


def test_grammar_from_step_trains_unmasked_before_it_and_masked_after(tmp_path, monkeypatch):
    """train.grammar_from_step: the masked cool-down as one run. The steps before it use the
    unmasked step function, the ones from it the masked one; without model.grammar it is an
    error."""
    from molvae.data import DataConfig
    from molvae.loggers import JsonlLogger
    from molvae.models.vae import ModelConfig
    from molvae.training import TrainConfig, train_and_evaluate

    calls, _ = _spy_on_steps(monkeypatch)
    data_cfg = DataConfig(limit=200, max_len=40)
    model_cfg = ModelConfig(embed_dim=16, enc_hidden=32, latent_dim=8, dec_hidden=32, grammar=True)
    train_cfg = TrainConfig(
        steps=6, batch_size=16, log_every=3, eval_every=6, ckpt_every=6, eval_size=32,
        warmup_steps=1, kl_warmup_steps=2, progress=False, grammar_from_step=4,
    )  # fmt: skip
    config = {"data": data_cfg.__dict__ | {"property_columns": []}}
    out = tmp_path / "switch"
    res = train_and_evaluate(
        data_cfg, model_cfg, train_cfg, out, JsonlLogger(out / "metrics.jsonl"), config
    )
    assert res.step == 6 and np.isfinite(res.final_eval["val_recon"])
    assert calls == [False] * 4 + [True] * 2
    free_cfg = dataclasses.replace(model_cfg, grammar=False)
    with pytest.raises(ValueError, match="grammar_from_step needs model.grammar"):
        train_and_evaluate(
            data_cfg, free_cfg, train_cfg, tmp_path / "x", JsonlLogger(tmp_path / "x.jsonl"), config
        )
    with pytest.raises(ValueError, match="grammar_from_step must be >= 0"):
        TrainConfig(grammar_from_step=-1)


def test_a_timed_run_replans_while_unmasked_and_masks_its_planned_tail(tmp_path, monkeypatch):
    """train.time_budget_s with a grammar tail: the plan is made again every timed window while
    the run is unmasked at a constant rate; the unmasked step is built (compiled) once, the
    masked one takes over at the final plan's grammar_from_step, and the rates logged follow
    the final plan."""
    import json

    from molvae.data import DataConfig
    from molvae.loggers import JsonlLogger
    from molvae.models.vae import ModelConfig
    from molvae.training import TrainConfig, loop, lr_schedule, train_and_evaluate

    calls, built = _spy_on_steps(monkeypatch)
    monkeypatch.setattr(loop, "PROBE_FROM", 5)
    monkeypatch.setattr(loop, "PROBE_STEPS", 20)
    clock = iter(np.arange(1e6) * 0.01)  # a machine on which each step takes 10 ms
    monkeypatch.setattr(loop, "_now", lambda: float(next(clock)))
    data_cfg = DataConfig(limit=200, max_len=40)
    model_cfg = ModelConfig(embed_dim=16, enc_hidden=32, latent_dim=8, dec_hidden=32, grammar=True)
    big = 10**6
    train_cfg = TrainConfig(
        steps=big, batch_size=16, log_every=10, eval_every=big, ckpt_every=big, eval_size=32,
        warmup_steps=1, kl_warmup_steps=2, progress=False, lr_schedule="wsd",
        lr_decay_steps=big // 5, grammar_from_step=big - big // 5, time_budget_s=4.0,
    )  # fmt: skip
    config = {"data": data_cfg.__dict__ | {"property_columns": []}}
    out = tmp_path / "timed"
    res = train_and_evaluate(
        data_cfg, model_cfg, train_cfg, out, JsonlLogger(out / "metrics.jsonl"), config
    )
    (meta,) = (out / "checkpoints").glob("*/meta/metadata")
    plan = json.loads(meta.read_text())["plan"]
    assert 25 < plan["grammar_from_step"] < plan["steps"] < big and res.step <= plan["steps"]
    assert plan["steps"] - plan["grammar_from_step"] == plan["lr_decay_steps"]
    assert built[False] == 1 and built[True] > 2  # re-planned; the unmasked step never rebuilt
    n_free = min(plan["grammar_from_step"], res.step)
    assert calls == [False] * n_free + [True] * (res.step - n_free)
    final = lr_schedule(dataclasses.replace(train_cfg, **plan))
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert rec["lr"] == pytest.approx(float(final(rec["step"])))
