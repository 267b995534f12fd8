"""A local HTTP server that speaks the Anthropic Messages API (``POST /v1/messages``) and the
OpenAI chat-completions API (``POST /v1/chat/completions``), so the real ``anthropic`` and
``openai`` clients can be driven in tests with no network. What it answers is set per test; it
says nothing about any real model's quality."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeProvider:
    """``reply``: the text the model "says"; ``status``: an HTTP error to answer instead;
    ``delay_s``: a wait before answering. ``calls``: the request bodies received."""

    def __init__(self) -> None:
        self.reply = '{"query": "red running shoes", "price_max": 50, "intent": "product"}'
        self.status = 200
        self.delay_s = 0.0
        self.calls: list[dict[str, Any]] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - the http.server interface
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                provider.calls.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                time.sleep(provider.delay_s)
                if provider.status != 200:
                    payload = {"type": "error", "error": {"type": "api_error", "message": "fake failure"}}
                    return self._send(provider.status, payload)
                if self.path.endswith("/v1/messages"):
                    return self._send(200, {
                        "id": "msg_fake", "type": "message", "role": "assistant", "model": body.get("model"),
                        "content": [{"type": "text", "text": provider.reply}], "stop_reason": "end_turn",
                        "stop_sequence": None, "usage": {"input_tokens": 120, "output_tokens": 30}})
                if self.path.endswith("/chat/completions"):
                    return self._send(200, {
                        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": body.get("model"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": provider.reply}}],
                        "usage": {"prompt_tokens": 110, "completion_tokens": 25, "total_tokens": 135}})
                return self._send(404, {"error": {"message": f"no route {self.path}"}})

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
