"""Analyses of finished runs and of the quantizers: K-means agreement, latent choice, posterior sharpness, probe standardisation, the tokenizer example."""
