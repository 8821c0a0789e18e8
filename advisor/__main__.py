"""Entry point for ``python -m advisor``."""

from advisor.shell.cli import main

main()
