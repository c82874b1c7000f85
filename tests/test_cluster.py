"""Cluster data files (cluster/) are valid, consistent with each other, and broken copies are rejected.

Fast (no Ray cluster is started): Ray's own schemas (ServeDeploySchema, RuntimeEnv, ray-schema.json)
and DeepSpeed's own DeepSpeedConfig do the checking, through jobs.check_cluster (`medlm check-cluster`).
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from jobs import check_cluster as cc
from jobs.cli import main as medlm

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
LAUNCHERS = sorted((CLUSTER / "launcher").glob("*.yaml"))
DEEPSPEED = [CLUSTER / "deepspeed" / f"zero{s}.json" for s in (0, 1, 2, 3)]
SERVE = CLUSTER / "serve.yaml"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"

# Ray's own pydantic models emit deprecation warnings on import; they are not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RAY_VERSION = ray.__version__
IMAGE = f"rayproject/ray:{RAY_VERSION}-py311-gpu"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _write(tmp_path: Path, name: str, data: dict, sub: str = "") -> Path:
    d = tmp_path / sub if sub else tmp_path
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def _cluster_spec(doc: dict) -> dict:
    spec = doc["spec"]
    return spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec


# ------------------------------------------------------------------------------------------------
# the files as committed are valid


def test_expected_files_exist():
    assert RUNTIME_ENV.exists() and SERVE.exists()
    assert [p.name for p in KUBERAY] == ["rayjob-generate.yaml", "rayjob-train.yaml", "rayservice.yaml"]
    assert [p.name for p in LAUNCHERS] == ["aws-gpu.yaml", "gcp-gpu.yaml"]
    assert all(p.exists() for p in DEEPSPEED)


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifests_valid(path):
    docs = cc.validate_kuberay(path)
    doc = docs[0]
    cspec = _cluster_spec(doc)
    assert cspec["rayVersion"] == RAY_VERSION
    images = [cspec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]]
    images += [g["template"]["spec"]["containers"][0]["image"] for g in cspec["workerGroupSpecs"]]
    assert set(images) == {IMAGE}
    # every manifest has a GPU worker group with whole-GPU limits
    gpu_limits = [
        g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
        for g in cspec["workerGroupSpecs"]
    ]
    assert any(int(x) >= 1 for x in gpu_limits if x is not None)
    if doc["kind"] == "RayJob":
        assert doc["spec"]["shutdownAfterJobFinishes"] is True
        assert isinstance(doc["spec"]["ttlSecondsAfterFinished"], int)


def test_rayjob_entrypoints():
    gen = _load(CLUSTER / "kuberay" / "rayjob-generate.yaml")["spec"]["entrypoint"]
    train = _load(CLUSTER / "kuberay" / "rayjob-train.yaml")["spec"]["entrypoint"]
    assert gen == "python -m jobs.generate --config jobs/configs/generate_cluster.yaml"
    assert train == "python -m jobs.train --config jobs/configs/train_llada8b.yaml"


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_yaml_valid_against_ray_schema(path):
    cfg = cc.validate_launcher_yaml(path)
    assert cfg["docker"]["image"] == IMAGE
    gpus = [nt["resources"].get("GPU", 0) for nt in cfg["available_node_types"].values()]
    assert max(gpus) == 8
    # and Ray's own launcher validation (private API; skip if it moved)
    try:
        from ray.autoscaler._private.util import validate_config
    except ImportError:  # pragma: no cover
        pytest.skip("ray.autoscaler._private.util.validate_config not available in this Ray")
    validate_config(cfg)


def test_serve_config_valid():
    schema = cc.validate_serve_config(SERVE)
    (app,) = schema.applications
    assert app.name == "medlm" and app.import_path == "pipeline.serve:build_app" and app.route_prefix == "/"
    assert app.args["max_batch_size"] == 16 and app.args["batch_wait_timeout_s"] == 0.01
    assert app.args["checkpoint"]
    (dep,) = app.deployments
    assert dep.name == "MedlmServer"
    assert dep.ray_actor_options.num_gpus == 1
    assert dep.autoscaling_config["min_replicas"] == 1 and dep.autoscaling_config["max_replicas"] == 4
    assert "target_ongoing_requests" in dep.autoscaling_config
    assert schema.http_options.host == "127.0.0.1" and schema.http_options.port == 8000


def test_runtime_env_valid():
    env = cc.validate_runtime_env(RUNTIME_ENV)
    assert "working_dir" not in env  # supplied by `ray job submit --working-dir .`
    for pattern in (".venv", "runs", "results", ".git", "benchmarks/results", "*.parquet"):
        assert pattern in env["excludes"], pattern
    assert env["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"
    assert "DS_ACCELERATOR" not in env["env_vars"]
    assert "RAY_DATA_DISABLE_PROGRESS_BARS" not in env["env_vars"]
    names = {p.split("=")[0].split(">")[0].split("<")[0].split("[")[0].strip() for p in env["pip"]["packages"]}
    assert not names & {"ray", "torch"}  # both come from the image
    assert {"deepspeed", "transformers", "safetensors", "pyarrow"} <= names


def _req_name(req: str) -> str:
    for sep in "[<>=!~; ":
        req = req.split(sep)[0]
    return req.strip().lower()


def _project_dependencies() -> list[str]:
    try:
        import tomllib
    except ImportError:  # pragma: no cover - python < 3.11
        pytest.skip("tomllib needs Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def _ray_brings() -> set[str]:
    """What the image's ray[data,train,serve] installs with it (pydantic, jsonschema, ...)."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    out = set()
    for r in map(Requirement, requires("ray") or []):
        if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in ("data", "train", "serve")):
            out.add(r.name.lower())
    return out


