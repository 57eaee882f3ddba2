"""Sample quality per unit of compute: one fixed protocol to score checkpoints, learning curves."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from molvae import chem, data, fetch
from molvae.api import load
from molvae.evaluation import chemnet, metrics
from molvae.inference import latent
from molvae.store import names
from molvae.store.checkpoints import checkpoint_meta, checkpoint_steps

log = logging.getLogger(__name__)

QUALITY_JSONL = "quality.jsonl"
PROTOCOL_VERSION = 1
# How strict decoding decides that a sample was repaired (chem.selfies_repaired). Rows scored
# before it was recorded used "roundtrip" (encoder(decoder(s)) != s), which also rejected strings
# the decoder writes faithfully in another atom order; rescore_strict updates them.
STRICT_RULE = "derivation"
# Columns of the curves and tables, in order; strict_* are the same metrics with strict SELFIES
# decoding (a string the SELFIES decoder had to repair counts as invalid).
CURVE_METRICS = (
    "FCD/Test",
    "SNN/Test",
    "Frag/Test",
    "Scaf/TestSF",
    "Filters",
    "IntDiv",
    "valid",
    "unique@10000",
    "strict_valid",
    "strict_FCD/Test",
    "strict_Filters",
    "recon",
    "nll",
    "rate",
    "distortion",
)


def reference_subset(n: int, seed: int = 0) -> Path:
    """A folder with test.csv and test_scaffolds.csv: n molecules drawn (seeded) from each full
    MOSES test split, written once under cache_dir()/quality_ref/. Its statistics are cached by
    metrics.reference_stats like any reference."""
    folder = fetch.cache_dir() / "quality_ref" / f"v{PROTOCOL_VERSION}-n{n}-seed{seed}"
    if (folder / "done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, path in data.moses_files().items():
        if split == "train":
            continue
        smiles = data.read_smiles_file(path)["smiles"]
        smiles = smiles[smiles != ""].to_numpy()
        pick = np.sort(rng.choice(len(smiles), size=min(n, len(smiles)), replace=False))
        pd.DataFrame({"SMILES": smiles[pick]}).to_csv(folder / f"{split}.csv", index=False)
    (folder / "done").write_text("ok\n")
    return folder


def score_model(
    model,
    reference: Path,
    held_out: Sequence[str],
    n: int = 10000,
    seed: int = 0,
    iw_k: int = 16,
    n_jobs: int | None = None,
    grammar: bool | None = None,
    max_ring: int | None = None,
) -> dict[str, Any]:
    """The protocol for one model: n prior samples at temperature 1, scored with the MOSES suite
    against `reference` both as sampled and with strict SELFIES decoding; greedy reconstruction
    of held_out molecules from their posterior means; their importance-weighted NLL bound.
    grammar: sample with grammar-constrained decoding (None: as the model was trained);
    max_ring: under it, the ring-size limit (None: as trained; models.grammar)."""
    grammar = (model.engine.grammar if grammar is None else grammar) or bool(max_ring)
    selfies, mean_len = _prior_samples(model, n, seed, grammar, max_ring)
    smiles = chem.parallel_map(chem.selfies_to_smiles, selfies, n_jobs=n_jobs)
    with chemnet.memoized():  # the strict samples are a subset: one ChemNet pass for both
        out = metrics.evaluate(smiles, reference=reference, n_jobs=n_jobs)
        out.update(_strict_scores(selfies, smiles, reference, n_jobs))
    out["sample_len"], out["grammar"] = mean_len, bool(grammar)
    if max_ring is not None or model.engine.max_ring:
        out["max_ring"] = model.engine.max_ring if max_ring is None else max_ring
    held_out = [s for s, ok in zip(held_out, model.encodable(held_out), strict=True) if ok]
    if held_out:
        rec = model.reconstruct(list(held_out))
        canon = [chem.canonical(s) for s in held_out]
        out["recon"] = float(np.mean([a == b for a, b in zip(rec, canon, strict=True)]))
        ll = model.log_likelihood(list(held_out), k=iw_k, details=True)
        out["nll"] = float(-np.mean(ll["log_likelihood"]))
        out["rate"] = float(np.mean(ll["rate"]))
        out["distortion"] = float(np.mean(ll["distortion"]))
    return out


def _prior_samples(
    model, n: int, seed: int, grammar: bool | None = None, max_ring: int | None = None
) -> tuple[list[str], float]:
    """The protocol's n prior samples at temperature 1 (SELFIES) and their mean length in
    tokens, which identifies them when a score is revisited."""
    z = latent.prior(n, model.latent_dim, seed)
    ids = model.engine.decode_ids(
        z, seed + 1, 1.0, greedy=False, grammar=grammar, max_ring=max_ring
    )
    return model.vocab.decode_selfies_batch(ids), float(np.mean([(r != 0).sum() for r in ids]))


def _strict_scores(
    selfies: Sequence[str], smiles: Sequence[str], reference: Path, n_jobs: int | None
) -> dict[str, Any]:
    """The MOSES suite on the samples the SELFIES decoder did not repair (the others count as
    invalid), the repaired fraction, and the rule that decided (STRICT_RULE)."""
    repaired = np.array(chem.parallel_map(chem.selfies_repaired, selfies, n_jobs=n_jobs), bool)
    strict = ["" if r else s for s, r in zip(smiles, repaired, strict=True)]
    scores = metrics.evaluate(strict, reference=reference, n_jobs=n_jobs)
    out = {f"strict_{k}": v for k, v in scores.items()}
    return out | {"repaired": float(repaired.mean()), "strict_rule": STRICT_RULE}


def rescore_strict(
    model, rec: dict[str, Any], reference: Path, n_jobs: int | None = None
) -> dict[str, Any]:
    """A score recorded under an older strict rule, with its strict metrics recomputed under
    STRICT_RULE on the same samples (redrawn from the protocol's seeds and checked against the
    recorded mean length); the old values stay in the row as roundtrip_strict_*."""
    protocol = rec["protocol"]
    selfies, mean_len = _prior_samples(
        model, protocol["n"], protocol["seed"], rec.get("grammar"), rec.get("max_ring")
    )
    if "sample_len" in rec and not math.isclose(mean_len, rec["sample_len"], abs_tol=1e-6):
        raise RuntimeError(
            f"{rec['run']} step {rec['step']}: the redrawn samples differ from the scored ones "
            f"(mean length {mean_len} against {rec['sample_len']}); score it afresh"
        )
    smiles = chem.parallel_map(chem.selfies_to_smiles, selfies, n_jobs=n_jobs)
    new = _strict_scores(selfies, smiles, reference, n_jobs)
    old = {f"roundtrip_{k}": rec[k] for k in new if k.startswith("strict_") and k in rec}
    if "repaired" in rec:
        old["roundtrip_repaired"] = rec["repaired"]
    return rec | old | new


def held_out_molecules(n: int, seed: int = 0) -> list[str]:
    """n molecules drawn (seeded) from the MOSES test split, which no arm trains on."""
    smiles = data.read_smiles_file(data.moses_files()["test"])["smiles"]
    smiles = smiles[smiles != ""].to_numpy()
    rng = np.random.default_rng(seed + 1)
    return [str(s) for s in smiles[np.sort(rng.choice(len(smiles), n, replace=False))]]


def read_scores(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / QUALITY_JSONL
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _update_strict(
    path: Path,
    protocol: dict[str, Any],
    load_model,
    runs: set[str] | None = None,
    reference: Path | None = None,
) -> None:
    """Rescore, in place, the rows of a scores file under `protocol` (and of `runs`, if given)
    whose strict metrics an older rule decided (rescore_strict)."""
    if not path.exists():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    stale = [
        i
        for i, r in enumerate(rows)
        if r.get("protocol") == protocol
        and r.get("strict_rule") != STRICT_RULE
        and (runs is None or r["run"] in runs)
    ]
    if not stale:
        return
    if reference is None:
        reference = reference_subset(protocol["ref_n"], protocol["seed"])
    for i in stale:
        rows[i] = rescore_strict(load_model(rows[i]), rows[i], reference)
        log.info(
            "%s step %d: strict valid %.3f (round-trip rule %.3f), strict FCD/Test %.3f (%.3f)",
            rows[i]["run"],
            rows[i]["step"],
            rows[i]["strict_valid"],
            rows[i].get("roundtrip_strict_valid", math.nan),
            rows[i]["strict_FCD/Test"],
            rows[i].get("roundtrip_strict_FCD/Test", math.nan),
        )
        tmp = path.with_suffix(".tmp")  # rewrite after each row: an interruption loses nothing
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(path)


def score_run(
    run_dir: Path,
    protocol: dict[str, Any],
    steps: Sequence[int] | None = None,
    every: int = 1,
    n_jobs: int | None = None,
    reference: Path | None = None,
    held_out: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Score the checkpoints of a run not scored yet under `protocol` (n, ref_n, recon_n, iw_k,
    seed); each score is appended to run_dir/quality.jsonl with the checkpoint's CPU seconds
    and molecules seen. Scores whose strict metrics an older rule decided are rescored first
    (rescore_strict). Returns every score of the run under this protocol. reference and
    held_out default to the protocol's MOSES subsets (reference_subset, held_out_molecules)."""

    run_dir = Path(run_dir)
    _update_strict(
        run_dir / QUALITY_JSONL,
        protocol,
        lambda rec: load(run_dir, step=rec["step"]),
        reference=reference,
    )
    have = {r["step"] for r in read_scores(run_dir) if r.get("protocol") == protocol}
    all_steps = checkpoint_steps(run_dir)
    todo = all_steps[::every] + all_steps[-1:] if all_steps else []
    if steps is not None:
        todo = [s for s in all_steps if s in set(steps)]
    todo = sorted(set(todo) - have)
    if todo:
        if reference is None:
            reference = reference_subset(protocol["ref_n"], protocol["seed"])
        if held_out is None:
            held_out = held_out_molecules(protocol["recon_n"], protocol["seed"])
        info = json.loads((run_dir / names.RUN_JSON).read_text())
        batch = info.get("config", {}).get("train", {}).get("batch_size", math.nan)
    for step in todo:
        meta = checkpoint_meta(run_dir, step)
        model = load(run_dir, step=step)
        scores = score_model(
            model,
            reference,
            held_out,
            n=protocol["n"],
            seed=protocol["seed"],
            iw_k=protocol["iw_k"],
            n_jobs=n_jobs,
        )
        rec = {
            "run": run_dir.name,
            "step": step,
            "cpu_s": meta.get("cpu_s", math.nan),
            "mols_seen": meta.get("mols_seen", step * batch),  # older checkpoints lack it
            "protocol": protocol,
            **scores,
        }
        with (run_dir / QUALITY_JSONL).open("a") as f:
            f.write(json.dumps(rec) + "\n")
        log.info(
            "%s step %d (%.0f CPU s): FCD/Test %.3f, strict valid %.3f, Filters %.3f, recon %.3f",
            run_dir.name,
            step,
            rec["cpu_s"],
            scores["FCD/Test"],
            scores["strict_valid"],
            scores["Filters"],
            scores.get("recon", math.nan),
        )
    return [r for r in read_scores(run_dir) if r.get("protocol") == protocol]


