"""The run directory and everything written into it or shown from it: summaries, tables, figures,
progress.

May import: methods, engine, plan, model, store, config, core.
"""
