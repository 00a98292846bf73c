"""The `ivx` command line: every command, the one user-error wrapper (exit 2). ivx modules are
imported at the top; torch and transformers stay out of `ivx --help` (they load where used).

May import: every layer (api, recipes … core).
"""
