"""`medlm serve` / `python -m jobs.serve`: put the ME-DLM HTTP app (pipeline.serve) on Ray Serve.

    medlm serve --checkpoint CKPT [--port 8000] [--host 127.0.0.1] [key=value ...]
    ray job submit --working-dir . -- python -m jobs.serve --config jobs/configs/serve.yaml \\
        app.checkpoint=/mnt/models/medlm host=0.0.0.0 detach=true

On a laptop it starts a local Ray, deploys, prints the URL and blocks until Ctrl-C. With RAY_ADDRESS
set (as under `ray job submit`) it deploys onto that cluster; ``detach=true`` then ends the job once
the app answers, leaving the app running (Serve apps outlive the driver that deployed them).
``app.*`` keys are the app's arguments (pipeline.serve.ServeArgs); a typo there or anywhere in
the config stops the command before Ray starts, naming the key. ``app.checkpoint`` may be an
``s3://`` URI (``AWS_*`` variables for credentials and endpoint): it is checked here, and each
replica downloads its own copy.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

from pydantic import Field

from jobs.config import ConfigError, build, merge, parse_overrides, read_yaml
from pipeline.serve.api import ServeArgs

PREFIX = "[medlm serve]"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "serve.yaml"


@dataclass
class ServeJobConfig:
    host: str = "127.0.0.1"  # 0.0.0.0 only where the port must be reachable from other machines
    port: Annotated[int, Field(ge=0, le=65535)] = 8000  # 0: a free port
    app_name: str = "medlm"
    route_prefix: str = "/"
    detach: bool = False  # deploy, wait until it answers, exit (for `ray job submit`)
    num_cpus: Optional[Annotated[int, Field(ge=1)]] = None  # CPUs of a local Ray started here; None: all of them
    app: Optional[ServeArgs] = None  # build_app's arguments, parsed here once (pipeline.serve.ServeArgs)


def _say(message: str) -> None:
    print(f"{PREFIX} {message}", flush=True)


def build_config(argv: list[str]) -> ServeJobConfig:
    """Defaults < --config YAML < key=value overrides < flags, typed by ServeJobConfig (jobs.config)."""
    ap = argparse.ArgumentParser(prog="medlm serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help=f"YAML config (default {DEFAULT_CONFIG.name})")
    ap.add_argument("--checkpoint", help="medlm checkpoint directory or s3:// URI (same as app.checkpoint=...)")
    ap.add_argument("--host")
    ap.add_argument("--port", metavar="INT")  # typed by ServeJobConfig
    ap.add_argument("--detach", action="store_true", default=None, help="deploy and exit instead of blocking")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. app.max_batch_size=8")
    args = ap.parse_args(argv)
    flags = {"app.checkpoint": args.checkpoint, "host": args.host, "port": args.port, "detach": args.detach}
    data = merge(read_yaml(args.config), parse_overrides(args.overrides))
    for key, value in flags.items():
        if value is not None:
            data = merge(data, _nest(key, value))
    if not (data.get("app") or {}).get("checkpoint"):
        raise ConfigError("no checkpoint: pass --checkpoint DIR (or app.checkpoint=DIR)")
    return build(ServeJobConfig, data)


def _nest(dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    out = {last: value}
    for p in reversed(parents):
        out = {p: out}
    return out


def check_app_args(cfg: ServeJobConfig) -> ServeArgs:
    """The parsed app arguments; the checkpoint is checked here, before Ray starts: an ``s3://`` one
    always (bad URI, missing bucket, no checkpoint there), a local one unless on a cluster, where the
    path may exist only on the GPU workers."""
    from pipeline.common.storage import is_uri
    from pipeline.serve.checkpoint import checked_checkpoint

    app = cfg.app
    if is_uri(app.checkpoint) or not os.environ.get("RAY_ADDRESS"):
        app = app.model_copy(update={"checkpoint": checked_checkpoint(app.checkpoint)})
    return app


def _interrupt(signum, frame) -> None:
    """`kill PID` (SIGTERM) shuts the app and the local Ray down as cleanly as Ctrl-C does."""
    raise KeyboardInterrupt


def cli(argv: list[str]) -> int:
    try:
        cfg = build_config(argv)
        app_args = check_app_args(cfg)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"{PREFIX} error: {e}", flush=True)
        return 2

    import ray
    from ray import serve

    from pipeline.common import connect_ray
    from pipeline.serve import run_local

    said = connect_ray(num_cpus=cfg.num_cpus)
    if said:
        _say(said)
    _say(f"deploying {app_args.checkpoint} (loading the model on each replica) ...")
    url = run_local(app_args, host=cfg.host, port=cfg.port, app_name=cfg.app_name, route_prefix=cfg.route_prefix)
    _say(f"ready at {url}  (POST /v1/refine, /v1/chat/completions, /v1/completions; GET /v1/models, /docs)")
    _say(f"playground: open {url}/ in a browser")
    _say(f"try: curl -s {url}/v1/refine -H 'Content-Type: application/json' -d '{{\"prompt\": \"What is 3 + 4?\"}}'")
    if cfg.detach:
        _say(f"detached: the app keeps running; stop it with `serve shutdown` or serve.delete({cfg.app_name!r})")
        return 0
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        _say("shutting down")
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(cli(sys.argv[1:]))
