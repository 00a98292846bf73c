"""Tokens, positions, edits, the sweep grid of cells, every pre-run check, the cost model and the run-
time estimate.

May import: model, store, config, core.
"""
