"""Metrics of generated samples (FID, KID, IS) and the networks they use."""
