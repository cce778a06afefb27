"""A local stand-in for Groq's chat completions API, for tests.

It serves ``POST /openai/v1/chat/completions`` on 127.0.0.1 from a thread,
and replies with plain JSON or, for ``"stream": true``, server-sent events. A test
scripts each call with a ``plan`` function that returns one of the actions
below, and reads back the recorded calls.
"""

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COMPLETIONS_PATH = "/openai/v1/chat/completions"


@dataclass
class Call:
    """A request the stub received."""

    number: int
    received_at: float
    body: dict[str, Any]
    authorization: str | None

    @property
    def prompt(self) -> str:
        """The content of the last user message."""
        users = [m for m in self.body.get("messages", []) if m.get("role") == "user"]
        return users[-1]["content"] if users else ""

    @property
    def system_prompt(self) -> str | None:
        systems = [m for m in self.body.get("messages", []) if m.get("role") == "system"]
        return systems[0]["content"] if systems else None


@dataclass
class Answer:
    """Reply 200 with this assistant message."""

    text: str


@dataclass
class Status:
    """Reply with an HTTP error status and a Groq-style error body."""

    code: int
    message: str = "stub error"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Hang:
    """Wait this many seconds before replying, to outlast a client timeout."""

    seconds: float
    then: Answer = field(default_factory=lambda: Answer("late"))


@dataclass
class Malformed:
    """Reply 200 with a JSON content type and a body that is not JSON."""

    body: str = '{"id": "chatcmpl-broken", "choices": ['


Action = Answer | Status | Hang | Malformed
Plan = Callable[[Call], Action]


def echo_label(call: Call) -> Action:
    """Answer with the text after ``Label:`` in the prompt, else the whole prompt."""
    found = re.search(r"Label:\s*(.+)", call.prompt)
    return Answer(found.group(1).strip() if found else call.prompt)


def count_tokens(text: str) -> int:
    """Count tokens the way the stub does: one per whitespace-separated word."""
    return len(text.split())


class GroqStub:
    """A threaded HTTP server that plays the Groq API on 127.0.0.1.

    Use it as a context manager; ``url`` is the base URL to give the SDK.
    Requests whose ``Authorization`` header is not ``Bearer <api_key>`` get
    401 and are counted in ``auth_failures``.
    """

    def __init__(self, api_key: str, plan: Plan = echo_label) -> None:
        self.api_key = api_key
        self.plan = plan
        self.calls: list[Call] = []
        self.auth_failures = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "GroqStub":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _record(self, body: dict[str, Any], authorization: str | None) -> Call:
        with self._lock:
            call = Call(len(self.calls) + 1, time.monotonic(), body, authorization)
            self.calls.append(call)
            if authorization != f"Bearer {self.api_key}":
                self.auth_failures += 1
            return call

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                if self.path != COMPLETIONS_PATH:
                    self._send_error(Status(404, f"unknown path {self.path}"))
                    return

                call = stub._record(json.loads(raw or b"{}"), self.headers.get("authorization"))
                if call.authorization != f"Bearer {stub.api_key}":
                    self._send_error(Status(401, "Invalid API Key"))
                    return

                action = stub.plan(call)
                if isinstance(action, Hang):
                    if stub._stopping.wait(action.seconds):
                        return
                    action = action.then

                if isinstance(action, Status):
                    self._send_error(action)
                elif isinstance(action, Malformed):
                    self._send(200, action.body.encode(), "application/json")
                elif call.body.get("stream"):
                    self._send_stream(call, action.text)
                else:
                    self._send_json(200, _completion(call, action.text))

            def _send(
                self,
                code: int,
                data: bytes,
                content_type: str,
                headers: dict[str, str] | None = None,
            ) -> None:
                try:
                    self.send_response(code)
                    self.send_header("content-type", content_type)
                    self.send_header("content-length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    # The client gave up first, e.g. after its timeout.
                    pass

            def _send_json(
                self, code: int, payload: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                self._send(code, json.dumps(payload).encode(), "application/json", headers)

            def _send_error(self, status: Status) -> None:
                payload = {"error": {"message": status.message, "type": "stub_error"}}
                self._send_json(status.code, payload, status.headers)

            def _send_stream(self, call: Call, text: str) -> None:
                events = [
                    _chunk(call, {"role": "assistant", "content": ""}, None),
                    *(
                        _chunk(call, {"content": piece}, None)
                        for piece in re.findall(r"\S+\s*", text)
                    ),
                    _chunk(call, {}, "stop"),
                ]
                lines = [f"data: {json.dumps(event)}\n\n" for event in events]
                lines.append("data: [DONE]\n\n")
                self._send(200, "".join(lines).encode(), "text/event-stream")

        return Handler


def _completion(call: Call, text: str) -> dict[str, Any]:
    prompt_tokens = sum(count_tokens(m.get("content", "")) for m in call.body["messages"])
    completion_tokens = count_tokens(text)
    return {
        "id": f"chatcmpl-stub-{call.number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.body.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _chunk(call: Call, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-stub-{call.number}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": call.body.get("model", ""),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
