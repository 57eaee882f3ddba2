"""The report of a run folder: PNG figures in figures/ and report.md beside the MOSES baselines."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rdkit import Chem
from rdkit.Chem import Draw

from molvae import chem
from molvae.api import load
from molvae.store import folder, names

log = logging.getLogger(__name__)

REPORT_MD, FIGURES = "report.md", "figures"
PLOTTED_PROPERTIES = ("qed", "logp", "sa", "weight")
PROPERTY_LABELS = {"qed": "QED", "logp": "logP", "sa": "SA score", "weight": "molecular weight"}
N_RECONSTRUCTIONS = 8
MOSES_CITATION = (
    "Polykovskiy et al., *Molecular Sets (MOSES): A Benchmarking Platform for Molecular "
    "Generation Models*, Front. Pharmacol. 11:565644 (2020), Table 2; the same numbers are in "
    "the [MOSES README](https://github.com/molecularsets/moses#metrics). Means over three runs, "
    "30,000 samples each, against the full MOSES test (Test) and scaffold test (TestSF) sets."
)
# metric -> True if higher is better; the rows of the baseline table, in MOSES's order.
HIGHER_IS_BETTER = {
    "valid": True,
    "unique@1000": True,
    "unique@10000": True,
    "FCD/Test": False,
    "FCD/TestSF": False,
    "SNN/Test": True,
    "SNN/TestSF": True,
    "Frag/Test": True,
    "Frag/TestSF": True,
    "Scaf/Test": True,
    "Scaf/TestSF": True,
    "IntDiv": True,
    "IntDiv2": True,
    "Filters": True,
    "Novelty": True,
}
# Published MOSES numbers (columns in HIGHER_IS_BETTER order; checked against the README table).
BASELINES: dict[str, dict[str, float]] = {
    name: dict(zip(HIGHER_IS_BETTER, values, strict=True))
    for name, values in {
        "MOSES train set": (1.0, 1.0, 1.0, 0.008, 0.4755, 0.6419, 0.5859, 1.0, 0.9986, 0.9907,
                            0.0, 0.8567, 0.8508, 1.0, 1.0),
        "VAE": (0.9767, 1.0, 0.9984, 0.099, 0.567, 0.6257, 0.5783, 0.9994, 0.9984, 0.9386,
                0.0588, 0.8558, 0.8498, 0.997, 0.6949),
        "CharRNN": (0.9748, 1.0, 0.9994, 0.0732, 0.5204, 0.6015, 0.5649, 0.9998, 0.9983, 0.9242,
                    0.1101, 0.8562, 0.8503, 0.9943, 0.8419),
        "JTN-VAE": (1.0, 1.0, 0.9996, 0.3954, 0.9382, 0.5477, 0.5194, 0.9965, 0.9947, 0.8964,
                    0.1009, 0.8551, 0.8493, 0.976, 0.9143),
    }.items()
}  # fmt: skip


@dataclass
class _Inputs:
    """What the sections read, each loaded once; None (with a reason in `missing`) if absent."""

    run_dir: Path
    n_latent: int
    missing: dict[str, str] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict)

    def _get(self, name: str, load):
        if name not in self._cache:
            try:
                self._cache[name] = load()
            except (OSError, ValueError, RuntimeError) as e:  # RunFolderError, DataError, ...
                log.warning("report: no %s (%s)", name, e)
                self.missing[name] = f"{type(e).__name__}: {e}"
                self._cache[name] = None
        return self._cache[name]

    def model(self):
        return self._get("model", lambda: load(self.run_dir))

    def test(self) -> pd.DataFrame | None:
        """Up to n_latent test molecules (seeded subset): smiles, selfies and properties."""
        return self._get("test set", lambda: _test_subset(self.run_dir, self.n_latent))


def write_report(run_dir: Path, n_grid: int = 24, n_latent: int = 2000) -> Path:
    """Write run_dir/report.md and its PNG figures in run_dir/figures/; returns the report path.

    Sections whose inputs are missing (no samples.csv, no metrics.json, no checkpoint, data not
    available offline) are replaced by a note saying what to run. The latent-space map encodes at
    most `n_latent` test molecules; the sample grid draws `n_grid` distinct valid samples.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise names.RunFolderError(f"run folder {run_dir} does not exist")
    (run_dir / FIGURES).mkdir(exist_ok=True)
    inputs = _Inputs(run_dir, n_latent)
    records = _read_jsonl(run_dir / names.METRICS_JSONL)
    samples = _read_samples(run_dir / names.SAMPLES_CSV)
    lines = [f"# Run report: `{run_dir.name}`", "", f"Run folder: `{run_dir.resolve()}`", ""]
    lines += _metrics_section(run_dir)
    lines += _likelihood_section(run_dir)
    lines += _training_section(run_dir, records, inputs)
    lines += _samples_section(run_dir, samples, n_grid)
    lines += _properties_section(run_dir, samples, inputs)
    lines += _latent_section(run_dir, inputs)
    lines += _reconstruction_section(run_dir, inputs)
    seconds = time.perf_counter() - t0
    lines += ["---", f"Written by `molvae.evaluation.report.write_report` in {seconds:.1f} s.", ""]
    path = run_dir / REPORT_MD
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)
    log.info("report: %s (%.1f s)", path, seconds)
    return path


