"""The ME-DLM HTTP app on Ray Serve.

Entries: ``build_app(args)`` (the Serve import path ``pipeline.serve:build_app``), ``run_local`` (start
Serve's proxy and deploy on the running Ray) and ``ServeArgs`` (the app's arguments). Modules: ``app``
(the model deployment), ``ingress`` (the thin deployment in front of it that retries what a dying
replica lost), ``routes`` (the HTTP routes, shared by both), ``batching`` (decode jobs and the merger,
SSE framing), ``api`` (requests, limits),
``replies`` (reply bodies and streamed events), ``checkpoint`` (a local or ``s3://`` checkpoint, checked
on the driver), ``playground.html`` (package data served at ``/``).
"""

from pipeline import lazy_exports

__all__ = ["build_app", "run_local", "ServeArgs"]
__getattr__, __dir__ = lazy_exports(__name__, {"build_app": "app", "run_local": "app", "ServeArgs": "api"})
