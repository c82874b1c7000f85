"""Plumbing the capabilities share: atomic file writes (``io``), the Ray connection (``ray_connect``),
reading source files into normalised rows on Ray Data (``sources``), nested settings (``merge``).

Entries for ``jobs/``: ``connect_ray``, ``deep_merge``.
"""

from pipeline import lazy_exports

__all__ = ["connect_ray", "deep_merge"]
__getattr__, __dir__ = lazy_exports(__name__, {"connect_ray": "ray_connect", "deep_merge": "merge"})
