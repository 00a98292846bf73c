"""YAML → a typed `Experiment`: the pydantic schema, the loader with file:line problems, prompt
sources, the schema docs.

May import: core.
"""
