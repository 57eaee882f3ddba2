"""Gather a multirun folder into one table and figures: python experiments/collect.py DIR.

DIR is what `python experiments/train.py -m ...` (or pipeline.py -m) wrote: one job folder per
run, each with .hydra/overrides.yaml, run.json, metrics.jsonl and, if the pipeline scored
samples, metrics.json. Writes into DIR (or --out):

  summary.csv          one row per job: job, status (ok | failed), note, overrides, one column per
                       overridden key, the final validation metrics (val_kl in nats and
                       val_kl_bits), training time, the sample metrics of metrics.json and
                       the held-out NLL / rate / distortion in bits of likelihood.json
                       (test_nll_bits, test_rate_bits, test_distortion_bits; pipeline runs)
  summary.md           the same as a markdown table (overrides that vary between jobs only)
  rate_distortion.png  KL (bits) against reconstruction accuracy, one labelled point per run;
                       beside it, distortion (reconstruction nats) against the same KL
  curves.png           validation ELBO and training loss against step, one line per run

A job is `ok` when metrics.jsonl holds a validation record at its last step (train.steps); a job
folder without one (crashed, killed, still running) is `failed`, with the reason in `note`. One
failed job never stops the others. Exit status 0, or 1 with --strict if any job failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

log = logging.getLogger("molvae.collect")

# The run folder's file names: molvae.store.names imports no JAX, so collecting stays light.
from molvae.store.names import EVAL_JSON, LIKELIHOOD_JSON, METRICS_JSONL, RUN_JSON  # noqa: E402

HYDRA_DIR, OPTUNA_RESULTS = ".hydra", "optimization_results.yaml"
LIKELIHOOD_KEYS = ("nll_bits", "rate_bits", "distortion_bits")
VAL_KEYS = ("val_elbo", "val_recon", "val_kl", "val_kl_bits", "val_recon_acc", "val_token_acc")
SKIP_DIRS = {".submitit", "checkpoints", "wandb", ".hydra"}


# ----------------------------------------------------------------------------- reading


def find_jobs(root: Path) -> list[Path]:
    """Job folders under root (root itself if it is a run folder), in natural order (2 < 10)."""
    found = set()
    for marker in (f"{HYDRA_DIR}/overrides.yaml", METRICS_JSONL, RUN_JSON):
        for p in root.rglob(Path(marker).name):
            job = p.parent.parent if p.parent.name == HYDRA_DIR else p.parent
            rel = job.relative_to(root).parts
            if not SKIP_DIRS.intersection(rel):
                found.add(job)
    key = lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]  # noqa: E731
    return sorted(found, key=key)


def _scalar(text: str) -> Any:
    """'0.05' -> 0.05, 'linear' -> 'linear', '[a,b]' -> '[a,b]' (lists stay text)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, str, bool)) or value is None else text


def read_overrides(job: Path) -> list[str]:
    path = job / HYDRA_DIR / "overrides.yaml"
    if not path.exists():
        return []
    items = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    return [str(x) for x in items]


def split_override(item: str) -> tuple[str, Any]:
    key, _, value = item.partition("=")
    return key.lstrip("+~"), _scalar(value)


