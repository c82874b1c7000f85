"""Where the served checkpoint comes from: a local directory or an ``s3://`` URI.

The driver checks it once, before Ray starts (a bad URI, a missing bucket, or a place with no
checkpoint in it is refused by name), and keeps the URI in the app's arguments. Each replica then
loads its own node's copy (``local_copy``: the directory itself, or a cached download), so a replica
on another node never depends on a path that exists only where the driver ran.
"""

from __future__ import annotations

from pipeline.common.checkpoints import check_checkpoint_at
from pipeline.common.storage import location

__all__ = ["checked_checkpoint"]


def checked_checkpoint(target: str) -> str:
    """The checkpoint as replicas should receive it: a resolved local path, or the URI as given.

    An ``s3://`` checkpoint is checked in place (config and safetensors headers), not downloaded: the
    driver may run where there is no room, or no need, for the weights.
    """
    loc = location(target)
    check_checkpoint_at(loc)
    return loc.uri
