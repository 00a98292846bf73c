"""Running cells exactly and fast: baselines, hook patches, the executor loop, the exact shortcuts,
scoring, decoding.

May import: plan, model, store, config, core.
"""