def test_runtime_env_pip_covers_project_dependencies():
    """Every runtime dependency in pyproject.toml is in the runtime_env, except what the image brings:
    ray and what ray[data,train,serve] requires, torch, and matplotlib (plots on a workstation)."""
    deps = _project_dependencies()
    name = _req_name
    wanted = {name(d) for d in deps} - {"ray", "torch", "matplotlib"} - _ray_brings()
    have = {name(p) for p in _load(RUNTIME_ENV)["pip"]["packages"]}
    assert wanted <= have, f"runtime_env.yaml lacks {sorted(wanted - have)} from pyproject.toml"


def test_validator_imports_are_runtime_dependencies():
    """Every third-party module jobs/check_cluster imports is a [project] dependency (not a dev one)."""
    import ast
    import sys
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    deps = {_req_name(d) for d in _project_dependencies()} | {"ray"}
    for f in sorted((ROOT / "jobs" / "check_cluster").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                if top in sys.stdlib_module_names or top in ("jobs", "__future__"):
                    continue
                owners = {d.lower() for d in dists.get(top, [])}
                assert owners & deps, f"{f.name} imports {mod!r} (from {sorted(owners)}), not a runtime dependency"


def test_check_cluster_command_names_the_problem(tmp_path, capsys):
    bad = json.loads((CLUSTER / "deepspeed" / "zero1.json").read_text())
    bad["gradient_clip"] = 1.0
    p = tmp_path / "zero1.json"
    p.write_text(json.dumps(bad))
    assert medlm(["check-cluster", str(p)]) == 1
    err = capsys.readouterr().err
    assert "INVALID" in err and f"{p}: gradient_clip: unknown DeepSpeed config key" in err


@pytest.mark.parametrize("path", DEEPSPEED, ids=lambda p: p.name)
def test_deepspeed_configs(path):
    stage = int(path.stem[-1])
    cfg = cc.validate_deepspeed_config(path)  # includes DeepSpeedConfig(...) parse on CPU
    assert cfg["zero_optimization"]["stage"] == stage
    assert cfg["gradient_clipping"] == 1.0
    assert cfg["bf16"]["enabled"] is False  # the trainer turns bf16 on when it runs on GPU
    assert cfg["optimizer"]["type"] == "AdamW" and cfg["optimizer"]["params"]["torch_adam"] is True
    assert isinstance(cfg["train_micro_batch_size_per_gpu"], int)
    assert isinstance(cfg["gradient_accumulation_steps"], int)
    assert "train_batch_size" not in cfg  # derived by DeepSpeed from micro batch x accumulation x world size
    if stage == 3:
        assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_validate_all_and_cli():
    checked = cc.validate_all(CLUSTER)
    assert len(checked) == 2 + len(DEEPSPEED) + len(KUBERAY) + len(LAUNCHERS)
    assert medlm(["check-cluster", str(SERVE), str(DEEPSPEED[0])]) == 0


# ------------------------------------------------------------------------------------------------
# the copies embedded in KubeRay manifests agree with the source files


def test_kuberay_runtime_envs_match_runtime_env_yaml():
    base = _load(RUNTIME_ENV)
    embedded = []
    for name in ("rayjob-generate.yaml", "rayjob-train.yaml"):
        embedded.append((name, yaml.safe_load(_load(CLUSTER / "kuberay" / name)["spec"]["runtimeEnvYAML"])))
    serve_v2 = yaml.safe_load(_load(CLUSTER / "kuberay" / "rayservice.yaml")["spec"]["serveConfigV2"])
    embedded.append(("rayservice.yaml", serve_v2["applications"][0]["runtime_env"]))
    for name, env in embedded:
        assert env["pip"] == base["pip"], name
        assert env["env_vars"] == base["env_vars"], name
        assert env["working_dir"].endswith(".zip"), name  # remote package, no local dir in a pod


def test_rayservice_serve_config_matches_serve_yaml():
    local = _load(SERVE)
    v2 = yaml.safe_load(_load(CLUSTER / "kuberay" / "rayservice.yaml")["spec"]["serveConfigV2"])
    assert v2["http_options"]["host"] == "0.0.0.0"  # reachable from the Kubernetes Service
    assert v2["http_options"]["port"] == local["http_options"]["port"] == 8000
    (app_local,), (app_k8s,) = local["applications"], v2["applications"]
    app_k8s = {k: v for k, v in app_k8s.items() if k != "runtime_env"}
    assert app_k8s == app_local


# ------------------------------------------------------------------------------------------------
# deliberately broken copies are rejected, with a message naming the problem


@pytest.fixture
def rayjob():
    return _load(CLUSTER / "kuberay" / "rayjob-train.yaml")


def _reject_kuberay(tmp_path, doc, *needles):
    p = _write(tmp_path, "broken.yaml", doc, "kuberay")
    with pytest.raises(ValueError) as ei:
        cc.validate_kuberay(p)
    msg = str(ei.value)
    assert str(p) in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in: {msg}"
    return msg


def test_reject_wrong_ray_version(tmp_path, rayjob):
    rayjob["spec"]["rayClusterSpec"]["rayVersion"] = "2.59.0"
    _reject_kuberay(tmp_path, rayjob, "spec.rayClusterSpec.rayVersion", "2.59.0", RAY_VERSION)


def test_reject_wrong_image_tag(tmp_path, rayjob):
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"] = (
        "rayproject/ray:2.50.1-py311-gpu"
    )
    _reject_kuberay(tmp_path, rayjob, "workerGroupSpecs[0].template.spec.containers[0].image", "2.50.1", RAY_VERSION)


