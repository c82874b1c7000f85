"""Where the served checkpoint comes from: a local directory or an ``s3://`` URI.

The driver checks it once, before Ray starts (a bad URI, a missing bucket, or a place with no
checkpoint in it is refused by name), and keeps the URI in the app's arguments. Each replica then
loads its own node's copy (``local_copy``: the directory itself, or a cached download), so a replica
on another node never depends on a path that exists only where the driver ran.
"""

from __future__ import annotations

from medlm.checkpoint import check_checkpoint_dir
from pipeline.common.storage import StorageError, local_copy, location

__all__ = ["checked_checkpoint"]


def checked_checkpoint(target: str) -> str:
    """The checkpoint as replicas should receive it: a resolved local path, or the URI as given."""
    loc = location(target)
    try:
        check_checkpoint_dir(local_copy(loc))
    except (FileNotFoundError, ValueError) as e:
        if loc.is_local or isinstance(e, StorageError):
            raise
        raise StorageError(f"{loc.uri} is not a medlm checkpoint: {e}") from None  # the URI, not the cache
    return loc.uri
