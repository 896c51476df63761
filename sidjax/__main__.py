"""``python -m sidjax {train,compare} [flags]``."""

from sidjax.cli import main

main()
