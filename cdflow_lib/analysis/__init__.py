"""Analyses of a trained CD-Flow: robustness, perceptual uniformity, cortical-like responses,
CD maps and the latent explorer. Each module returns numbers and Figures; notebooks show them."""
