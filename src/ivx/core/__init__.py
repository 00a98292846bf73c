"""The bottom layer: the user-error base class and config problems, the intervention-kind and metric
tables, the version.

May import: nothing (no other ivx layer).
"""