# ----------------------------------------------------------------------------- inputs


def _read_jsonl(path: Path) -> pd.DataFrame:
    """metrics.jsonl as a table, one row per record (lines cut by a crash are skipped)."""
    if not path.exists():
        return pd.DataFrame()
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            rows.append(rec)
    df = pd.DataFrame(rows)
    return df.apply(pd.to_numeric, errors="coerce")  # "nan" strings -> NaN


def _read_samples(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    df = pd.read_csv(path, keep_default_na=False, dtype={"smiles": str})
    for c in df.columns.drop("smiles"):
        df[c] = df[c].astype(str).str.lower().eq("true") if c == "valid" else _num(df[c])
    return df


def _num(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce").astype(float)


def _test_subset(run_dir: Path, n: int) -> pd.DataFrame:
    """A seeded subset of the run's test split with its RDKit properties."""
    ds = folder.dataset_of_run(run_dir)
    if ds is None:
        raise names.RunFolderError(f"{run_dir / names.RUN_JSON}: no data config")
    test = ds.test
    if not test.smiles:
        raise names.RunFolderError(f"{run_dir}: the run's test split is empty")
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(test), size=min(n, len(test)), replace=False))
    smiles = [test.smiles[i] for i in idx]
    df = pd.DataFrame({"smiles": smiles, "selfies": [test.selfies[i] for i in idx]})
    return pd.concat([df, chem.properties(smiles, PLOTTED_PROPERTIES)], axis=1)


def _encodable(model, test: pd.DataFrame) -> pd.DataFrame:
    """Test molecules the model can read (MolVAE.encodable: the check encode itself makes)."""
    ok = model.encodable(list(test["smiles"]))
    if not ok.all():
        log.info("report: %d test molecules cannot be encoded by the model", int((~ok).sum()))
    return test[ok].reset_index(drop=True)


# ----------------------------------------------------------------------------- helpers


def _fig(*args, **kw) -> tuple[Figure, Any]:
    """A figure on its own Agg canvas: no pyplot state, safe in threads and notebooks alike."""
    fig = Figure(*args, **kw)
    FigureCanvasAgg(fig)
    return fig, fig.subplots


def _save(fig: Figure, run_dir: Path, name: str) -> str:
    """Save to figures/<name>, release the figure's memory; returns the relative link."""
    fig.savefig(run_dir / FIGURES / name, dpi=110, bbox_inches="tight")
    fig.clear()  # not registered with pyplot: clearing frees it, there is nothing to close
    return f"{FIGURES}/{name}"


def _save_grid(mols, legends, run_dir: Path, name: str, per_row: int) -> str:
    opts = Draw.rdMolDraw2D.MolDrawOptions()
    opts.drawMolsSameScale = False  # one long chain must not shrink every other drawing
    png = Draw.MolsToGridImage(
        mols,
        molsPerRow=per_row,
        subImgSize=(260, 200),
        legends=legends,
        returnPNG=True,
        drawOptions=opts,
    )
    (run_dir / FIGURES / name).write_bytes(png)
    return f"{FIGURES}/{name}"


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) >= 10**digits else f"{v:.{digits}f}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return out + [""]


def _note(text: str) -> list[str]:
    return [f"> {text}", ""]


# ----------------------------------------------------------------------------- sections


