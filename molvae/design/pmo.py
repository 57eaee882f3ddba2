"""PMO (Gao et al., "Sample Efficiency Matters", NeurIPS 2022 Datasets and Benchmarks): the 20
GuacaMol-defined tasks that need no model file, PMO's AUC top-10, the published baselines, and a
resumable harness (one budgeted `molvae.optimize` per task and seed).

Scoring comes from the `guacamol` package (0.5.5, BenevolentAI), not from a copy: each task is
the `objective` of the GoalDirectedBenchmark that guacamol's `benchmark_suites` builds
(`goal_directed_suite_v2`, plus QED and C7H8N2O2 from `goal_directed_suite_trivial`), looked up
by its GuacaMol name (`GUACAMOL_NAMES`).

PMO scores molecules with TDC's oracles (`tdc.Oracle(name=...)`, called by mol_opt's
`main/optimizer.py`), which re-implement GuacaMol's. Checked definition by definition against
TDC's `tdc/chem_utils/oracle/oracle.py` (tests/test_pmo.py re-implements all 20 from it):

- the task set and parametrization are GuacaMol's *v2* suite (the one PMO and TDC follow):
  geometric means for the isomer tasks and median1 (GuacaMol's v1 suite averages those
  arithmetically) and the TPSA-based `ranolazine_mpo` (v1 has `start_pop_ranolazine`);
- same target SMILES, SMARTS, fingerprints (count-based Morgan ECFP4/ECFP6/FCFP4, atom pairs
  of max length 10, Gobbi 2D pharmacophores for deco_hop/scaffold_hop), modifiers and means for
  rediscovery, similarity, median1/2, the seven MPOs, valsartan_smarts, deco_hop and
  scaffold_hop: the same numbers (geometric means differ by float rounding only: TDC uses
  scipy's gmean, GuacaMol prod ** (1/n));
- isomers (and the formula terms of sitagliptin_mpo and zaleplon_mpo): TDC's `Isomer_scoring`
  since PyTDC 0.3.7 (2022-08, "fix two bugs ...: addH ...; smiles2formula") counts atoms with
  explicit hydrogens and takes the total from RDKit's molecular formula - the same as
  GuacaMol's IsomerScoringFunction. Before it (`Isomer_scoring_prev`, kept in TDC) the total
  was parsed from the SMILES *string* and an exact C7H8N2O2 isomer scored about 0.01; PMO's
  published isomer results (top-100 mean 0.995 for SMILES GA) are impossible under that
  definition, so they were computed with the fixed one, which is used here;
- a molecule that cannot be scored: TDC returns 0.0 for an invalid SMILES (mol_opt never
  scores one: it is neither charged nor buffered, as molvae's Oracle does); GuacaMol returns
  -1. Here it is nan (molvae's "cannot score"): only an invalid SMILES or a GuacaMol scoring
  error gives it, and a nan never ranks in the top-k.

Importing guacamol: it declares `FCD` (which pulls torch) and `rdkit-pypi` (a second copy of
RDKit over ours) as dependencies, so it is not a dependency in pyproject.toml: the pinned wheel
is fetched with `pip download --no-deps` into molvae's checked wheel cache (as the MOSES data
and ChemNet weights are; `molvae.fetch`) and imported from it; a guacamol 0.5.5 installed by
hand (`pip install --no-deps guacamol==0.5.5`) is used instead when present. Two upstream
breakages are bridged at import, both only in code PMO never runs: `guacamol.utils.chemistry`
imports `scipy.histogram` (gone since SciPy 1.12; BenevolentAI/guacamol#33, used only by the
KL-divergence benchmark) and gets numpy's, and `guacamol.frechet_benchmark` imports `fcd` (the
FCD benchmark): while guacamol is imported, an absent `fcd` is a placeholder module that
raises if anything uses it.

AUC top-10: `auc_top10` is molvae.design.plots.top_auc, which computes mol_opt's `top_auc`
(main/optimizer.py) with finish=True: the top-10 mean of the distinct valid molecules scored
so far, sampled every 100 calls, trapezoids between samples, the last partial segment to the
last call, a run that stopped early held at its final value until the budget, divided by the
budget. (mol_opt's buffer can end one molecule past the budget; molvae's Oracle never does.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import math
import sys
import time
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from molvae import fetch
from molvae.design import plots
from molvae.design.objectives import Objective
from molvae.design.optimize import optimize
from molvae.design.registry import get, method_config
from molvae.store.folder import write_json_atomic

if TYPE_CHECKING:
    from molvae.api import MolVAE

log = logging.getLogger(__name__)

__all__ = [
    "GUACAMOL",
    "GUACAMOL_NAMES",
    "PUBLISHED_METHODS",
    "PUBLISHED_SOURCE",
    "TASKS",
    "auc_top10",
    "finished",
    "load_guacamol",
    "load_runs",
    "objective",
    "plot_curves",
    "published",
    "run_folder",
    "run_task",
    "score",
    "summary_markdown",
    "summary_table",
]

# PMO task -> (GuacaMol suite, benchmark name in it).
GUACAMOL_NAMES: dict[str, tuple[str, str]] = {
    "albuterol_similarity": ("v2", "Albuterol similarity"),
    "amlodipine_mpo": ("v2", "Amlodipine MPO"),
    "celecoxib_rediscovery": ("v2", "Celecoxib rediscovery"),
    "deco_hop": ("v2", "Deco Hop"),
    "fexofenadine_mpo": ("v2", "Fexofenadine MPO"),
    "isomers_c7h8n2o2": ("trivial", "C7H8N2O2"),
    "isomers_c9h10n2o2pf2cl": ("v2", "C9H10N2O2PF2Cl"),
    "median1": ("v2", "Median molecules 1"),
    "median2": ("v2", "Median molecules 2"),
    "mestranol_similarity": ("v2", "Mestranol similarity"),
    "osimertinib_mpo": ("v2", "Osimertinib MPO"),
    "perindopril_mpo": ("v2", "Perindopril MPO"),
    "qed": ("trivial", "QED"),
    "ranolazine_mpo": ("v2", "Ranolazine MPO"),
    "scaffold_hop": ("v2", "Scaffold Hop"),
    "sitagliptin_mpo": ("v2", "Sitagliptin MPO"),
    "thiothixene_rediscovery": ("v2", "Thiothixene rediscovery"),
    "troglitazone_rediscovery": ("v2", "Troglitazone rediscovery"),
    "valsartan_smarts": ("v2", "Valsartan SMARTS"),
    "zaleplon_mpo": ("v2", "Zaleplon MPO"),
}
TASKS: tuple[str, ...] = tuple(GUACAMOL_NAMES)

GUACAMOL = fetch.GUACAMOL  # the pinned wheel; fetched at install by the Makefile


# ----------------------------------------------------------------------------- guacamol


@contextlib.contextmanager
def _placeholder_fcd() -> Iterator[None]:
    """An `fcd` module that raises on use, in sys.modules only while guacamol is imported, and
    only if the real one is absent (guacamol.frechet_benchmark imports it at module level)."""
    if "fcd" in sys.modules or importlib.util.find_spec("fcd") is not None:
        yield
        return
    stub = types.ModuleType("fcd", "placeholder: the FCD package is not installed")

    def missing(name: str) -> Any:
        raise ImportError(f"fcd.{name}: the FCD package is not installed (molvae.design.pmo)")

    stub.__getattr__ = missing  # type: ignore[method-assign]
    sys.modules["fcd"] = stub
    try:
        yield
    finally:
        if sys.modules.get("fcd") is stub:
            del sys.modules["fcd"]


@functools.cache
def load_guacamol() -> types.ModuleType:
    """guacamol.benchmark_suites: from an installed guacamol 0.5.5, else from the pinned wheel
    (downloaded once into molvae's cache, checked by sha256)."""
    try:
        installed = importlib.metadata.version("guacamol")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed != GUACAMOL.version:
        if installed is not None:
            log.warning("guacamol %s is installed; PMO scores with %s", installed, GUACAMOL.version)
        wheel = str(fetch.wheel_path(GUACAMOL))
        if wheel not in sys.path:
            sys.path.insert(0, wheel)  # a pure-Python wheel imports from the zip as it is
        for name in [m for m in sys.modules if m == "guacamol" or m.startswith("guacamol.")]:
            del sys.modules[name]  # another version's modules must not shadow the wheel's
    import scipy

    if not hasattr(scipy, "histogram"):  # removed in SciPy 1.12; guacamol's KL benchmark only
        scipy.histogram = np.histogram
    with _placeholder_fcd():
        suites = importlib.import_module("guacamol.benchmark_suites")
    log.debug("guacamol from %s", suites.__file__)
    return suites


@functools.cache
def _scoring_functions() -> dict[str, Any]:
    suites = load_guacamol()
    built = {
        "v2": {b.name: b.objective for b in suites.goal_directed_suite_v2()},
        "trivial": {b.name: b.objective for b in suites.goal_directed_suite_trivial()},
    }
    return {task: built[suite][name] for task, (suite, name) in GUACAMOL_NAMES.items()}


def _check(task: str) -> str:
    if task not in GUACAMOL_NAMES:
        raise ValueError(f"unknown PMO task {task!r}; tasks: {list(TASKS)}")
    return task


def score(task: str, smiles: Sequence[str]) -> np.ndarray:
    """The PMO score of each SMILES for `task` (nan for one that cannot be scored)."""
    fn = _scoring_functions()[_check(task)]
    values = np.full(len(smiles), math.nan)
    given = [i for i, s in enumerate(smiles) if s]  # "" parses to an empty molecule in RDKit
    if given:
        values[given] = fn.score_list([smiles[i] for i in given])
    values[values == fn.corrupt_score] = math.nan  # GuacaMol's -1: invalid or a scoring error
    return values


def objective(task: str) -> Objective:
    """The PMO task as a molvae Objective named after it (maximized)."""
    _check(task)
    _scoring_functions()  # import guacamol now, not inside the search

    def fn(smiles: list[str]) -> np.ndarray:
        return score(task, smiles)

    return Objective(fn, task)


PMO_BUDGET = 10_000  # the protocol's oracle calls per run, at which the published values are


def auc_top10(scores: Sequence[float], budget: int = PMO_BUDGET, freq: int = 100) -> float:
    """PMO's AUC top-10 of a run's scores in call order (mol_opt's top_auc, finish=True)."""
    return plots.top_auc(scores, budget, k=10, freq=freq)


def auc_top10_held(auc: float, top10: float, budget: int, target: int = PMO_BUDGET) -> float:
    """PMO's AUC top-10 at `target` calls of a run that ended at `budget` calls with AUC top-10
    `auc` and final top-10 mean `top10`: what mol_opt's top_auc (finish=True) gives a run that
    stopped early, its last top-10 mean held to `target`. The top-10 mean never falls, so for a
    run that ended on one of PMO's logging points (calls a multiple of 100, as every run that
    spent a budget of 1,000 does) this is a lower bound on the AUC the same run would reach if
    it went on to `target` calls."""
    if budget >= target:
        return float(auc)
    top10 = float(top10) if np.isfinite(top10) else 0.0
    return (budget * float(auc) + (target - budget) * top10) / target


# ----------------------------------------------------------------------------- published

PUBLISHED_METHODS = {
    "reinvent": "REINVENT",
    "graph_ga": "Graph GA",
    "gp_bo": "GP BO",
    "selfies_vae_bo": "SELFIES-VAE BO",
}
PUBLISHED_SOURCE = (
    "PMO's AUC top-10 at 10,000 calls, mean and std over 5 seeds (Gao et al. 2022; Table 3 for "
    "REINVENT, Graph GA and GP BO, the leaderboard for SELFIES-VAE BO): the authors' spreadsheet "
    "Mol_Opt.xlsx, sheets 'AUC Top-10' and 'AUC Top-10 std', in "
    "github.com/pmo-benchmark/pmo-benchmark.github.io (commit 4627367, 2024-02-24), rounded to "
    "4 decimals (the leaderboard's pages print the means truncated to 3)"
)
# task, then mean and std of each of PUBLISHED_METHODS in order.
_PUBLISHED = """\
albuterol_similarity,0.8828,0.0063,0.8387,0.0162,0.8985,0.0143,0.4946,0.0126
amlodipine_mpo,0.6350,0.0359,0.6611,0.0208,0.5833,0.0442,0.5163,0.0054
celecoxib_rediscovery,0.7136,0.0671,0.6300,0.0977,0.7236,0.0533,0.3261,0.0078
deco_hop,0.6666,0.0447,0.6191,0.0048,0.6297,0.0189,0.5792,0.0011
fexofenadine_mpo,0.7848,0.0063,0.7606,0.0116,0.7229,0.0054,0.6704,0.0040
isomers_c7h8n2o2,0.8523,0.0363,0.8622,0.0660,0.6800,0.1174,0.3253,0.0282
isomers_c9h10n2o2pf2cl,0.6427,0.0541,0.7192,0.0476,0.4699,0.1806,0.2009,0.0300
median1,0.3570,0.0099,0.2949,0.0215,0.3018,0.0142,0.2013,0.0031
median2,0.2769,0.0081,0.2738,0.0100,0.2970,0.0090,0.1851,0.0013
mestranol_similarity,0.6189,0.0486,0.5792,0.0226,0.6272,0.0891,0.3870,0.0098
osimertinib_mpo,0.8372,0.0095,0.8316,0.0056,0.7875,0.0061,0.7657,0.0024
perindopril_mpo,0.5373,0.0163,0.5388,0.0097,0.4936,0.0115,0.4291,0.0032
qed,0.9412,0.0004,0.9405,0.0002,0.9374,0.0005,0.9362,0.0013
ranolazine_mpo,0.7601,0.0092,0.7281,0.0286,0.7360,0.0138,0.4528,0.0259
scaffold_hop,0.5601,0.0200,0.5176,0.0079,0.5487,0.0193,0.4552,0.0045
sitagliptin_mpo,0.0219,0.0039,0.4333,0.0755,0.1869,0.0552,0.0841,0.0153
thiothixene_rediscovery,0.5342,0.0136,0.4790,0.0253,0.5598,0.0275,0.2975,0.0048
troglitazone_rediscovery,0.4410,0.0329,0.3905,0.0163,0.4107,0.0156,0.2437,0.0049
valsartan_smarts,0.1789,0.3582,0.0000,0.0000,0.0000,0.0000,0.0017,0.0034
zaleplon_mpo,0.3582,0.0623,0.3466,0.0300,0.2217,0.0726,0.2065,0.0155
"""


def published() -> pd.DataFrame:
    """Published PMO AUC top-10 per task: columns METHOD and METHOD_std for each of
    PUBLISHED_METHODS (source: PUBLISHED_SOURCE)."""
    cols = [c for m in PUBLISHED_METHODS for c in (m, f"{m}_std")]
    return pd.read_csv(io.StringIO(_PUBLISHED), names=["task", *cols], index_col="task")


# ----------------------------------------------------------------------------- harness

SUMMARY_JSON = "summary.json"
SETTINGS_JSON = "settings.json"  # written when a run starts: a resume must use the same
HISTORY_CSV = "oracle_calls.csv"


def run_folder(out: str | Path, task: str, seed: int) -> Path:
    """Where one (task, seed) run of a harness output folder lives."""
    return Path(out) / task / f"seed{seed}"


def _settings(method: str, budget: int, options: dict[str, Any]) -> dict[str, Any]:
    cfg = dataclasses.asdict(method_config(method, **options))
    return {"method": method, "budget": int(budget), "options": json.loads(json.dumps(cfg))}


def _same_settings(path: Path, want: dict[str, Any]) -> dict | None:
    """The JSON in `path` (None if absent); a ValueError if its settings are not `want`."""
    if not path.exists():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    got = {k: saved.get(k) for k in want}
    if got != want:
        raise ValueError(
            f"{path.parent} holds a run with other settings ({got}, not {want}); "
            "use another output folder"
        )
    return saved


def finished(folder: Path, method: str, budget: int, options: dict[str, Any]) -> dict | None:
    """The summary of a finished run in `folder` made with these settings, else None; a run
    there with other settings is a ValueError (use another output folder)."""
    want = _settings(method, budget, options)
    _same_settings(folder / SETTINGS_JSON, want)
    return _same_settings(folder / SUMMARY_JSON, want)


def run_task(
    model: MolVAE,
    task: str,
    method: str = "bo",
    budget: int = PMO_BUDGET,
    seed: int = 0,
    out: str | Path = "pmo",
    *,
    options: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """One PMO run: `molvae.optimize` on `task` with the budget, into out/TASK/seedSEED/.

    oracle_calls.csv is written as molecules are scored, so an interrupted run resumes
    without paying for a molecule twice; settings.json (method, budget, options) is written
    first and a resume with other settings is refused; summary.json marks the run finished,
    and a finished run is read back, not rerun. Returns the summary: task, seed, method,
    budget, options (the method's settings), calls, auc_top10, top10_mean, top1, seconds (wall
    time of the call that finished the run), search_ms_per_call (the search's own wall time per
    call, the objective's excluded) and counts (invalid, repeats, ...).
    """
    options = dict(options or {})
    get(method, search=True)
    folder = run_folder(out, _check(task), seed)
    settings = _settings(method, budget, options)  # validates the options too
    done = finished(folder, method, budget, options)
    if done is not None:
        log.info("%s seed %d: finished before (%s), skipped", task, seed, folder)
        return done
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / SETTINGS_JSON, {"task": task, "seed": int(seed), **settings})
    t0 = time.perf_counter()
    result = optimize(
        model, objective(task), method=method, budget=budget, seed=seed,
        history_path=folder / HISTORY_CSV, progress=progress, **options,
    )  # fmt: skip
    scores = result.history["score"].to_numpy(float)
    top = np.sort(scores[np.isfinite(scores)])[::-1][:10]
    summary = {
        "task": task,
        "seed": int(seed),
        **settings,
        "calls": len(scores),
        "auc_top10": auc_top10(scores, budget),
        "top10_mean": float(top.mean()) if len(top) else math.nan,
        "top1": float(top[0]) if len(top) else math.nan,
        "seconds": round(time.perf_counter() - t0, 2),
        "search_ms_per_call": result.summary()["search_ms_per_call"],  # the objective's excluded
        "counts": dict(result.counts),
    }
    write_json_atomic(folder / SUMMARY_JSON, summary)
    log.info(
        "%s seed %d: AUC top-10 %.4f, top-10 mean %.4f, %d calls, %.0f s",
        task, seed, summary["auc_top10"], summary["top10_mean"], summary["calls"],
        summary["seconds"],
    )  # fmt: skip
    return summary


def load_runs(out: str | Path) -> pd.DataFrame:
    """One row per finished run under `out` (its summary.json files)."""
    rows = []
    for path in sorted(Path(out).glob(f"*/seed*/{SUMMARY_JSON}")):
        summary = json.loads(path.read_text(encoding="utf-8"))
        rows.append({k: v for k, v in summary.items() if k not in ("options", "counts")})
    return pd.DataFrame(rows)


def summary_table(runs: pd.DataFrame, tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Per task: seeds, AUC top-10 mean and std (over seeds, ddof=0 as numpy), top-10 and top-1
    means, mean calls and total seconds, auc_top10_held (the mean over seeds of
    `auc_top10_held`: each run's AUC top-10 at PMO's 10,000 calls with its final top-10 held,
    a lower bound for the run continued; equal to auc_top10 for a 10,000-call run), beside the
    published baselines' AUC top-10 (mean and std); a last row "sum" adds the means over the
    tasks shown (PMO ranks methods by it)."""
    tasks = list(tasks) if tasks is not None else sorted(set(runs.get("task", [])))
    rows = []
    for task in tasks:
        r = runs[runs["task"] == task] if len(runs) else runs
        auc = r["auc_top10"].to_numpy(float) if len(r) else np.array([])
        held = np.array([auc_top10_held(a, t, b) for a, t, b in
                         zip(r["auc_top10"], r["top10_mean"], r["budget"], strict=True)]
                        if len(r) else [])  # fmt: skip
        rows.append(
            {
                "task": task,
                "seeds": len(r),
                "auc_top10": float(auc.mean()) if len(auc) else math.nan,
                "auc_top10_std": float(auc.std()) if len(auc) else math.nan,
                "top10_mean": float(r["top10_mean"].mean()) if len(r) else math.nan,
                "top1": float(r["top1"].mean()) if len(r) else math.nan,
                "calls": float(r["calls"].mean()) if len(r) else math.nan,
                "seconds": float(r["seconds"].sum()) if len(r) else math.nan,
                "auc_top10_held": float(held.mean()) if len(held) else math.nan,
            }
        )
    table = pd.DataFrame(rows).set_index("task").join(published())
    if len(table):
        sums = table.drop(columns=[c for c in table if c.endswith("_std")] + ["seeds"]).sum()
        table.loc["sum"] = sums.reindex(table.columns)
    return table


def summary_markdown(table: pd.DataFrame, title: str = "", notes: Sequence[str] = ()) -> str:
    """The summary table as Markdown: mean ± std per column, the published baselines last."""

    def pm(mean: float, std: float) -> str:
        if not np.isfinite(mean):
            return ""
        return f"{mean:.3f}" if not np.isfinite(std) else f"{mean:.3f} ± {std:.3f}"

    held = "auc_top10_held" in table and not np.allclose(
        table["auc_top10_held"], table["auc_top10"], equal_nan=True
    )  # shown only for runs shorter than PMO's budget
    head = ["task", "seeds", "AUC top-10", "top-10", "top-1", "calls", "seconds"]
    head += [f"AUC top-10 at {PMO_BUDGET:,}, held (>=)"] if held else []
    head += list(PUBLISHED_METHODS.values())
    lines = [f"## {title}", ""] if title else []
    lines += [f"{n}" for n in notes] + ([""] if notes else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task, r in table.iterrows():
        is_sum = task == "sum"
        cells = [
            f"**{task}**" if is_sum else str(task),
            "" if is_sum else f"{int(r['seeds'])}",
            pm(r["auc_top10"], math.nan if is_sum else r["auc_top10_std"]),
            pm(r["top10_mean"], math.nan),
            pm(r["top1"], math.nan),
            "" if is_sum or not np.isfinite(r["calls"]) else f"{r['calls']:.0f}",
            "" if not np.isfinite(r["seconds"]) else f"{r['seconds']:.0f}",
        ]
        cells += [pm(r["auc_top10_held"], math.nan)] if held else []
        cells += [pm(r[m], math.nan if is_sum else r[f"{m}_std"]) for m in PUBLISHED_METHODS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def beats(table: pd.DataFrame, baseline: str = "selfies_vae_bo",
          column: str = "auc_top10_held") -> list[str]:  # fmt: skip
    """The tasks of a summary table (not "sum") whose `column` exceeds the published mean of
    `baseline` (a key of PUBLISHED_METHODS)."""
    rows = table.drop(index="sum", errors="ignore")
    return [str(t) for t, r in rows.iterrows() if r[column] > r[baseline]]


def plot_curves(out: str | Path, tasks: Sequence[str], path: str | Path, k: int = 10) -> None:
    """PNG: the top-k mean against oracle calls of every seed of each task (a panel per task,
    read from out/TASK/seed*/oracle_calls.csv); a run that stopped before its budget goes on
    dotted at its last value, as the AUC counts it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(tasks)
    if not tasks:
        return
    cols = min(len(tasks), 3)
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for csv in sorted((Path(out) / task).glob(f"seed*/{HISTORY_CSV}")):
            c = plots.curve(pd.read_csv(csv)["score"].to_numpy(float), k)
            (line,) = ax.plot(c["call"], c[f"top{k}_mean"], lw=1.2, label=csv.parent.name)
            settings = csv.parent / SETTINGS_JSON
            budget = json.loads(settings.read_text())["budget"] if settings.exists() else 0
            if len(c) and budget > len(c):
                last = c[f"top{k}_mean"].iloc[-1]
                ax.plot([len(c), budget], [last, last], ls=":", lw=1.2, color=line.get_color())
        ax.set(title=task, xlabel="oracle calls", ylabel=f"top-{k} mean")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(left=0)
        ax.legend(loc="lower right", fontsize=7)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
