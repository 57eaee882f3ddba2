"""Property-based tests (hypothesis): random strings and random SELFIES never crash the
vocabulary, the chemistry helpers or the data loader, and nothing is lost without a count."""

import string

import numpy as np
import pytest
import selfies as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from molvae import chem
from molvae.data import DataConfig, load_dataset
from molvae.vocab import UnknownSymbolError, Vocab, split_all

ALPHABET = sorted(sf.get_semantic_robust_alphabet())
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
smiles_like = st.text(
    alphabet=string.ascii_letters + string.digits + "()[]=#@+-/\\%.:*", max_size=40
)


@SETTINGS
@given(smiles_like)
def test_chemistry_helpers_never_crash_on_random_strings(s):
    can = chem.canonical(s)
    assert can is None or chem.canonical(can) == can  # canonical form is a fixed point
    assert chem.is_valid(s) == (can is not None)
    row = chem.properties([s], ("qed", "plogp"))
    assert len(row) == 1


@SETTINGS
@given(st.lists(st.sampled_from(ALPHABET), max_size=30))
def test_any_selfies_decodes_to_a_valid_molecule_or_empty(symbols):
    smiles = chem.selfies_to_smiles("".join(symbols))
    assert smiles == "" or chem.canonical(smiles) == smiles


@SETTINGS
@given(
    st.lists(st.sampled_from(ALPHABET[:20]), min_size=1, max_size=30),
    st.sampled_from(ALPHABET[20:]),
)
def test_vocabulary_round_trip_and_unknown_symbols(symbols, outsider):
    s = "".join(symbols)
    vocab = Vocab.fit([s])
    ids = vocab.encode(s)
    assert vocab.decode_selfies(ids) == s and min(ids) >= 3
    tokens, lengths = vocab.encode_batch([s], max_len=len(symbols))
    assert lengths[0] == len(symbols) + 1 and vocab.decode_selfies(tokens[0]) == s
    assert vocab.decode_selfies_batch(tokens) == [s]
    try:
        vocab.encode(s + outsider, "the-molecule")
        assert outsider in symbols
    except UnknownSymbolError as e:
        assert outsider in str(e) and "the-molecule" in str(e)


selfies_like = st.lists(
    st.one_of(st.sampled_from([*ALPHABET[:12], ".", "[C]", "[=Branch1]"]),
              st.text(alphabet="[]C=.#1 \n", max_size=4)),  # malformed bits too
    max_size=12,
).map("".join)  # fmt: skip


@SETTINGS
@given(st.lists(selfies_like, max_size=6))
def test_whole_batch_split_is_split_selfies_or_declines(strings):
    """vocab.split_all, the fast path of Vocab.fit and encode_batch, gives sf.split_selfies's
    symbols and counts for every string, or declines (None) and the exact path decides."""
    got = split_all(strings)
    if got is None:  # only where a string is not a plain run of symbols and dots
        assert any(not _plain(s) for s in strings)
        return
    rows = [list(sf.split_selfies(s)) for s in strings]
    assert got[0] == [sym for row in rows for sym in row]
    assert got[1].tolist() == [len(row) for row in rows]


def _plain(s: str) -> bool:
    import re

    return re.fullmatch(r"(\[[^\[\]\s]*\]\.?)*", s) is not None  # a dot right after a symbol


@SETTINGS
@given(st.lists(st.lists(st.sampled_from(ALPHABET[:15]), max_size=8).map("".join), min_size=1,
                max_size=8), st.sampled_from(ALPHABET[15:]), st.integers(0, 7))  # fmt: skip
def test_encode_batch_names_the_molecule_with_an_unknown_symbol(strings, outsider, at):
    vocab = Vocab.fit(strings)
    at %= len(strings)
    bad = [s + outsider if i == at else s for i, s in enumerate(strings)]
    names = [f"mol{i}" for i in range(len(strings))]
    if outsider in vocab.tokens:
        return
    with pytest.raises(UnknownSymbolError, match=f"mol{at}'"):
        vocab.encode_batch(bad, 40, names)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.one_of(smiles_like, st.sampled_from(["CCO", "c1ccccc1", "CCN", "", "  "])),
        min_size=1,
        max_size=30,
    )
)
def test_data_loader_accounts_for_every_line(tmp_path, monkeypatch, lines):
    monkeypatch.setenv("MOLVAE_CACHE", str(tmp_path / "cache"))
    lines = [ln.replace("\n", "").replace("\r", "").replace(",", "") for ln in lines]
    path = tmp_path / "random.smi"
    path.write_text("\n".join(lines) + "\n")
    if not any(chem.canonical(ln.strip()) for ln in lines):
        return  # nothing valid: the loader raises DataError instead (tested in test_data)
    ds = load_dataset(DataConfig(source="csv", path=str(path), test_fraction=0.0, cache=False))
    stats = ds.stats["total"]
    lost = (
        stats["read"]
        - stats["kept"]
        - sum(
            stats.get(r, 0)
            for r in ("empty", "invalid_smiles", "selfies_encode_failed", "too_long", "duplicate")
        )
    )
    assert lost == 0 and len(ds.report) == stats["read"] - stats["kept"]


