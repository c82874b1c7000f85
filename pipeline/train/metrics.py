"""The run's own record of training: ``metrics.jsonl`` in the run folder and a loss plot at the end.

Ray keeps the metrics reported with each checkpoint; this file keeps every logged window, also those
between checkpoints and those a failed attempt logged before it died (a restart logs a ``resume``
event, and the plot keeps the last value per step). The run folder may be on object storage, so
both files go through ``pipeline.common.storage``.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from pipeline.common.storage import Location, location

PROBES = ("probe_copy", "probe_arith", "probe_word")  # medlm.probe accuracies, when the run probes


def append_metrics(path: str | Path | Location, record: dict) -> None:
    location(path, check=False).append_line(json.dumps({"time": round(time.time(), 3), **record}))


def read_metrics(path: str | Path | Location) -> list[dict]:
    target = location(path, check=False)
    if not target.is_file():
        return []
    return [json.loads(line) for line in target.read_text().splitlines() if line.strip()]


def loss_curves(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """step -> value per loss name, the last logged value winning where a restart re-ran steps."""
    curves: dict[str, dict[int, float]] = {}
    for r in records:
        if r.get("event") != "train":
            continue
        for name in ("loss", "mask_loss", "edit_loss", *PROBES):
            if r.get(name) is not None:
                curves.setdefault(name, {})[int(r["step"])] = float(r[name])
    return {name: sorted(points.items()) for name, points in curves.items()}


def plot_losses(metrics_path: str | Path | Location, png_path: str | Path | Location) -> Location | None:
    """Write a PNG of the loss curves (matplotlib, Agg backend); None when nothing was logged."""
    curves = loss_curves(read_metrics(metrics_path))
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probes = {name: curves.pop(name) for name in PROBES if name in curves}
    fig, axes = plt.subplots(1, 2 if probes else 1, figsize=(12 if probes else 7, 4), squeeze=False)
    ax = axes[0][0]
    for name, points in curves.items():
        ax.plot([s for s, _ in points], [v for _, v in points], label=name, marker="." if len(points) < 30 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(location(metrics_path, check=False).parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    if probes:  # what the loss hides: are numbers copied and computed, or only the phrasing learned?
        ax = axes[0][1]
        for name, points in probes.items():
            ax.plot([s for s, _ in points], [v for _, v in points], label=name[len("probe_"):], marker=".")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("probe accuracy (held-out answers)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("masked numbers: copied / computed; words")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    target = location(png_path, check=False)
    target.write_bytes(png.getvalue())
    return target
