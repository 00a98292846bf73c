"""What lives on disk or the Hub besides runs: intervention bundles, steering vectors, Hub transfers,
input fingerprints.

May import: config, core.
"""
