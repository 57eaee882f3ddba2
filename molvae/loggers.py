"""Metric sinks for a run: JSON lines in the run folder, and optionally Weights & Biases."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Logger(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...
    def finish(self) -> None: ...


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no nan/inf; keep the information as a string
    return v


class JsonlLogger:
    """Appends one JSON object per record to a file (`metrics.jsonl` of the run folder)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")

    def finish(self) -> None:
        pass


def truncate_jsonl(path: Path, step: int) -> None:
    """Keep records with step <= `step`: a resumed run rewrites what followed its checkpoint."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash mid-write
            continue
        if rec.get("step", -1) <= step:
            keep.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(k + "\n" for k in keep))
    os.replace(tmp, path)


class WandbLogger:
    """Weights & Biases run writing into the run folder; offline unless mode='online'."""

    def __init__(
        self,
        run_dir: str | Path,
        config: dict[str, Any],
        project: str = "molvae",
        mode: str = "offline",
        name: str | None = None,
        group: str | None = None,
        resume_id: str | None = None,
    ):
        import wandb  # imported here: wandb is slow to import and only needed when asked for

        os.environ.setdefault("WANDB_SILENT", "true")
        self._wandb = wandb
        self.run = wandb.init(
            project=project,
            dir=str(run_dir),
            config=config,
            mode=mode,
            name=name,
            group=group,
            id=resume_id,
            resume="allow" if resume_id else None,
            reinit="finish_previous",
        )

    def log(self, record: dict[str, Any]) -> None:
        rec = {k: _clean(v) for k, v in record.items() if k != "step"}
        self.run.log(rec, step=int(record["step"]) if "step" in record else None)

    def log_images(self, images: dict[str, str | Path]) -> None:
        self.run.log({k: self._wandb.Image(str(p)) for k, p in images.items()})

    def log_table(
        self, name: str, df: Any, molecule_column: str | None = "smiles", max_rows: int = 200
    ) -> None:
        """A wandb.Table of a DataFrame; with molecule drawings when a SMILES column is given."""
        from rdkit.Chem import Draw

        from molvae.chem import mol_from_smiles

        mols = None
        if molecule_column and molecule_column in df.columns:
            mols = [mol_from_smiles(s) for s in df[molecule_column]]
            keep = [m is not None for m in mols]  # drawings need molecules: valid rows only
            df, mols = df[keep], [m for m in mols if m is not None]
        df = df.head(max_rows).reset_index(drop=True)
        table = self._wandb.Table(dataframe=df)
        if mols is not None:
            table.add_column(
                "drawing",
                [self._wandb.Image(Draw.MolToImage(m, size=(200, 200))) for m in mols[:max_rows]],
            )
        self.run.log({name: table})

    def log_summary(self, values: dict[str, Any]) -> None:
        """Final values of the run (wandb's run summary: the runs table), not a series."""
        self.run.summary.update({k: _clean(v) for k, v in values.items()})

    def finish(self) -> None:
        self.run.finish()


class MultiLogger:
    """Fans each record out to several loggers."""

    def __init__(self, *loggers: Logger):
        self.loggers = [lg for lg in loggers if lg is not None]

    def log(self, record: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.log(record)

    def finish(self) -> None:
        for lg in self.loggers:
            lg.finish()

    def log_artifacts(self, run_dir: Path, samples: Any = None) -> None:
        """Report figures and a table of samples, for the loggers that keep such things."""
        for lg in self.loggers:
            if isinstance(lg, WandbLogger):
                figures = sorted((run_dir / "figures").glob("*.png"))
                lg.log_images({f"figures/{p.stem}": p for p in figures})
                if samples is not None:
                    lg.log_table("samples", samples)
