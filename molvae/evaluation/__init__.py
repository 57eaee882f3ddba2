"""Evaluation: the MOSES metrics, ChemNet/FCD, a run's metrics and held-out likelihood, the run
report, and the sample-quality protocol."""
