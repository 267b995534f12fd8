"""The BentoML service: ``skulens serve`` (or ``bentoml serve serving.service:SearchService``).

A thin app: the search logic, validation and fallbacks live in ``skulens.serving``; this file maps
them to HTTP. BentoML adds ``/healthz``, ``/livez``, ``/readyz`` (ready once ``__init__`` has
loaded the models and the index) and ``/metrics`` (Prometheus).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import bentoml

MAX_IMAGE_BYTES = 10 * 2**20


def _image(encoded: str | None) -> bytes | None:
    if encoded is None:
        return None
    if len(encoded) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise bentoml.exceptions.InvalidArgument(f"image is over {MAX_IMAGE_BYTES // 2**20} MB")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bentoml.exceptions.InvalidArgument(f"image_base64 is not valid base64: {exc}") from exc


@bentoml.service(name="skulens-search", traffic={"timeout": 30})
class SearchService:
    def __init__(self) -> None:
        from skulens.serving.loader import load_pipeline
        from skulens.serving.pipeline import ServingConfig
        from skulens.settings import load_settings

        settings = load_settings()
        self.config = ServingConfig(total_budget_ms=settings.serving.total_budget_ms,
                                    stage_timeout_ms=dict(settings.serving.stage_timeout_ms))
        self.pipeline = load_pipeline(settings, config=self.config)

    @bentoml.api(route="/search")
    def search(self, text: str | None = None, image_base64: str | None = None,
               filters: dict[str, Any] | None = None, k: int = 10, page: int = 1,
               user_id: str | None = None, session_id: str | None = None) -> dict[str, Any]:
        """Text and/or photo search with filters; every stage's scores, timings and fallbacks."""
        from skulens.serving.pipeline import RequestError, SearchRequest

        raw = {name: value for name, value in {"text": text, "filters": filters, "k": k, "page": page,
                                              "user_id": user_id, "session_id": session_id}.items()
               if value is not None}
        try:
            request = SearchRequest.parse(raw, self.config, image=_image(image_base64))
            return self.pipeline.search(request).to_dict()
        except RequestError as exc:
            raise bentoml.exceptions.InvalidArgument(str(exc)) from exc
