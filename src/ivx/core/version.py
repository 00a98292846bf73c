"""The ivx version, in one place (the package, manifests and bundles read it here)."""

VERSION = "0.1.0"
