"""The one way every job reaches Ray: the cluster at ``RAY_ADDRESS`` when it is set, else a local Ray."""

from __future__ import annotations

import os
from typing import Optional

# ray.init options that also apply when connecting to a running cluster (the others size a new one)
_CONNECT_OPTIONS = ("log_to_driver", "configure_logging", "logging_level")


def connect_ray(**local_options) -> Optional[str]:
    """Connect to the Ray at ``RAY_ADDRESS``, or start a local one with ``local_options`` (no dashboard unless
    ``include_dashboard=True``: training asks for one, every other job starts lighter without).

    Returns a line saying which was done, or None when this process was already connected.
    """
    import ray

    if ray.is_initialized():
        return None
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **{k: v for k, v in local_options.items() if k in _CONNECT_OPTIONS})
        return f"connected to Ray at {address}"
    ray.init(**{"include_dashboard": False, **local_options})
    return f"started a local Ray ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"