def expected_steps(job: Path) -> int | None:
    """train.steps of the job, from Hydra's resolved config or run.json."""
    path = job / HYDRA_DIR / "config.yaml"
    try:
        if path.exists():
            cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            return int(cfg["train"]["steps"])
        cfg = json.loads((job / RUN_JSON).read_text(encoding="utf-8")).get("config", {})
        return int(cfg["train"]["steps"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of a metrics.jsonl, and how many lines were unreadable (a killed writer)."""
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records, bad


def summarize_job(root: Path, job: Path) -> dict[str, Any]:
    """One row: job, status, note, overrides, final metrics. Never raises on a broken folder."""
    row: dict[str, Any] = {"job": str(job.relative_to(root)) or ".", "status": "failed"}
    try:
        overrides = read_overrides(job)
        row["overrides"] = " ".join(overrides)
        parsed = dict(split_override(o) for o in overrides)
        row.update(parsed, _keys=list(parsed))
        row.update(_final_metrics(job))
    except Exception as e:  # noqa: BLE001 - a broken folder becomes a failed row, not a crash
        row["note"] = f"unreadable: {type(e).__name__}: {e}"
    return row


def _final_metrics(job: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    path = job / METRICS_JSONL
    if not path.exists():
        return {"status": "failed", "note": "no metrics.jsonl: failed before training"}
    records, bad = read_records(path)
    train_recs = [r for r in records if "loss" in r]
    val_recs = [r for r in records if "val_elbo" in r]
    want = expected_steps(job)
    last_step = max((int(r.get("step", 0)) for r in records), default=0)
    failed, note = False, ""
    if not val_recs:
        failed, note = True, f"no validation record (last step {last_step})"
    elif want is not None and int(val_recs[-1].get("step", 0)) < want:
        failed, note = True, f"no final record: stopped at step {last_step} of {want}"
    if val_recs:
        final = val_recs[-1]
        out["step"] = int(final.get("step", last_step))
        out.update({k: _number(final[k]) for k in VAL_KEYS if k in final})
        if "val_kl" in final:
            out["val_kl_bits"] = _number(final["val_kl"]) / math.log(2)
    else:
        out["step"] = last_step
    if train_recs:
        out["loss"] = _number(train_recs[-1]["loss"])
        out["time_s"] = _number(train_recs[-1].get("time"))
    eval_path = job / EVAL_JSON
    if eval_path.exists():
        scores = json.loads(eval_path.read_text(encoding="utf-8"))
        out.update({k: v for k, v in scores.items() if isinstance(v, (int, float))})
    like_path = (
        job / LIKELIHOOD_JSON
    )  # held-out IW bound of pipeline runs (run_eval.test_likelihood)
    if like_path.exists():
        like = json.loads(like_path.read_text(encoding="utf-8"))
        out.update({f"test_{k}": like[k] for k in LIKELIHOOD_KEYS if k in like})
    if bad:
        note = "; ".join(x for x in (note, f"{bad} unreadable metrics lines") if x)
    out["status"] = "failed" if failed else "ok"
    out["note"] = note
    return out


def _number(v: Any) -> float:
    """A metric as float; the JSON-lines logger writes nan/inf as strings."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


METRIC_ORDER = ("step", *VAL_KEYS, "loss", "time_s")
FIRST = ("job", "status", "note", "overrides")


def collect(root: Path) -> tuple[pd.DataFrame, list[str]]:
    """The summary table of a multirun folder, and the override keys (its parameter columns)."""
    jobs = find_jobs(root)
    rows = [summarize_job(root, job) for job in jobs]
    keys: list[str] = []
    for row in rows:
        for k in row.pop("_keys", []):
            if k not in keys and k not in FIRST + METRIC_ORDER:
                keys.append(k)
    df = pd.DataFrame(rows)
    if df.empty:
        return df, keys
    metrics = [c for c in METRIC_ORDER if c in df.columns]
    ordered = [c for c in FIRST if c in df.columns] + [k for k in keys if k in df] + metrics
    df = df.reindex(columns=ordered + [c for c in df.columns if c not in ordered])
    df["note"] = df["note"].fillna("") if "note" in df else ""
    if "step" in df:
        df["step"] = df["step"].astype("Int64")
    return df, keys


def varying_keys(df: pd.DataFrame, keys: list[str]) -> list[str]:
    """Override keys whose value differs between jobs (all of them if none differs)."""
    present = [k for k in keys if k in df.columns]
    vary = [k for k in present if df[k].astype(str).nunique(dropna=False) > 1]
    return vary or present


# ----------------------------------------------------------------------------- writing


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def to_markdown(df: pd.DataFrame, keys: list[str], root: Path) -> str:
    """A markdown report: counts, the best run, the table (varying overrides only)."""
    n_ok = int((df["status"] == "ok").sum()) if not df.empty else 0
    lines = [f"# Sweep summary: {root}", "", f"{len(df)} jobs: {n_ok} ok, {len(df) - n_ok} failed."]
    elbo = df.loc[df["status"] == "ok", "val_elbo"].dropna() if "val_elbo" in df else []
    if len(elbo):
        best = df.loc[elbo.idxmin()]
        lines.append(f"Lowest validation ELBO: {best['val_elbo']:.4g} nats, job {best['job']}.")
    optuna = root / OPTUNA_RESULTS
    if optuna.exists():
        res = yaml.safe_load(optuna.read_text(encoding="utf-8")) or {}
        if "best_value" in res:
            lines.append(
                f"Optuna best value {res['best_value']:.4g} with {res.get('best_params')}."
            )
    lines.append("")
    if df.empty:
        return "\n".join(lines + ["No job folders found."]) + "\n"
    vary = varying_keys(df, keys)
    cols = ["job", "status", *vary]
    cols += [c for c in df.columns if c not in (*cols, *keys, "overrides", "note")]
    cols += ["note"]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    lines += ["", "val_kl in nats, val_kl_bits = val_kl / ln 2; accuracies are fractions."]
    return "\n".join(lines) + "\n"


def _label(row: pd.Series, keys: list[str]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={_fmt(row[k])}" for k in keys if k in row)


def plot_rate_distortion(df: pd.DataFrame, keys: list[str], path: Path) -> bool:
    """KL bits vs reconstruction accuracy (and vs distortion), one labelled point per ok run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    need = ["val_kl_bits", "val_recon_acc", "val_recon"]
    if df.empty or any(c not in df for c in need):
        return False
    ok = df[df["status"] == "ok"]
    ok = ok[ok[need].apply(pd.to_numeric, errors="coerce").abs().lt(math.inf).all(axis=1)]
    if ok.empty:
        return False
    keys = varying_keys(df, keys)
    # Group by latent size when it varies (one curve per size across beta), else by the first key.
    group = next((k for k in keys if k.endswith("latent_dim")), keys[0] if len(keys) > 1 else None)
    rest = [k for k in keys if k != group]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    groups = ok.groupby(group, sort=True) if group else [(None, ok)]
    for value, part in groups:
        part = part.sort_values("val_kl_bits")
        name = f"{group.split('.')[-1]}={_fmt(value)}" if group else None
        for ax, y in zip(axes, ("val_recon_acc", "val_recon"), strict=True):
            ax.plot(part["val_kl_bits"], part[y], "o-", label=name, alpha=0.85)
            for _, r in part.iterrows():
                ax.annotate(
                    _label(r, rest or keys) or r["job"],
                    (r["val_kl_bits"], r[y]),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                )
    axes[0].set(
        xlabel="rate: KL(q(z|x) || p(z)) [bits]",
        ylabel="reconstruction accuracy (whole molecule, greedy)",
        title="Rate vs reconstruction",
    )
    axes[1].set(
        xlabel="rate: KL [bits]",
        ylabel="distortion: reconstruction NLL [nats]",
        title="Rate-distortion plane",
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        if group:
            ax.legend(fontsize=8)
    fig.suptitle(f"{len(ok)} runs (validation set, final step)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_curves(root: Path, df: pd.DataFrame, keys: list[str], path: Path) -> bool:
    """Validation ELBO and training loss against step, one line per job."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if df.empty:
        return False
    keys = varying_keys(df, keys)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    drawn = False
    for _, r in df.iterrows():
        f = root / r["job"] / METRICS_JSONL
        if not f.exists():
            continue
        recs, _ = read_records(f)
        label = _label(r, keys) or r["job"]
        for ax, key in zip(axes, ("val_elbo", "loss"), strict=True):
            pts = [(x["step"], x[key]) for x in recs if key in x and "step" in x]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=".", label=label)
                drawn = True
    if not drawn:
        plt.close(fig)
        return False
    axes[0].set(xlabel="step", ylabel="validation ELBO [nats]", title="Validation ELBO")
    axes[1].set(xlabel="step", ylabel="training loss [nats]", title="Training loss")
    for ax in axes:
        ax.grid(alpha=0.3)
    if len(df) <= 20:
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Gather a multirun folder into summary.csv, summary.md and figures."
    )
    parser.add_argument("dir", type=Path, help="multirun folder (hydra.sweep.dir)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: DIR)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any job failed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root: Path = args.dir
    if not root.is_dir():
        parser.error(f"{root} is not a folder")
    out = args.out or root
    out.mkdir(parents=True, exist_ok=True)

    df, keys = collect(root)
    df.to_csv(out / "summary.csv", index=False)
    md = to_markdown(df, keys, root)
    (out / "summary.md").write_text(md, encoding="utf-8")
    written = ["summary.csv", "summary.md"]
    if plot_rate_distortion(df, keys, out / "rate_distortion.png"):
        written.append("rate_distortion.png")
    if plot_curves(root, df, keys, out / "curves.png"):
        written.append("curves.png")
    print(md)  # the CLI prints its table
    log.info("wrote %s in %s", ", ".join(written), out)
    failed = int((df["status"] != "ok").sum()) if not df.empty else 0
    return 1 if args.strict and (failed or df.empty) else 0


if __name__ == "__main__":
    sys.exit(main())
