"""A server over streamable HTTP, with the guards of run_server."""

import json

from starlette.testclient import TestClient

from mlhub_mcp.config import Settings
from mlhub_mcp.models.server import create_model_server
from mlhub_mcp.server_base import build_server_app


def test_oversized_request_gets_jsonrpc_error(settings: Settings) -> None:
    settings.http.max_request_body_bytes = 2000
    app = build_server_app(create_model_server(settings), "http", "127.0.0.1", None, settings)
    body = {
        "jsonrpc": "2.0",
        "id": 9,
        "method": "tools/call",
        "params": {"name": "get_model", "arguments": {"name": "x" * 3000}},
    }

    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        response = client.post(
            "/mcp",
            content=json.dumps(body),
            headers={"content-type": "application/json", "accept": "application/json"},
        )
        health = client.get("/health")

    error = response.json()["error"]
    assert response.status_code == 413
    assert response.json()["id"] == 9
    assert error["code"] == -32600
    assert "2000 bytes" in error["message"]
    assert "import directory" in error["message"]
    assert health.json() == {"status": "ok"}
