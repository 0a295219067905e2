"""`python -m multivae.train` and `multivae-train`: the command's name only; the CLI is `multivae.train_cli`
(the training loop it drives is `multivae.training`)."""

import sys

from multivae.train_cli import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    sys.exit(cli())
