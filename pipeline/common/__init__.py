"""Plumbing the capabilities share: atomic file writes (``io``), the Ray connection (``ray_connect``)
and reading source files into normalised rows on Ray Data (``sources``)."""
