"""The ME-DLM HTTP app on Ray Serve.

Entries: ``build_app(args)`` (the Serve import path ``pipeline.serve:build_app``), ``run_local`` (start
Serve's proxy and deploy on the running Ray) and ``ServeArgs`` (the app's arguments). Modules: ``app``
(the deployment and its routes), ``batching`` (decode jobs and the merger), ``api`` (requests, limits),
``replies`` (reply bodies and streamed events), ``checkpoint`` (a local or ``s3://`` checkpoint, checked
on the driver), ``playground.html`` (package data served at ``/``).
"""

from pipeline import lazy_exports

__all__ = ["build_app", "run_local", "ServeArgs"]
__getattr__, __dir__ = lazy_exports(__name__, {"build_app": "app", "run_local": "app", "ServeArgs": "api"})
