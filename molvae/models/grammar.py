"""Grammar-constrained SELFIES decoding: at every step, the tokens that would make the SELFIES
decoder repair the string are masked out of the decoder's distribution.

The SELFIES decoder turns any string into a molecule, but some strings only by a repair: a bond
order cut to fit a valence, a ring closed onto a full atom, symbols after a saturated atom
ignored (`molvae.chem.selfies_repair` names them). A language model over SELFIES spends
probability on such strings, and their repaired molecules are unusual. This module runs the
decoder's derivation (selfies 2.x `_derive_mol_from_symbols`, as `chem._Derivation` replays it)
alongside generation, as a fixed-size state per row in JAX, and allows only the tokens after
which the string can still be finished without a repair:

- the first symbol is an atom without a bond prefix;
- an atom's bond order fits the state of the chain and the atom's own capacity;
- a branch leaves at least one bond to the chain it leaves (the decoder's own rule) and its
  length fits in the sequence;
- a ring closes onto an earlier atom that has the bond order free and is not bonded to the
  current atom yet (ring bonds are reserved when the ring is read, and the decoder makes them at
  the end);
- inside a branch, the chain is never saturated before the branch's symbols run out (the
  decoder would ignore the rest), and an atom a pending branch returns to keeps one bond free;
- the string ends (eos) only outside every branch and after at least one atom;
- optionally (`max_ring`, at sampling time), a ring bond is read only if the ring it closes
  has at most max_ring atoms. MOSES's filters reject rings of 8 or more atoms, and no MOSES
  molecule has one; but ~7% of MOSES's canonical strings first close a fused system's outer
  ring (9 or 10 atoms) and split it with a later ring bond, which this rule forbids, so it is
  not one to train under.

The masked distribution is p(x | z) renormalised over the allowed tokens at each step (as in
grammar VAEs, Kusner et al. 2017); nothing is resampled, and `chem.selfies_repair` stays the
judge: a string cut at max_len can still be repaired, and counts so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from selfies.grammar_rules import (
    get_index_from_selfies,
    process_atom_symbol,
    process_branch_symbol,
    process_ring_symbol,
)

from molvae.chem import MAX_RING

DEPTH = 16  # branch nesting tracked; deeper branches are masked out
RINGS = 8  # ring bonds tracked per atom (more than any bonding capacity SELFIES knows)
NEVER, ATOM, BRANCH, RING, EOS = range(5)
_MAIN_END = 1 << 30  # the main chain has no symbol budget


@struct.dataclass
class GrammarTables:
    """What each token is to the SELFIES grammar, (V,) int32 each, and the ring-size limit
    (static under jit: one compilation per limit)."""

    kind: jax.Array  # NEVER, ATOM, BRANCH, RING or EOS
    order: jax.Array  # bond order of an atom's bond prefix, a branch or a ring
    cap: jax.Array  # an atom's bonding capacity
    nidx: jax.Array  # index symbols after a branch or ring
    digit: jax.Array  # the token's value when read as an index symbol (0..15)
    # ring bonds that would close a ring of more atoms are masked out too (0: no limit; _near)
    max_ring: int = struct.field(pytree_node=False, default=0)


class GrammarState(NamedTuple):
    """The derivation so far, per row: (B,) scalars, (B, A) atoms, (B, DEPTH) open chains."""

    pos: jax.Array  # symbols read
    n: jax.Array  # atoms made
    depth: jax.Array  # open branches (0: on the main chain)
    ik: jax.Array  # index symbols pending for: 0 nothing, BRANCH or RING
    il: jax.Array  # index symbols still to read
    iv: jax.Array  # index value read so far
    io: jax.Array  # bond order of the pending branch or ring
    lost: jax.Array  # the mask emptied (never expected): the row decodes unmasked
    free: jax.Array  # per atom: capacity - bonds made - ring bonds reserved
    parent: jax.Array  # per atom: the earlier atom its chain bond goes to (-1: none)
    partners: jax.Array  # (B, A, RINGS) per atom: the atoms it closes rings with (-1: none)
    fs: jax.Array  # per open chain: the decoder's state (bonds it may still make)
    fp: jax.Array  # per open chain: its last atom
    fe: jax.Array  # per open chain: the symbol position where its budget ends


def grammar_tables(tokens: Sequence[str], eos_id: int, max_ring: int = 0) -> GrammarTables:
    """Tables for a vocabulary whose tokens (but eos and the other specials) are single SELFIES
    symbols; `max_ring` > 0 also masks out the ring bonds that would close a ring of more atoms.
    Raises ValueError for BPE tokens (several symbols), symbols SELFIES cannot read, or a
    max_ring other than 0 or 3..MAX_RING."""
    if max_ring and not 3 <= max_ring <= MAX_RING:
        raise ValueError(f"max_ring must be 0 (no limit) or 3..{MAX_RING}, got {max_ring}")
    rows = []
    for i, tok in enumerate(tokens):
        if i == eos_id:
            rows.append((EOS, 0, 0, 0, 0))
            continue
        if not (tok.startswith("[") and tok.endswith("]")) or tok.count("[") != 1:
            if i < 3:  # pad, bos: never sampled
                rows.append((NEVER, 0, 0, 0, 0))
                continue
            raise ValueError(
                f"grammar-constrained decoding needs one SELFIES symbol per token, got {tok!r} "
                "(a BPE vocabulary?)"
            )
        digit = get_index_from_selfies(tok)
        if (branch := process_branch_symbol(tok)) is not None:
            rows.append((BRANCH, branch[0], 0, branch[1], digit))
        elif (ring := process_ring_symbol(tok)) is not None:
            rows.append((RING, ring[0], 0, ring[1], digit))
        elif (atom := process_atom_symbol(tok)) is not None:
            (order, _), a = atom
            rows.append((ATOM, order, a.bonding_capacity, 0, digit))
        else:
            raise ValueError(f"SELFIES cannot read the token {tok!r}")
    cols = np.asarray(rows, np.int32).T
    return GrammarTables(*(jnp.asarray(c) for c in cols), max_ring=max_ring)


def init_state(batch: int, max_len: int) -> GrammarState:
    """Rows before their first symbol; max_len symbols at most (atoms <= symbols)."""
    a = max_len + 1
    zeros = jnp.zeros((batch,), jnp.int32)
    fe = jnp.zeros((batch, DEPTH), jnp.int32).at[:, 0].set(_MAIN_END)
    return GrammarState(
        pos=zeros,
        n=zeros,
        depth=zeros,
        ik=zeros,
        il=zeros,
        iv=zeros,
        io=zeros,
        lost=jnp.zeros((batch,), bool),
        free=jnp.zeros((batch, a), jnp.int32),
        parent=jnp.full((batch, a), -1, jnp.int32),
        partners=jnp.full((batch, a, RINGS), -1, jnp.int32),
        fs=jnp.zeros((batch, DEPTH), jnp.int32),
        fp=jnp.zeros((batch, DEPTH), jnp.int32),
        fe=fe,
    )


def _need(g: GrammarState) -> jax.Array:
    """Per atom: how many open branches below the current chain return to it with symbols
    still to read (each needs a bond left there to go on)."""
    a = g.free.shape[0]
    frames = jnp.arange(DEPTH)
    above = jnp.where(frames <= g.depth, g.fe, -1)  # a chain resumes after all above it end
    later = jax.lax.cummax(jnp.concatenate([above[1:], jnp.full(1, -1, above.dtype)]), reverse=True)
    resumes = (frames >= 1) & (frames < g.depth) & (g.fe > later)
    return jnp.zeros(a, jnp.int32).at[jnp.where(resumes, g.fp, a)].add(1, mode="drop")


def _near(g: GrammarState, src: jax.Array, max_ring: int) -> jax.Array:
    """(A,) bool: the atoms a ring bond from atom `src` may close onto without closing a ring
    of more than max_ring atoms (all, for max_ring 0): those at most max_ring - 1 bonds away.

    A ring bond between atoms d bonds apart closes a ring of d + 1 atoms, the smallest through
    the new bond. Distances are over the chain bonds made so far and the ring bonds read before
    (the decoder makes ring bonds at the end, in reading order, and atoms read later hang off
    the chain, so no later symbol shortens them). Every ring bond of a string so drawn closes a
    ring of at most max_ring atoms; those rings span the cycle space, so a smallest set of
    smallest rings (RDKit's, which MOSES's filters read) has none larger."""
    a = g.free.shape[0]
    if not max_ring:
        return jnp.ones(a, bool)
    reach = jnp.arange(a) == src
    has_parent = g.parent >= 0
    for _ in range(max_ring - 1):  # breadth-first, one bond further per round
        up = reach[jnp.clip(g.parent, 0)] & has_parent  # an atom whose parent is reached
        down = (
            jnp.zeros(a, jnp.int32)
            .at[jnp.where(has_parent, g.parent, a)]
            .add(reach.astype(jnp.int32), mode="drop")
        )  # an atom with a reached child
        ring = (reach[jnp.clip(g.partners, 0)] & (g.partners >= 0)).any(-1)
        reach = reach | up | (down > 0) | ring
    return reach


def _ring_targets(g: GrammarState, order: jax.Array, need: jax.Array, near: jax.Array) -> jax.Array:
    """(..., A) over ring index i (back = i + 1 atoms): may a ring of `order` (...,) close
    from the current atom onto the atom i + 1 before it? `near`: _near of the current atom."""
    a = g.free.shape[0]
    p = g.fp[g.depth]
    left = p - 1 - jnp.arange(a)
    at = jnp.clip(left, 0, a - 1)
    fits = g.free[at] - order[..., None] >= need[at]
    # bonded already (a ring would merge into the bond): an earlier atom is bonded to the current
    # one by the chain only as its parent (the chain's later atoms come after it), or by a ring
    bonded = (left == g.parent[p]) | (left[:, None] == g.partners[p][None, :]).any(-1)
    return (left >= 0) & fits & ~bonded & near[at]


def _row_mask(g: GrammarState, tab: GrammarTables) -> jax.Array:
    a = g.free.shape[0]
    max_len = a - 1
    s, p, end = g.fs[g.depth], g.fp[g.depth], g.fe[g.depth]
    first, budget, rem = g.n == 0, g.depth > 0, end - g.pos
    need = _need(g)
    near = _near(g, p, tab.max_ring)
    avail = jnp.minimum(s, g.free[p] - need[p])
    o, cap, nidx = tab.order, tab.cap, tab.nidx

    atom = jnp.where(
        first,
        o == 1,
        (o <= avail) & (o <= cap) & ~(budget & (rem > 1) & (cap - o < 1)),
    )
    branch = (
        ~first
        & (o <= s - 1)
        & (o <= g.free[p] - need[p] - budget.astype(jnp.int32))
        & (g.depth < DEPTH - 1)
        & (g.pos + nidx + 2 <= max_len)
    )
    # a ring of order k (1..3) with n index symbols (1..3) has a target: (3, 3), then per token
    targets = _ring_targets(g, jnp.arange(1, 4), need, near)  # (3, A)
    reach = jnp.arange(a)[None, :] < 16 ** jnp.arange(1, 4)[:, None]  # (3, A)
    has = (targets[:, None, :] & reach[None, :, :]).any(-1)  # (order, nidx)
    has_target = has[jnp.clip(o - 1, 0, 2), jnp.clip(nidx - 1, 0, 2)]
    dead = budget & (rem - 1 - nidx > 0) & (avail - o < 1)
    ring = ~first & (o <= avail) & ~dead & has_target
    symbol = jnp.select(
        [tab.kind == ATOM, tab.kind == BRANCH, tab.kind == RING, tab.kind == EOS],
        [atom, branch, ring, (g.depth == 0) & ~first],
        False,
    )

    # index symbols: digit d is allowed if some completion of the index is
    scale = 16 ** jnp.maximum(g.il - 1, 0)
    lo = (g.iv * 16 + jnp.arange(16)) * scale
    hi = lo + scale - 1
    branch_digit = lo <= max_len - (g.pos + g.il) - 1
    valid = _ring_targets(g, g.io, need, near)  # (A,)
    counts = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(valid.astype(jnp.int32))])
    ring_digit = counts[jnp.clip(hi + 1, 0, a)] > counts[jnp.clip(lo, 0, a)]
    readable = (tab.kind != EOS) & (tab.kind != NEVER)  # any symbol reads as a digit
    digit = jnp.where(g.ik == BRANCH, branch_digit, ring_digit)[tab.digit] & readable

    return jnp.where(g.ik == 0, symbol, digit)


def allowed(g: GrammarState, tab: GrammarTables) -> jax.Array:
    """(B, V) bool: the tokens each row may emit next without a repair. A row whose mask is
    empty (not expected; tests/test_grammar.py) is `lost`: mask_logits lets it decode freely."""
    return jax.vmap(_row_mask, in_axes=(0, None))(g, tab)


def mask_logits(
    g: GrammarState, tab: GrammarTables, logits: jax.Array
) -> tuple[GrammarState, jax.Array]:
    """logits (B, V) with the disallowed tokens at -inf, and the state with `lost` updated."""
    m = allowed(g, tab)
    lost = g.lost | ~m.any(-1)
    return g._replace(lost=lost), jnp.where(m | lost[:, None], logits, -jnp.inf)


def _pair(partners: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """partners with a ring between atoms a and b recorded on both (in each one's first free
    slot)."""
    for x, y in ((a, b), (b, a)):
        slot = jnp.argmax(partners[x] < 0)
        partners = partners.at[x, slot].set(y)
    return partners


def _pop(g: GrammarState) -> GrammarState:
    """Close every innermost branch whose symbols have all been read."""
    idx = g.depth - jnp.arange(DEPTH)
    ended = (idx >= 1) & (g.pos >= g.fe[jnp.clip(idx, 0, DEPTH - 1)])
    return g._replace(depth=g.depth - jnp.cumprod(ended).sum())


def _row_advance(g: GrammarState, token: jax.Array, tab: GrammarTables) -> GrammarState:
    kind, o, cap, nidx = tab.kind[token], tab.order[token], tab.cap[token], tab.nidx[token]
    d, p = g.depth, g.fp[g.depth]
    pos = g.pos + 1
    first = g.n == 0

    # an atom
    made = jnp.where(first, 0, o)
    new = jnp.minimum(g.n, g.free.shape[0] - 1)
    free = g.free.at[p].add(-made).at[new].set(cap - made)
    parent = g.parent.at[new].set(jnp.where(first, -1, p))
    at_atom = _pop(
        g._replace(
            pos=pos,
            n=g.n + 1,
            free=free,
            parent=parent,
            fs=g.fs.at[d].set(cap - made),
            fp=g.fp.at[d].set(new),
        )
    )
    # a branch or ring symbol: its index symbols follow
    opened = g._replace(pos=pos, ik=kind, il=nidx, iv=jnp.int32(0), io=o)
    # an index symbol
    iv, il = g.iv * 16 + tab.digit[token], g.il - 1
    reading = g._replace(pos=pos, iv=iv, il=il)
    push = jnp.minimum(d + 1, DEPTH - 1)
    branched = reading._replace(
        ik=jnp.int32(0),
        depth=push,
        fs=g.fs.at[d].add(-g.io).at[push].set(g.io),
        fp=g.fp.at[push].set(p),
        fe=g.fe.at[push].set(pos + iv + 1),
    )
    left = jnp.clip(p - iv - 1, 0, g.free.shape[0] - 1)
    ringed = _pop(
        reading._replace(
            ik=jnp.int32(0),
            free=g.free.at[left].add(-g.io).at[p].add(-g.io),
            partners=_pair(g.partners, left, p),
            fs=g.fs.at[d].add(-g.io),
        )
    )
    index_done = jnp.where(g.ik == BRANCH, 0, 1)
    case = jnp.where(
        g.ik != 0,
        jnp.where(il > 0, 3, 4 + index_done),  # 3 reading, 4 branched, 5 ringed
        jnp.where(kind == ATOM, 1, jnp.where((kind == BRANCH) | (kind == RING), 2, 0)),
    )
    return jax.tree.map(
        lambda *xs: jnp.select([case == i for i in range(1, 6)], list(xs[1:]), xs[0]),
        g,
        at_atom,
        opened,
        reading,
        branched,
        ringed,
    )


def advance(g: GrammarState, token: jax.Array, tab: GrammarTables) -> GrammarState:
    """The state after each row emits token (B,); eos and pad leave a row as it is."""
    return jax.vmap(_row_advance, in_axes=(0, 0, None))(g, token, tab)


def sequence_masks(tab: GrammarTables, targets: jax.Array, max_len: int) -> jax.Array:
    """(B, L, V) bool: the tokens allowed at each position of teacher-forced targets (B, L)
    (symbols, eos, then pad; L <= max_len + 1), as generation up to max_len symbols allows
    them; every position after eos allows everything."""
    batch = targets.shape[0]
    g0 = init_state(batch, max_len)

    def body(carry, t):
        g, done = carry
        m = allowed(g, tab) | done[:, None]
        done = done | (t == 2) | (t == 0)
        return (advance(g, jnp.where(done, 0, t), tab), done), m

    _, masks = jax.lax.scan(body, (g0, jnp.zeros(batch, bool)), targets.T)
    return masks.transpose(1, 0, 2)


def restrict(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Logits with disallowed tokens at a large negative value (not -inf: a disallowed target,
    never expected, costs a large finite loss rather than nan)."""
    return jnp.where(mask, logits, jnp.asarray(-1e9, logits.dtype))
