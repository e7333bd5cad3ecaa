"""The two noise processes: Gaussian (continuous) and masked (absorbing, discrete)."""
