"""The interactive report of a run (report.html: plotly figures, drill-down, config and manifest), the
index page of a runs directory and the side-by-side comparison of two runs.

May import: methods, engine, plan, model, store, config, core.
"""