def table(scores: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per (run, step) with CPU seconds, molecules seen and the curve metrics."""
    rows = [
        {"run": r["run"], "step": r["step"], "cpu_s": r["cpu_s"], "mols_seen": r["mols_seen"]}
        | {k: r.get(k, math.nan) for k in CURVE_METRICS}
        for r in scores
    ]
    return pd.DataFrame(rows).sort_values(["run", "step"]).reset_index(drop=True)


def plot_curves(df: pd.DataFrame, path: Path) -> Path:
    """Learning curves: FCD, Filters, strict validity and reconstruction against CPU hours and
    molecules seen, one line per run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [("FCD/Test", True), ("Filters", False), ("strict_valid", False), ("recon", False)]
    fig = Figure(figsize=(4 * len(panels), 7), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(panels), squeeze=False)
    for col, (name, logy) in enumerate(panels):
        for row, x in enumerate(("cpu_h", "mols_seen")):
            ax = axes[row][col]
            for run, g in df.groupby("run"):
                if (g["step"] < 0).all():  # a finished model: a reference line
                    ax.axhline(g[name].iloc[0], ls="--", color="gray", lw=1, label=run)
                    continue
                xs = g["cpu_s"] / 3600 if x == "cpu_h" else g["mols_seen"]
                ax.plot(xs, g[name], marker="o", ms=3, label=run)
            ax.set_xlabel("CPU hours (process time)" if x == "cpu_h" else "molecules seen")
            ax.set_ylabel(name)
            if logy:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.print_png(str(path))
    return path


def markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A pandas table as a GitHub markdown table (no extra dependency)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "—" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def score_fixed(
    name: str, protocol: dict[str, Any], out: Path, n_jobs: int | None = None
) -> dict[str, Any]:
    """Score a finished model (a run folder or 'pretrained:NAME') once under `protocol`; cached
    in out/quality_fixed.jsonl. Its row has no CPU time or molecules seen. NAME@grammar: its
    prior samples drawn with grammar-constrained decoding (models.grammar), a row of its own;
    NAME@ringN: the same with the ring-size limit max_ring=N (3..12)."""

    model_name, _, mode = name.partition("@")
    ring = re.fullmatch(r"ring(\d+)", mode)
    if mode not in ("", "grammar") and not (ring and 3 <= int(ring[1]) <= chem.MAX_RING):
        raise ValueError(
            f"{name}: the decoding suffixes are @grammar and @ringN (N = 3..{chem.MAX_RING})"
        )
    path = Path(out) / "quality_fixed.jsonl"
    _update_strict(path, protocol, lambda rec: load(rec["run"].partition("@")[0]), runs={name})
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec["run"] == name and rec["protocol"] == protocol:
                return rec
    model = load(model_name)
    scores = score_model(
        model,
        reference_subset(protocol["ref_n"], protocol["seed"]),
        held_out_molecules(protocol["recon_n"], protocol["seed"]),
        n=protocol["n"],
        seed=protocol["seed"],
        iw_k=protocol["iw_k"],
        n_jobs=n_jobs,
        grammar=True if mode else None,
        max_ring=int(ring[1]) if ring else None,
    )
    rec = {"run": name, "step": -1, "cpu_s": math.nan, "mols_seen": math.nan}
    rec |= {"protocol": protocol, **scores}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    return rec


def plot_rate_distortion(df: pd.DataFrame, path: Path) -> Path:
    """Each run's last checkpoint in two panels: rate against distortion (bits per held-out
    molecule), each point labelled with the run and coloured by its FCD/Test (how much the latent
    code carries against how realistic the prior samples are); and FCD/Test and greedy
    reconstruction against the rate (what a bit of latent buys and costs)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    last = df.groupby("run").tail(1).sort_values("rate")
    bits = 1 / math.log(2)
    rate = last["rate"] * bits
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax, ax_fcd = fig.subplots(1, 2)
    sc = ax.scatter(rate, last["distortion"] * bits, c=last["FCD/Test"], cmap="viridis")
    label = {"fontsize": 7, "xytext": (4, 4), "textcoords": "offset points"}
    for row in last.to_dict("records"):
        x = row["rate"] * bits
        ax.annotate(
            f"{row['run']} (FCD {row['FCD/Test']:.2f})", (x, row["distortion"] * bits), **label
        )
        ax_fcd.annotate(row["run"], (x, row["FCD/Test"]), **label)
    fig.colorbar(sc, ax=ax, label="FCD/Test")
    ax.set_xlabel("rate: KL(q(z|x) || p(z)), bits")
    ax.set_ylabel("distortion: E_q[-log p(x|z)], bits")
    ax.set_title("rate and distortion of held-out molecules", fontsize=10)
    ax.grid(alpha=0.3)
    ax_fcd.plot(rate, last["FCD/Test"], "o", color="tab:blue", label="FCD/Test (left)")
    ax_fcd.set_xlabel("rate, bits")
    ax_fcd.set_ylabel("FCD/Test (prior samples)", color="tab:blue")
    ax_fcd.grid(alpha=0.3)
    ax_rec = ax_fcd.twinx()
    ax_rec.plot(rate, last["recon"], "s", color="tab:red", label="greedy reconstruction (right)")
    ax_rec.set_ylabel("greedy reconstruction (held-out)", color="tab:red")
    ax_rec.set_ylim(bottom=0)
    ax_fcd.set_title("what the rate buys and costs", fontsize=10)
    handles = ax_fcd.get_legend_handles_labels()[0] + ax_rec.get_legend_handles_labels()[0]
    ax_fcd.legend(handles=handles, fontsize=7, loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.print_png(str(path))
    return path


def validation_table(run_dirs: Sequence[Path]) -> pd.DataFrame:
    """The validation records of each run's metrics.jsonl (free at every train.eval_every):
    run, step, cpu_s, mols_seen and the val_* metrics."""
    rows = []
    for run in map(Path, run_dirs):
        path = run / names.METRICS_JSONL
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if "val_elbo" in rec and "cpu_s" in rec:
                rows.append({"run": run.name} | rec)
    return pd.DataFrame(rows)


def plot_validation(df: pd.DataFrame, path: Path) -> Path:
    """Validation ELBO, KL and greedy reconstruction of held-out molecules against CPU hours."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = ("val_elbo", "val_kl", "val_recon_acc")
    fig = Figure(figsize=(4 * len(panels), 3.5), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, name in zip(axes, panels, strict=True):
        for run, g in df.groupby("run"):
            ax.plot(g["cpu_s"] / 3600, g[name], marker=".", label=run)
        ax.set_xlabel("CPU hours (process time)")
        ax.set_ylabel(name + (" (nats)" if name != "val_recon_acc" else ""))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.print_png(str(path))
    return path


# Columns of the compute-scaling table: the last checkpoint's quality-protocol scores beside the
# run's full MOSES-protocol metrics.json (experiments/evaluate.py reference=moses).
SCALING_MOSES = ("FCD/Test", "FCD/TestSF", "SNN/Test", "Scaf/Test", "Filters", "Novelty")


def scaling_table(run_dirs: Sequence[Path], recipe: str = "") -> pd.DataFrame:
    """One row per finished run of one recipe trained for different lengths: the recipe's name
    (`recipe`, the figure's legend), its last scored checkpoint (step, CPU seconds, molecules
    seen, quality-protocol FCD/Test as `q_FCD/Test` and held-out NLL bound in nats as `q_nll`)
    and its MOSES-protocol metrics (metrics.json of 30,000 prior samples against the full test
    sets).

    Raises:
      FileNotFoundError: a run has no quality.jsonl scores or no metrics.json.
    """
    rows = []
    for run in map(Path, run_dirs):
        scores = read_scores(run)
        if not scores:
            raise FileNotFoundError(f"{run}: no {QUALITY_JSONL} (score it: experiments/quality.py)")
        path = run / names.EVAL_JSON
        if not path.exists():
            raise FileNotFoundError(
                f"{run}: no {names.EVAL_JSON} (experiments/sample.py n=30000, then "
                "experiments/evaluate.py reference=moses metrics=all)"
            )
        moses = json.loads(path.read_text())
        last = max(scores, key=lambda r: r["step"])
        rows.append(
            {"recipe": recipe, "run": run.name, "step": last["step"], "cpu_s": last["cpu_s"]}
            | {"mols_seen": last["mols_seen"], "q_FCD/Test": last["FCD/Test"]}
            | {"q_nll": last.get("nll", math.nan)}
            | {k: moses.get(k, math.nan) for k in SCALING_MOSES}
        )
    return pd.DataFrame(rows).sort_values("cpu_s").reset_index(drop=True)


def power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of y = c * x**a in log-log space; returns (c, a)."""
    a, log_c = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return float(np.exp(log_c)), float(a)


def compute_for(target: float, c: float, a: float) -> float:
    """The x at which the power law c * x**a reaches `target` (inf where it never does)."""
    return float((target / c) ** (1 / a)) if a < 0 else math.inf


def local_exponents(x: Sequence[float], y: Sequence[float]) -> list[float]:
    """The power-law exponent between each pair of consecutive points, d log y / d log x: one
    value fewer than points. A curve that flattens shows exponents rising towards 0 (or above
    it where a longer run scored worse), which one fit through all points hides."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    return (np.diff(ly) / np.diff(lx)).tolist()


def plot_scaling(
    df: pd.DataFrame,
    path: Path,
    targets: dict[str, Sequence[float]] | None = None,
    reference: dict[str, Any] | None = None,
) -> Path:
    """The measured curves of recipes trained for different lengths: FCD/Test and the MCF/PAINS
    failure rate (1 - Filters) on the MOSES protocol, and the held-out NLL bound of the quality
    protocol, against CPU hours of training (top) and molecules seen (bottom), log-log. Each
    recipe (the `recipe` column, if any; one curve per value, named in the legend) is joined in
    order of compute, each segment labelled with its local exponent (`local_exponents`); the
    targets are dashed lines. The top row names every run, the bottom row each curve's last run.
    `reference`: a published model's `mols_seen` and metrics, drawn on the bottom row. No power
    law is drawn beyond the data: `scripts/scaling_curve.py` prints the fits and what they
    extrapolate to."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    targets = targets or {"FCD/Test": (1.5, 0.3), "Filters": (0.95, 0.98)}
    panels = [("FCD/Test", "FCD/Test"), ("Filters", "1 - Filters (MCF/PAINS failure rate)")]
    if "q_nll" in df and df["q_nll"].notna().all():
        panels.append(("q_nll", "held-out NLL bound (nats, quality protocol)"))
    fig = Figure(figsize=(4.2 * len(panels), 8.8), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(panels), squeeze=False)
    recipes = df["recipe"].fillna("") if "recipe" in df else pd.Series("", index=df.index)
    # C1 marks the exponents, C2 the published model, C3 the targets
    colors = ["C0", "C4", "C5", "C6", "C8", "C9"]
    for row in range(2):
        for ax, (name, label) in zip(axes[row], panels, strict=True):
            fail = name == "Filters"
            for k, recipe in enumerate(dict.fromkeys(recipes)):
                part = df[recipes == recipe].sort_values("cpu_s")
                xs = part["cpu_s"].to_numpy() / 3600 if row == 0 else part["mols_seen"].to_numpy()
                y = 1 - part[name].to_numpy() if fail else part[name].to_numpy()
                ax.plot(
                    xs,
                    y,
                    "o-",
                    color=colors[k % len(colors)],
                    label=recipe or "measured (cooled-down models)",
                )
                # The top row names every run; the bottom row, where recipes crowd into a
                # short molecule range, names each curve at its last run only.
                named = list(zip(xs, y, part["run"], strict=True))
                for x, v, run in named if row == 0 else named[-1:]:
                    ax.annotate(run, (x, v), fontsize=7, xytext=(4, 4), textcoords="offset points")
                for i, e in enumerate(local_exponents(xs, y)):
                    mid = (np.sqrt(xs[i] * xs[i + 1]), np.sqrt(y[i] * y[i + 1]))
                    ax.annotate(
                        f"{e:+.2f}",
                        mid,
                        fontsize=7,
                        color="C1",
                        xytext=(0, -10),
                        textcoords="offset points",
                        ha="center",
                    )
            for t in targets.get(name, ()):
                ax.axhline(1 - t if fail else t, ls="--", color="C3", lw=1)
                ax.annotate(
                    f"target {t}",
                    (0.02, 1 - t if fail else t),
                    xycoords=("axes fraction", "data"),
                    fontsize=8,
                    color="C3",
                    xytext=(0, 3),
                    textcoords="offset points",
                )
            if row == 1 and reference and name in reference:
                ref_y = 1 - reference[name] if fail else reference[name]
                ax.plot(reference["mols_seen"], ref_y, "s", color="C2", label=reference["label"])
            ax.set_xscale("log")
            if name != "q_nll":  # NLL moves by tenths of a nat: a linear axis reads better
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
                ax.yaxis.set_major_formatter(ScalarFormatter())
                ax.yaxis.set_minor_formatter(NullFormatter())
            if row == 0:
                ax.xaxis.set_major_formatter(ScalarFormatter())
                ax.xaxis.set_minor_formatter(ScalarFormatter())
            else:  # labelled minor ticks of a short molecule range ran into each other
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(
                "CPU hours of training (process time, 2 cores)" if row == 0 else "molecules seen"
            )
            ax.set_ylabel(label)
            ax.set_title(
                f"{'MOSES' if name != 'q_nll' else 'quality'} protocol: {name}", fontsize=10
            )
            ax.grid(alpha=0.3, which="both")
    # one legend for all panels, below them: per-panel legends covered the curves
    labelled: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            labelled.setdefault(text, handle)
    fig.legend(labelled.values(), labelled.keys(), loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle(
        "each recipe trained for different lengths (orange: local exponent per segment)",
        fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.print_png(str(path))
    return path
