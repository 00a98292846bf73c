"""`python -m ivx` entry point."""

from ivx.cli.app import main

main()