def _metrics_section(run_dir: Path) -> list[str]:
    lines = ["## Metrics beside the MOSES baselines", ""]
    path = run_dir / names.EVAL_JSON
    ours: dict[str, Any] = {}
    if path.exists():
        try:
            ours = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            lines += _note(
                f"`{names.EVAL_JSON}` is not valid JSON ({e}): the molvae column is empty."
            )
        ours = ours if isinstance(ours, dict) else {}
        info = {k: ours.pop(k) for k in ("n_samples", "reference") if k in ours}
        if info:
            lines += [", ".join(f"{k}: `{v}`" for k, v in info.items()), ""]
        if info.get("reference") not in (None, "moses"):
            lines += _note(
                "Test/TestSF metrics here are against the reference above, not the full MOSES "
                "test sets; compare them with the baselines as an indication only. Novelty is "
                "against this run's own training set."
            )
    else:
        lines += _note(
            f"No `{names.EVAL_JSON}` yet: run `python experiments/evaluate.py run_dir={run_dir}` "
            "to fill the molvae column."
        )
    baselines = list(BASELINES)
    header = ["metric", "molvae (this run)", *baselines]
    rows = []
    extra = [k for k, v in ours.items() if k not in HIGHER_IS_BETTER and _is_number(v)]
    for key in [*HIGHER_IS_BETTER, *extra]:
        arrow = {True: " ↑", False: " ↓"}.get(HIGHER_IS_BETTER.get(key), "")
        mine = ours.get(key)
        rows.append([f"{key}{arrow}", float(mine) if _is_number(mine) else None]
                    + [BASELINES[n].get(key) for n in baselines])  # fmt: skip
    lines += _table(header, rows)
    lines += [
        f"Baselines: {MOSES_CITATION} '—': not computed. logP, SA, QED and weight (if present) "
        "are Wasserstein-1 distances to the test set's property distributions.",
        "",
    ]
    return lines


