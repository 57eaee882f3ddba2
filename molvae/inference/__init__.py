"""Inference: the latent codec (SMILES -> latents, likelihoods), the decoding engine (latents ->
SMILES), latent geometry (prior, interpolation, neighbourhoods) and the anomaly calibration."""
