"""The `ivx` command line: every command, the one user-error wrapper (exit 2). ivx imports sit in
command bodies so `ivx --help` is instant.

May import: every layer (api, recipes … core).
"""
