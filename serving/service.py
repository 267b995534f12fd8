"""The BentoML service: ``skulens serve`` (or ``bentoml serve serving.service:SearchService``).

A thin app: search, recommendations, validation, fallbacks and the web page live in
``skulens.serving`` (a FastAPI app, mounted here); this file loads the state once per worker.
BentoML adds ``/healthz``, ``/livez``, ``/readyz`` (ready once ``__init__`` has loaded the models
and the index) and ``/metrics`` (Prometheus: BentoML's request metrics and skulens' own, made
through ``bentoml.metrics`` so they work in its multiprocess mode).
"""

from __future__ import annotations

from typing import Any

import bentoml

from skulens.serving.admission import AdmissionConfig
from skulens.serving.app import create_app
from skulens.settings import load_settings

_SETTINGS = load_settings()
_STATE: dict[str, Any] = {}
app = create_app(lambda: _STATE.get("state"), admin_key_env=_SETTINGS.serving.admin_key_env,
                 admission=AdmissionConfig(**_SETTINGS.serving.admission.model_dump()))


# workers: serving.workers (`skulens serve --workers N`); each worker process loads the state once and
# memory-maps the index files, so the operating system keeps one copy of them for all workers.
@bentoml.service(name="skulens-search", traffic={"timeout": 60}, workers=_SETTINGS.serving.workers,
                 logging={"access": {"enabled": _SETTINGS.serving.access_log}})
@bentoml.asgi_app(app, path="/")
class SearchService:
    def __init__(self) -> None:
        from skulens.serving.metrics import ServingMetrics
        from skulens.serving.state import ServingState

        _STATE["state"] = ServingState.load(_SETTINGS, ServingMetrics(bentoml.metrics))

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Graceful shutdown: the event log writes what it holds and publishes its last file."""
        state = _STATE.get("state")
        if state is not None:
            state.stop()
