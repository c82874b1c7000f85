"""KubeRay ``ray.io/v1`` manifests (RayJob, RayService, RayCluster) as pydantic models.

The models cover the fields a Ray deployment depends on, with Kubernetes' types (integers are not
coerced from strings); other Kubernetes fields pass through unchecked. On top of them: replica bounds,
unique group names, GPU requests equal to whole-number limits, the embedded ``runtimeEnvYAML`` checked
as a Ray runtime env, the embedded ``serveConfigV2`` as a Serve config, and the Ray version pin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from ._common import err, join, load_sub_yaml, load_yaml, pydantic_error
from .ray_pins import check_ray_version
from .runtime_env import validate_runtime_env
from .serve import validate_serve_dict

KINDS = ("RayJob", "RayService", "RayCluster")
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

Count = Annotated[StrictInt, Field(ge=0)]
Quantity = Union[StrictInt, StrictFloat, StrictStr]


class _K8s(BaseModel):
    model_config = ConfigDict(extra="allow")  # fields not modelled here are Kubernetes' business


class Resources(_K8s):
    requests: dict[str, Quantity] = {}
    limits: dict[str, Quantity] = {}


class Container(_K8s):
    name: Annotated[StrictStr, Field(min_length=1)]
    image: Annotated[StrictStr, Field(min_length=1)]
    resources: Resources = Resources()


class PodSpec(_K8s):
    containers: Annotated[list[Container], Field(min_length=1)]


class PodTemplate(_K8s):
    spec: PodSpec


class HeadGroup(_K8s):
    rayStartParams: dict[str, StrictStr] = {}
    template: PodTemplate


class WorkerGroup(_K8s):
    groupName: Annotated[StrictStr, Field(pattern=_DNS_LABEL)]
    replicas: Count
    minReplicas: Count
    maxReplicas: Count
    numOfHosts: Annotated[StrictInt, Field(ge=1)] = 1
    rayStartParams: dict[str, StrictStr] = {}
    template: PodTemplate


class ClusterSpec(_K8s):
    rayVersion: Annotated[StrictStr, Field(pattern=r"^\d+\.\d+\.\d+$")]
    enableInTreeAutoscaling: StrictBool = False
    headGroupSpec: HeadGroup
    workerGroupSpecs: list[WorkerGroup] = []


class Metadata(_K8s):
    name: Annotated[StrictStr, Field(max_length=63, pattern=_DNS_LABEL)]


class RayJobSpec(_K8s):
    entrypoint: Annotated[StrictStr, Field(min_length=1)]
    runtimeEnvYAML: Optional[StrictStr] = None
    submissionMode: Literal["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"] = "K8sJobMode"
    shutdownAfterJobFinishes: StrictBool = False
    ttlSecondsAfterFinished: Optional[Count] = None
    activeDeadlineSeconds: Optional[Annotated[StrictInt, Field(ge=1)]] = None
    backoffLimit: Optional[Count] = None
    suspend: StrictBool = False
    rayClusterSpec: ClusterSpec


class RayServiceSpec(_K8s):
    serveConfigV2: Annotated[StrictStr, Field(min_length=1)]
    rayClusterConfig: ClusterSpec


class _Manifest(_K8s):
    apiVersion: Literal["ray.io/v1"]
    metadata: Metadata


class RayJob(_Manifest):
    kind: Literal["RayJob"]
    spec: RayJobSpec


class RayService(_Manifest):
    kind: Literal["RayService"]
    spec: RayServiceSpec


class RayCluster(_Manifest):
    kind: Literal["RayCluster"]
    spec: ClusterSpec


MODELS: dict[str, type[_Manifest]] = {"RayJob": RayJob, "RayService": RayService, "RayCluster": RayCluster}


def _cluster_spec(doc: _Manifest) -> tuple[str, ClusterSpec]:
    if isinstance(doc, RayJob):
        return "spec.rayClusterSpec", doc.spec.rayClusterSpec
    if isinstance(doc, RayService):
        return "spec.rayClusterConfig", doc.spec.rayClusterConfig
    return "spec", doc.spec


def _number(q: Any) -> float | None:
    try:
        return float(q)
    except (TypeError, ValueError):
        return None


def _check_cluster(cspec: ClusterSpec, source: Any, field: str) -> None:
    """Replica bounds, unique group names, GPU requests == whole-number limits."""
    groups: list[tuple[str, HeadGroup | WorkerGroup]] = [("headGroupSpec", cspec.headGroupSpec)]
    names: set[str] = set()
    for i, g in enumerate(cspec.workerGroupSpecs):
        g_field = f"workerGroupSpecs[{i}]"
        if not g.minReplicas <= g.replicas <= g.maxReplicas:
            raise err(
                source,
                join(field, f"{g_field}.replicas"),
                f"need minReplicas <= replicas <= maxReplicas, got {g.minReplicas} <= {g.replicas} <= {g.maxReplicas}",
            )
        if g.groupName in names:
            raise err(source, join(field, f"{g_field}.groupName"), f"duplicate group name {g.groupName!r}")
        names.add(g.groupName)
        groups.append((g_field, g))
    for g_field, g in groups:
        for c_i, c in enumerate(g.template.spec.containers):
            c_field = join(field, f"{g_field}.template.spec.containers[{c_i}].resources")
            req = c.resources.requests.get("nvidia.com/gpu")
            lim = c.resources.limits.get("nvidia.com/gpu")
            if req is not None and lim is None:
                raise err(source, c_field + ".limits.nvidia.com/gpu", "GPUs must be set in limits (Kubernetes extended resource)")
            if lim is not None:
                n = _number(lim)
                if n is None or n < 0 or n != int(n):
                    raise err(source, c_field + ".limits.nvidia.com/gpu", f"must be a whole number, got {lim!r}")
                if req is not None and _number(req) != n:
                    raise err(source, c_field + ".requests.nvidia.com/gpu", f"{req!r} != limits {lim!r}")


def validate_kuberay(path: str | Path) -> list[dict]:
    """Validate a KubeRay manifest file (multi-document allowed); return the parsed documents."""
    p = Path(path)
    docs = load_yaml(p, multi=True)
    for d_i, raw in enumerate(docs):
        src = p if len(docs) == 1 else f"{p} (document {d_i})"
        kind = raw.get("kind")
        if kind not in KINDS:
            raise err(src, "kind", f"expected RayJob, RayService or RayCluster, got {kind!r}")
        try:
            doc = MODELS[kind].model_validate(raw)
        except pydantic.ValidationError as e:
            raise pydantic_error(e, src) from e
        field, cspec = _cluster_spec(doc)
        _check_cluster(cspec, src, field)
        if isinstance(doc, RayJob):
            spec = doc.spec
            if spec.ttlSecondsAfterFinished is not None and not spec.shutdownAfterJobFinishes:
                raise err(src, "spec.ttlSecondsAfterFinished", "has no effect unless shutdownAfterJobFinishes is true")
            if spec.runtimeEnvYAML is not None:
                env = load_sub_yaml(spec.runtimeEnvYAML, src, "spec.runtimeEnvYAML")
                validate_runtime_env(env or {}, src, prefix="spec.runtimeEnvYAML")
        elif isinstance(doc, RayService):
            serve_cfg = load_sub_yaml(doc.spec.serveConfigV2, src, "spec.serveConfigV2")
            validate_serve_dict(serve_cfg, src, prefix="spec.serveConfigV2")
            for a_i, app in enumerate(serve_cfg.get("applications") or []):
                if app.get("runtime_env"):
                    validate_runtime_env(
                        app["runtime_env"], src, prefix=f"spec.serveConfigV2.applications[{a_i}].runtime_env"
                    )
        check_ray_version(raw, src)
    return docs
