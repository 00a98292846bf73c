"""How a run turns cells into rows, one row per method in `registry` (exact, attribution, path
patching, readouts: logit lens and DLA), and controls, IIT.

May import: engine, plan, model, store, config, core.
"""
