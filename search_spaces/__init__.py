"""The shipped search spaces (YAML files, documented in README.md here), installed with the package so that
`multivae-tune --space smoke` works from any folder after a plain `pip install`. `tuning.space` reads them."""
