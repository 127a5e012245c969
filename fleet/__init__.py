"""model-fleet: the core (pure), the image packages, the host layer and the CLI.

See docs/architecture.md for which subpackage runs where and may import what. This file
ships in both images and must stay free of imports.
"""
