"""MultiVAE / MultiDAE for collaborative filtering (Liang et al., WWW 2018) in pure PyTorch.

This package never imports Ray; the Ray Tune layer lives in `tuning/`.
"""

__version__ = "0.1.0"