def _likelihood_section(run_dir: Path) -> list[str]:
    lines = ["## Likelihood and compression (held-out molecules)", ""]
    path = run_dir / names.LIKELIHOOD_JSON
    if not path.exists():
        return lines + _note(
            f"No {names.LIKELIHOOD_JSON}: run `molvae.evaluation.run.test_likelihood(run_dir)` "
            "(the pipeline does)."
        )
    like = json.loads(path.read_text(encoding="utf-8"))
    rows = [
        ["NLL (importance-weighted bound)", like["nll_nats"], like["nll_bits"]],
        ["rate: KL(q(z|x) || p(z))", like["rate_nats"], like["rate_bits"]],
        ["distortion: E_q[-log p(x|z)]", like["distortion_nats"], like["distortion_bits"]],
        ["negative ELBO (rate + distortion)", -like["elbo_nats"], -like["elbo_nats"] / np.log(2)],
    ]
    lines += _table(["per molecule", "nats", "bits"], rows)
    lines += [
        f"{like['n']} test molecules, k = {like['k']} importance samples "
        f"({like['skipped_out_of_vocabulary']} skipped: symbols outside the vocabulary). "
        "`model.log_likelihood(smiles)` gives the per-molecule value; to flag molecules unlike "
        "the training data use `model.anomaly_percentile(smiles)` (per SELFIES symbol, against "
        "these held-out molecules): the per-molecule value favours small molecules.",
        "",
    ]
    return lines


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _training_section(run_dir: Path, rec: pd.DataFrame, inputs: _Inputs) -> list[str]:
    lines = ["## Training", ""]
    if rec.empty or "step" not in rec or "loss" not in rec:
        return lines + _note(f"No training records in `{names.METRICS_JSONL}`.")
    train = rec.dropna(subset=["loss"]).sort_values("step")
    last = train.iloc[-1]
    speed = train["mol_per_s"].dropna() if "mol_per_s" in train else pd.Series(dtype=float)
    steady = speed.iloc[1:] if len(speed) > 1 else speed  # the first interval includes compiling
    summary = [["steps", int(last["step"])]]
    model = inputs.model()
    if model is not None:
        import jax
        from flax import nnx

        n = sum(x.size for x in jax.tree.leaves(nnx.state(model.model, nnx.Param)))
        summary.append(["parameters", f"{n:,}"])
    for k in ("loss", "recon", "kl", "beta", "token_acc"):
        if k in train:
            summary.append([f"final {k}", float(last[k])])
    if "lr" in train:
        summary.append(["final learning rate", f"{last['lr']:.3g}"])
    if "time" in train:
        summary.append(["wall time (s)", f"{train['time'].max():.1f}"])
    if len(steady):
        summary.append(
            ["molecules/s (median, after the first interval)", f"{steady.median():,.0f}"]
        )
    lines += _table(["", "value"], summary)

    fig, sub = _fig(figsize=(10, 6.5))
    axes = sub(2, 2, sharex=True).ravel()
    for i, (ax, k) in enumerate(zip(axes, ("loss", "recon", "kl", "beta"), strict=True)):
        if k in train:
            ax.plot(train["step"], train[k], color="C0")
        ax.set(title=k, xlabel="step" if i >= 2 else None)
        ax.grid(alpha=0.3)
    fig.suptitle("training (means over each logging interval)")
    lines += [f"![training losses]({_save(fig, run_dir, 'training_losses.png')})", ""]

    val_keys = [k for k in ("val_token_acc", "val_recon_acc", "token_acc") if k in rec]
    val = rec.dropna(subset=["val_elbo"]) if "val_elbo" in rec else rec.iloc[:0]
    if val_keys:
        fig, sub = _fig(figsize=(6.5, 4))
        ax = sub()
        for k in val_keys:
            d = rec.dropna(subset=[k]).sort_values("step")
            style = "-" if k.startswith("val_") else ":"
            ax.plot(d["step"], d[k], style, marker="o" if len(d) < 30 else None, label=k)
        ax.set(xlabel="step", ylabel="accuracy", ylim=(0, 1.02), title="reconstruction accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
        lines += [f"![reconstruction accuracy]({_save(fig, run_dir, 'training_accuracy.png')})", ""]
    if len(val):
        lines += ["### Validation", ""]
        cols = [c for c in rec.columns if c.startswith("val_")]
        val = val.sort_values("step")
        if len(val) > 20:  # long runs: every k-th evaluation and always the last one
            keep = np.unique(np.r_[np.linspace(0, len(val) - 1, 20).astype(int), len(val) - 1])
            val = val.iloc[keep]
        lines += _table(["step", *cols], [[int(r["step"]), *r[cols]] for _, r in val.iterrows()])
        lines += [
            "val_recon, val_kl and val_elbo in nats per molecule; val_token_acc is per-token "
            "teacher-forced accuracy, val_recon_acc the fraction of molecules whose every token "
            "is right.",
            "",
        ]
    else:
        lines += _note("No validation records yet.")
    return lines


def _samples_section(run_dir: Path, samples: pd.DataFrame | None, n_grid: int) -> list[str]:
    lines = ["## Sampled molecules", ""]
    if samples is None:
        return lines + _note(
            f"No `{names.SAMPLES_CSV}`: run `python experiments/sample.py run_dir={run_dir}`."
        )
    valid = samples[samples["valid"]] if "valid" in samples else samples[samples["smiles"] != ""]
    lines += [
        f"{len(samples)} samples, {len(valid)} valid ({len(valid) / max(len(samples), 1):.1%}), "
        f"{valid['smiles'].nunique()} distinct.",
        "",
    ]
    shown = valid.drop_duplicates("smiles").head(n_grid)
    if shown.empty:
        return lines + _note("No valid sample to draw.")
    mols = [chem.mol_from_smiles(s) for s in shown["smiles"]]
    legends = [
        f"QED {_fmt(r.get('qed'), 2)}   SA {_fmt(r.get('sa'), 2)}" for _, r in shown.iterrows()
    ]
    link = _save_grid(mols, legends, run_dir, "samples_grid.png", per_row=6)
    return lines + [f"![sampled molecules]({link})", ""]


def _properties_section(run_dir: Path, samples: pd.DataFrame | None, inputs: _Inputs) -> list[str]:
    lines = ["## Property distributions", ""]
    if samples is None:
        return lines + _note(f"No `{names.SAMPLES_CSV}`: nothing to compare with the test set.")
    test = inputs.test()
    valid = samples[samples["valid"]] if "valid" in samples else samples
    have = [p for p in PLOTTED_PROPERTIES if p in valid]
    if not have:
        return lines + _note(f"`{names.SAMPLES_CSV}` has no property columns.")
    fig, sub = _fig(figsize=(10, 7))
    rows = []
    for ax, p in zip(sub(2, 2).ravel(), PLOTTED_PROPERTIES, strict=True):
        gen = valid[p].dropna().to_numpy() if p in valid else np.zeros(0)
        ref = test[p].dropna().to_numpy() if test is not None else np.zeros(0)
        both = np.concatenate([gen, ref])
        if len(both):
            bins = np.histogram_bin_edges(both, bins=40)
            if len(ref):
                ax.hist(ref, bins=bins, density=True, alpha=0.5, color="C1", label="test set")
            if len(gen):
                ax.hist(gen, bins=bins, density=True, alpha=0.5, color="C0", label="samples")
            ax.legend(fontsize=8)
        ax.set(title=PROPERTY_LABELS[p], ylabel="density")
        rows.append([PROPERTY_LABELS[p], *_mean_std(gen), *_mean_std(ref)])
    fig.suptitle("properties of valid samples against the test set")
    lines += [f"![property histograms]({_save(fig, run_dir, 'properties.png')})", ""]
    if test is None:
        lines += _note(f"Test set not available ({inputs.missing.get('test set')}): samples only.")
    else:
        lines += [f"Test set: {len(test)} molecules (a seeded subset of the run's test split).", ""]
    header = ["property", "samples mean", "samples std", "test mean", "test std"]
    return lines + _table(header, rows)


def _mean_std(x: np.ndarray) -> list[float | None]:
    return [float(x.mean()), float(x.std())] if len(x) else [None, None]


def _latent_section(run_dir: Path, inputs: _Inputs) -> list[str]:
    lines = ["## Latent space", ""]
    model, test = inputs.model(), inputs.test()
    if model is None or test is None:
        why = inputs.missing.get("model") or inputs.missing.get("test set")
        return lines + _note(f"Skipped: {why}")
    test = _encodable(model, test)
    if len(test) < 3:
        return lines + _note("Skipped: fewer than 3 encodable test molecules.")
    mu = np.asarray(model.encode(list(test["smiles"])), np.float64)  # (n, Z)
    centred = mu - mu.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt[:2].T  # (n, <=2)
    if proj.shape[1] < 2:
        proj = np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))
    ratio = s**2 / max(float(np.sum(s**2)), 1e-12)
    ratio = np.pad(ratio, (0, max(0, 2 - len(ratio))))
    fig, sub = _fig(figsize=(6.5, 5.5))
    ax = sub()
    pts = ax.scatter(proj[:, 0], proj[:, 1], c=test["qed"], cmap="viridis", s=6, alpha=0.8)
    fig.colorbar(pts, ax=ax, label="QED")
    ax.set(
        xlabel=f"PC1 ({ratio[0]:.1%} of variance)",
        ylabel=f"PC2 ({ratio[1]:.1%} of variance)",
        title=f"posterior means of {len(test)} test molecules",
    )
    link = _save(fig, run_dir, "latent_pca.png")
    r = np.corrcoef(proj[:, 0], test["qed"])[0, 1] if np.std(proj[:, 0]) > 0 else math.nan
    return lines + [
        f"![latent PCA]({link})",
        "",
        f"PCA (numpy SVD) of the {model.latent_dim}-d posterior means; the first two components "
        f"explain {ratio[:2].sum():.1%} of their variance. Correlation of PC1 with QED: "
        f"{_fmt(float(r), 3)}. Mean |mu|: {np.linalg.norm(mu, axis=1).mean():.2f} "
        f"(prior samples have about {math.sqrt(model.latent_dim):.2f}).",
        "",
    ]


