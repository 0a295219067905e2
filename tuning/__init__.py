"""Hyperparameter search for Mult-VAE: Ray Tune runs the trials, Optuna proposes them, ASHA stops the weak."""
