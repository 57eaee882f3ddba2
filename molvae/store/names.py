"""The run folder's file names and its error type (no JAX: read before anything heavy loads)."""

from __future__ import annotations

RUN_FORMAT = "molvae-run-1"
RUN_JSON = "run.json"
VOCAB_JSON = "vocab.json"
METRICS_JSONL = "metrics.jsonl"  # one record per logged training step
LIKELIHOOD_JSON = "likelihood.json"  # held-out compression and the anomaly calibration
EVAL_JSON = "metrics.json"  # the MOSES metrics of samples.csv
SAMPLES_CSV = "samples.csv"
PARAMS_NPZ = "params.npz"  # final parameters of a shipped model (no checkpoints)
CHECKPOINTS = "checkpoints"
PREDICTOR = "predictor"  # predictor.json + predictor.npz: a latent property predictor
PREDICTOR_FORMAT = "molvae-predictor-1"


class RunFolderError(ValueError):
    """A run folder that is missing, incomplete or not molvae's (names the file)."""