def _reconstruction_section(run_dir: Path, inputs: _Inputs) -> list[str]:
    lines = ["## Reconstructions", ""]
    model, test = inputs.model(), inputs.test()
    if model is None or test is None:
        why = inputs.missing.get("model") or inputs.missing.get("test set")
        return lines + _note(f"Skipped: {why}")
    smiles = list(_encodable(model, test)["smiles"][:N_RECONSTRUCTIONS])
    if not smiles:
        return lines + _note("Skipped: no encodable test molecule.")
    out = model.reconstruct(smiles)  # greedy decode of the posterior mean
    pairs = list(zip(smiles, out, strict=True))
    sims = [float(chem.similarity([o], s)[0]) if o else math.nan for s, o in pairs]
    exact = [bool(o) and chem.canonical(o) == chem.canonical(s) for s, o in pairs]
    mols, legends = [], []
    for s, o, ok, sim in zip(smiles, out, exact, sims, strict=True):
        mols += [chem.mol_from_smiles(s), chem.mol_from_smiles(o) or Chem.Mol()]
        right = "exact" if ok else (f"Tanimoto {sim:.2f}" if o else "decoding failed")
        legends += ["input", right]
    link = _save_grid(mols, legends, run_dir, "reconstructions.png", per_row=2)
    rows = [
        [f"`{s}`", f"`{o}`" if o else "(failed)", "yes" if ok else "no", sim]
        for s, o, ok, sim in zip(smiles, out, exact, sims, strict=True)
    ]
    return lines + [
        f"Held-out test molecules (left) and the greedy decoding of their posterior mean "
        f"(right): {sum(exact)} of {len(smiles)} exact.",
        "",
        f"![reconstructions]({link})",
        "",
        *_table(["input", "reconstruction", "exact", "Tanimoto"], rows),
    ]
