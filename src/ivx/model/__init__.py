"""Loading causal LMs and their tokenizers; components resolved to module sites; hooks; KV caches; the
memory budget.

May import: store, config, core.
"""
