"""Training on Ray Train + DeepSpeed ZeRO.

Entry: ``run_training(cfg)`` with a ``TrainConfig``; ``DataError`` when the data cannot be used.
Runs where: ``driver.py`` and ``data.py`` on the Ray driver (checks, datasets, the ``TorchTrainer``);
``worker.py`` in each Ray Train worker (stream -> pack -> loss, with ``batches.py`` reading its shard and
``online_drafts.py`` for the online objective); ``config.py``, ``ds_config.py`` and ``metrics.py`` on both.
"""

from pipeline import lazy_exports

__all__ = ["run_training", "TrainConfig", "DataError"]
__getattr__, __dir__ = lazy_exports(__name__, {"run_training": "driver", "TrainConfig": "config", "DataError": "data"})