def test_reject_unpinned_image(tmp_path, rayjob):
    rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] = (
        "rayproject/ray:latest"
    )
    _reject_kuberay(tmp_path, rayjob, "headGroupSpec.template.spec.containers[0].image", "not pinned")


def test_reject_missing_image(tmp_path, rayjob):
    del rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    _reject_kuberay(
        tmp_path, rayjob, "spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].image", "missing"
    )


def test_reject_missing_entrypoint(tmp_path, rayjob):
    del rayjob["spec"]["entrypoint"]
    _reject_kuberay(tmp_path, rayjob, "spec.entrypoint", "missing")


def test_reject_wrong_type_of_replicas(tmp_path, rayjob):
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    _reject_kuberay(tmp_path, rayjob, "workerGroupSpecs[0].replicas", "valid integer", "'two'")


def test_reject_replicas_out_of_bounds(tmp_path, rayjob):
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = 5
    _reject_kuberay(tmp_path, rayjob, "workerGroupSpecs[0].replicas", "minReplicas <= replicas <= maxReplicas")


def test_reject_gpu_request_without_limit(tmp_path, rayjob):
    res = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]
    del res["limits"]["nvidia.com/gpu"]
    _reject_kuberay(tmp_path, rayjob, "limits.nvidia.com/gpu")


def test_reject_wrong_api_version_and_kind(tmp_path, rayjob):
    rayjob["apiVersion"] = "ray.io/v1alpha1"
    _reject_kuberay(tmp_path, rayjob, "apiVersion", "ray.io/v1")
    rayjob["apiVersion"], rayjob["kind"] = "ray.io/v1", "RayThing"
    _reject_kuberay(tmp_path, rayjob, "kind", "RayThing")


def test_reject_bad_runtime_env_yaml(tmp_path, rayjob):
    env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    env["env_vars"]["DS_ACCELERATOR"] = "cuda"
    rayjob["spec"]["runtimeEnvYAML"] = yaml.safe_dump(env)
    _reject_kuberay(tmp_path, rayjob, "spec.runtimeEnvYAML.env_vars.DS_ACCELERATOR")
    env["env_vars"] = {"TOKENIZERS_PARALLELISM": "false"}
    env["pip"]["packages"].append("ray[serve]==2.9.0")
    rayjob["spec"]["runtimeEnvYAML"] = yaml.safe_dump(env)
    _reject_kuberay(tmp_path, rayjob, "spec.runtimeEnvYAML.pip.packages[12]", "cluster image")
    env["pip"]["packages"].pop()
    env["env_vars"] = {"TOKENIZERS_PARALLELISM": False}  # must be strings
    rayjob["spec"]["runtimeEnvYAML"] = yaml.safe_dump(env)
    _reject_kuberay(tmp_path, rayjob, "spec.runtimeEnvYAML", "Dict[str, str]")


