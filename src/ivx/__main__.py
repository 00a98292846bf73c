"""`python -m ivx` entry point."""

from ivx.cli import main

main()
