"""The commands' recipes, which only orchestrate: one `prepare`, `run` (with its backends), `generate`,
`train`.

May import: every layer below (results … core).
"""