def test_reject_broken_serve_config_inside_rayservice(tmp_path):
    doc = _load(CLUSTER / "kuberay" / "rayservice.yaml")
    v2 = yaml.safe_load(doc["spec"]["serveConfigV2"])
    v2["applications"][0]["deployments"][0]["max_ongoing_requests"] = "lots"
    doc["spec"]["serveConfigV2"] = yaml.safe_dump(v2)
    _reject_kuberay(tmp_path, doc, "spec.serveConfigV2.applications[0].deployments[0].max_ongoing_requests", "lots")
    del doc["spec"]["serveConfigV2"]
    _reject_kuberay(tmp_path, doc, "spec.serveConfigV2", "missing")


def _reject_serve(tmp_path, cfg, *needles, check_imports=False):
    p = _write(tmp_path, "serve.yaml", cfg)
    with pytest.raises(ValueError) as ei:
        cc.validate_serve_config(p, check_imports=check_imports)
    msg = str(ei.value)
    assert str(p) in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in: {msg}"


def test_reject_bad_serve_import_path(tmp_path):
    cfg = _load(SERVE)
    cfg["applications"][0]["import_path"] = "pipeline.no_such_module:build_app"
    cc.validate_serve_config(_write(tmp_path, "ok.yaml", cfg))  # structurally fine without imports
    _reject_serve(tmp_path, cfg, "applications[0].import_path", "pipeline.no_such_module", "not found", check_imports=True)
    cfg["applications"][0]["import_path"] = "jobs.check_cluster:no_such_attr"
    _reject_serve(tmp_path, cfg, "applications[0].import_path", "no attribute 'no_such_attr'", check_imports=True)
    cfg["applications"][0]["import_path"] = "not a path"
    _reject_serve(tmp_path, cfg, "applications[0].import_path", "invalid import path")


def test_reject_serve_typo_and_bad_autoscaling(tmp_path):
    cfg = _load(SERVE)
    dep = cfg["applications"][0]["deployments"][0]
    dep["max_ongoing_request"] = dep.pop("max_ongoing_requests")  # typo: Ray alone would ignore it
    _reject_serve(tmp_path, cfg, "applications[0].deployments[0].max_ongoing_request", "unknown key")
    cfg = _load(SERVE)
    cfg["applications"][0]["deployments"][0]["autoscaling_config"]["max_replicas"] = 0
    _reject_serve(tmp_path, cfg, "autoscaling_config", "max_replicas")
    cfg = _load(SERVE)
    cfg["http_options"]["port"] = "eighty"
    _reject_serve(tmp_path, cfg, "http_options.port")


def test_reject_broken_launcher(tmp_path):
    cfg = _load(LAUNCHERS[0])
    bad = copy.deepcopy(cfg)
    bad["docker"]["image"] = "rayproject/ray:2.9.0-py311-gpu"
    p = _write(tmp_path, "bad-version.yaml", bad, "launcher")
    with pytest.raises(ValueError, match=r"docker\.image.*2\.9\.0.*" + RAY_VERSION.replace(".", r"\.")):
        cc.validate_launcher_yaml(p)

    bad = copy.deepcopy(cfg)
    bad["max_workers"] = "four"
    p = _write(tmp_path, "bad-type.yaml", bad, "launcher")
    with pytest.raises(ValueError, match=r"bad-type\.yaml: max_workers: 'four' is not of type 'integer'"):
        cc.validate_launcher_yaml(p)

    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["ray.worker.p5"]["resources"]["GPU"] = 0.5  # Ray wants whole numbers
    p = _write(tmp_path, "bad-gpu.yaml", bad, "launcher")
    with pytest.raises(ValueError, match=r"available_node_types\.ray\.worker\.p5\.resources\.GPU"):
        cc.validate_launcher_yaml(p)

    bad = copy.deepcopy(cfg)
    bad["head_node_type"] = "nope"
    p = _write(tmp_path, "bad-head.yaml", bad, "launcher")
    with pytest.raises(ValueError, match="head_node_type"):
        cc.validate_launcher_yaml(p)

    bad = copy.deepcopy(cfg)
    del bad["docker"]
    p = _write(tmp_path, "no-docker.yaml", bad, "launcher")
    with pytest.raises(ValueError, match="nothing pins the Ray version"):
        cc.validate_launcher_yaml(p)


