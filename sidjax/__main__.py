"""``python -m sidjax {train,compare} [flags]``."""

from sidjax.train.cli import main

main()
