"""Networks only: the GRU and Transformer decoders, the VAE, the property predictor, losses."""