def test_reject_broken_deepspeed(tmp_path):
    base = json.loads((CLUSTER / "deepspeed" / "zero2.json").read_text())

    def reject(cfg, name, *needles):
        p = tmp_path / name
        p.write_text(json.dumps(cfg))
        with pytest.raises(ValueError) as ei:
            cc.validate_deepspeed_config(p)
        for n in (str(p),) + needles:
            assert n in str(ei.value), str(ei.value)

    reject({**base, "bf16": {"enabled": "auto"}}, "zero2.json", "bf16.enabled", '"auto"')
    reject(base, "zero3.json", "zero_optimization.stage", "stage 3")
    reject({**base, "gradient_clip": 1.0}, "zero2.json", "gradient_clip", "unknown")
    bad = copy.deepcopy(base)
    bad["zero_optimization"]["bogus_bucket"] = 1
    p = tmp_path / "zero2.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="DeepSpeedConfig"):  # DeepSpeed's pydantic ZeRO model forbids extras
        cc.validate_deepspeed_config(p)


def test_check_ray_version_names_both_versions():
    with pytest.raises(ValueError, match=r"m\.yaml: rayVersion: rayVersion '1\.2\.3'.*" + RAY_VERSION.replace(".", r"\.")):
        cc.check_ray_version({"rayVersion": "1.2.3"}, "m.yaml")
    assert cc.check_ray_version({"rayVersion": RAY_VERSION, "image": IMAGE}, "m.yaml") == RAY_VERSION
    # a registry with a port is not a tag; a custom image is not judged, but then nothing pins Ray
    with pytest.raises(ValueError, match="nothing pins"):
        cc.check_ray_version({"image": "registry:5000/me/medlm"}, "m.yaml")


def test_check_gpu_request(monkeypatch):
    import ray
    import torch

    assert cc.check_gpu_request(0) >= 0
    assert cc.check_gpu_request(None) == 0
    with pytest.raises(ValueError, match="num_gpus"):
        cc.check_gpu_request(-1)

    # connected to a Ray cluster without GPUs (cluster_resources faked: no need to start Ray here)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.raises(ValueError, match=r"train\.yaml: num_gpus: asks for 1 GPU\(s\) but the connected Ray cluster"):
        cc.check_gpu_request(1, "train.yaml")
    assert cc.check_gpu_request(1, "train.yaml", allow_autoscaling=True) == 0
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "GPU": 4.0})
    assert cc.check_gpu_request(4) == 4
    with pytest.raises(ValueError, match="has only 4"):
        cc.check_gpu_request(8)

    # not connected: torch.cuda decides
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"this machine \(torch\.cuda"):
        cc.check_gpu_request(1, "serve.yaml")


# ------------------------------------------------------------------------------------------------
# every import path / entry point referenced by the manifests is importable


def _referenced_modules():
    refs = set()
    for path in (SERVE, CLUSTER / "kuberay" / "rayservice.yaml"):
        cfg = _load(path)
        if cfg.get("kind") == "RayService":
            cfg = yaml.safe_load(cfg["spec"]["serveConfigV2"])
        for app in cfg["applications"]:
            refs.add(("import_path", app["import_path"], None))
    for path in KUBERAY:
        doc = _load(path)
        if doc["kind"] == "RayJob":
            argv = shlex.split(doc["spec"]["entrypoint"])
            assert argv[:2] == ["python", "-m"], argv
            config = argv[argv.index("--config") + 1] if "--config" in argv else None
            refs.add(("entrypoint", argv[2], config))
    return sorted(refs)


@pytest.mark.parametrize("kind,target,config", _referenced_modules(), ids=lambda x: str(x))
def test_referenced_module_importable(kind, target, config):
    module, attr = cc.import_path_target(target) if kind == "import_path" else (target, None)
    mod = importlib.import_module(module)
    if attr:
        assert callable(getattr(mod, attr)), f"{module}:{attr} is not callable"
    if config is not None:
        assert (ROOT / config).exists(), f"{config} (the entrypoint's --config) is not in the repository"
        assert isinstance(yaml.safe_load((ROOT / config).read_text()), dict)


def test_serve_import_path_resolves_with_check_imports():
    cc.validate_serve_config(SERVE, check_imports=True)


# ------------------------------------------------------------------------------------------------
# the GPU smoke benchmark refuses to run (exit 2, clear message) without CUDA


def test_gpu_smoke_exits_2_without_gpu(monkeypatch, capsys, tmp_path):
    import torch

    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "benchmarks" / "gpu_smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert mod.main(["--out", str(tmp_path / "x.json")]) == 2
    assert "NO GPU" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