@SETTINGS
@given(st.lists(st.lists(st.integers(0, 12), min_size=6, max_size=6), min_size=1, max_size=8))
def test_batch_decoding_stops_and_skips_like_one_row_at_a_time(rows):
    """Any ids, eos (2) and pad (0) anywhere, bos (1) skipped: the same strings either way."""
    vocab = Vocab.fit(["".join(ALPHABET[:10])])
    ids = np.array(rows, np.int32)

    def one_row(row):  # the definition, token by token
        out = []
        for i in row:
            if i in (vocab.eos_id, vocab.pad_id):
                break
            if i != vocab.bos_id:
                out.append(vocab.tokens[i])
        return "".join(out)

    assert vocab.decode_selfies_batch(ids) == [one_row(r) for r in ids.tolist()]
    assert [vocab.decode_selfies(r) for r in ids] == [one_row(r) for r in ids.tolist()]


BPE_CORPUS = [chem.smiles_to_selfies(chem.canonical(s)) for s in (
    "CCO", "CCCCO", "c1ccccc1", "Cc1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "CCN(CC)CC",
    "O=C(O)c1ccccc1", "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
)]  # fmt: skip


def test_bpe_learns_the_most_frequent_pair_first_deterministically():
    """Hand count: [C][C] is the most frequent adjacent pair of ['[C][C][C][C]', '[C][C][O]']
    (3 + 1), then [C][C] + [C][C] (the run of four joined twice) ties [C][C] + [O] at 1: the
    tie goes to the larger pair text."""
    from molvae.vocab import learn_merges

    merges = learn_merges(["[C][C][C][C]", "[C][C][O]"] * 2, 2)
    assert merges[0] == ("[C]", "[C]")
    assert merges[1] == max([("[C][C]", "[C][C]"), ("[C][C]", "[O]")])
    assert learn_merges(BPE_CORPUS, 20) == learn_merges(list(reversed(BPE_CORPUS)), 20)


@SETTINGS
@given(
    mols=st.lists(st.sampled_from(BPE_CORPUS), min_size=1, max_size=6), n_merges=st.integers(0, 30)
)
def test_bpe_tokens_decode_to_the_same_selfies_and_are_never_longer(
    mols, n_merges, tmp_path_factory
):
    """Any number of merges: ids decode back to the exact SELFIES string, sequences are no
    longer than one token per symbol, and the vocabulary survives a save/load round trip."""
    plain = Vocab.fit(BPE_CORPUS)
    bpe = Vocab.fit(BPE_CORPUS, bpe_merges=n_merges)
    t0, l0 = plain.encode_batch(mols, 72)
    t1, l1 = bpe.encode_batch(mols, 72)
    assert bpe.decode_selfies_batch(t1) == mols == plain.decode_selfies_batch(t0)
    assert np.all(l1 <= l0)
    # shorter exactly where a learned pair occurs in the molecule
    pairs = set(bpe.merges[:1])
    for s, a, b in zip(mols, l0, l1, strict=True):
        sym = list(sf.split_selfies(s))
        if pairs & set(zip(sym, sym[1:], strict=False)):
            assert b < a
    path = tmp_path_factory.mktemp("vocab") / "vocab.json"
    bpe.save(path)
    assert Vocab.load(path) == bpe


@SETTINGS
@given(
    mols=st.lists(
        st.lists(st.sampled_from(["[C]", "[O]", "[N]", "[=C]"]), min_size=0, max_size=12).map(
            "".join
        ),
        min_size=1,
        max_size=8,
    ),
    n_merges=st.integers(0, 12),
)
def test_bpe_on_the_whole_batch_equals_one_molecule_at_a_time(mols, n_merges):
    """encode_batch merges every molecule at once (molvae.vocab.merge_ids); it must give each
    row exactly the ids of encode (apply_merges), including runs like [C][C][C] under the merge
    ([C], [C]), empty molecules, and pairs that straddle two molecules (never merged)."""
    corpus = ["[C][C][C][C][O]", "[C][C][N][=C][C][C]", "[O][O][O][C][C]"] * 3
    vocab = Vocab.fit(corpus, bpe_merges=n_merges)
    tokens, lengths = vocab.encode_batch(mols, 12)
    for row, n, s in zip(tokens, lengths, mols, strict=True):
        ids = vocab.encode(s)
        assert n == len(ids) + 1
        assert row[: n + 1].tolist() == [vocab.bos_id, *ids, vocab.eos_id]
        assert not row[n + 1 :].any()


def test_bpe_vocab_names_an_unknown_symbol():
    bpe = Vocab.fit(BPE_CORPUS, bpe_merges=10)
    with pytest.raises(UnknownSymbolError, match=r"\[Xe\]"):
        bpe.encode("[C][C][Xe]")
    with pytest.raises(UnknownSymbolError, match=r"\[Xe\]"):
        bpe.encode_batch(["[C][O]", "[C][C][Xe]"], 72)
