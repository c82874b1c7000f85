"""Ray-specific checks shared by every manifest kind: the pinned Ray version and GPU requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ._common import err, fmt_path, load_yaml, walk

# Images whose tag encodes the Ray version (rayproject/ray:2.60.0-py311-gpu).
RAY_IMAGE_REPOS = ("rayproject/ray", "rayproject/ray-ml", "rayproject/ray-llm")
_IMAGE_KEYS = ("image", "head_image", "worker_image")


def installed_ray_version() -> str:
    import ray

    return ray.__version__


def _image_tag(image: str) -> tuple[str, str | None]:
    """Split ``repo[:tag][@digest]`` into (repo, tag); a registry port is not a tag."""
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
        return repo, tag
    return image, None


def _is_ray_image(repo: str) -> bool:
    return repo in RAY_IMAGE_REPOS or repo.endswith(tuple("/" + r for r in RAY_IMAGE_REPOS))


def check_ray_version(manifest: Mapping | str | Path, source: Any = None, *, expected: str | None = None) -> str:
    """Check that every ``rayVersion`` and every ``rayproject/ray*`` image tag equals the installed Ray.

    ``manifest`` is a parsed KubeRay / launcher dict or a path to one (multi-document YAML allowed).
    Raises ``ValueError`` naming the file, the field, the found and the installed version; also when
    nothing pins a Ray version at all, or a Ray image is unpinned (no tag, ``latest``, ``nightly``).
    Returns the installed version.
    """
    expected = expected or installed_ray_version()
    if isinstance(manifest, (str, Path)):
        source = source or manifest
        docs = load_yaml(manifest, multi=True)
    else:
        docs = [manifest]
    source = source or "<manifest>"
    problems: list[str] = []
    pinned = 0
    for d_i, doc in enumerate(docs):
        for path, key, value in walk(doc):
            field = fmt_path(path + (key,))
            if len(docs) > 1:
                field = f"document[{d_i}].{field}"
            if key == "rayVersion":
                pinned += 1
                if str(value) != expected:
                    problems.append(
                        f"{field}: rayVersion {value!r} does not match the installed ray.__version__ {expected!r}"
                    )
            elif key in _IMAGE_KEYS and isinstance(value, str):
                repo, tag = _image_tag(value)
                if not _is_ray_image(repo):
                    continue  # a custom image: its Ray version cannot be read from the tag
                pinned += 1
                if tag is None or tag == "latest" or tag.startswith("nightly"):
                    problems.append(
                        f"{field}: image {value!r} is not pinned to a Ray version; use "
                        f"{repo}:{expected}-py311-gpu (installed ray.__version__ is {expected!r})"
                    )
                elif not (tag == expected or tag.startswith(expected + "-")):
                    problems.append(
                        f"{field}: image tag {tag!r} of {value!r} does not match the installed "
                        f"ray.__version__ {expected!r}"
                    )
    if pinned == 0:
        problems.append(
            f"<top level>: nothing pins the Ray version (no rayVersion, no rayproject/ray image); "
            f"installed ray.__version__ is {expected!r}"
        )
    if problems:
        raise ValueError("\n".join(f"{source}: {p}" for p in problems))
    return expected


def check_gpu_request(num_gpus: float | int | None, source: Any = "config", *, allow_autoscaling: bool = False) -> float:
    """Raise if ``num_gpus`` > 0 but no GPU is there to run on; return the number of GPUs found.

    Connected to Ray (``ray.is_initialized()``): counts ``ray.cluster_resources()["GPU"]``. Not
    connected: counts ``torch.cuda.device_count()``. With ``allow_autoscaling=True`` (an autoscaler
    adds GPU nodes on demand) a shortfall is not an error.
    """
    if num_gpus is None:
        return 0.0
    try:
        wanted = float(num_gpus)
    except (TypeError, ValueError):
        raise err(source, "num_gpus", f"must be a number, got {num_gpus!r}") from None
    if wanted < 0:
        raise err(source, "num_gpus", f"must be >= 0, got {num_gpus!r}")
    import ray

    if ray.is_initialized():
        have = float(ray.cluster_resources().get("GPU", 0))
        where = "the connected Ray cluster (ray.cluster_resources())"
    else:
        import torch

        have = float(torch.cuda.device_count()) if torch.cuda.is_available() else 0.0
        where = "this machine (torch.cuda; not connected to Ray)"
    if wanted == 0 or allow_autoscaling:
        return have
    if have == 0:
        raise err(
            source,
            "num_gpus",
            f"asks for {num_gpus:g} GPU(s) but {where} has none; set num_gpus to 0 (use_gpu: false) to run on "
            f"CPU, or start a GPU cluster (cluster/launcher/, cluster/kuberay/)",
        )
    if have < wanted:
        raise err(
            source,
            "num_gpus",
            f"asks for {num_gpus:g} GPU(s) but {where} has only {have:g}; the job would wait forever for resources",
        )
    return have
