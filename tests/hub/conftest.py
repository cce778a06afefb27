"""Helpers for the hub tests: echo downstream servers and the hub in process or over HTTP."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from mlhub_mcp.config import ServerSettings, Settings
from mlhub_mcp.hub._http import serve_http_async
from mlhub_mcp.hub.server import HubServer, create_hub_server

ECHO_SERVER = Path(__file__).with_name("echo_server.py")
TOKEN = "test-token-7f3a91c2"


@pytest.fixture
def echo_dir(tmp_path: Path) -> Path:
    """Folder where the echo servers mark their starts and cancellations."""
    folder = tmp_path / "echo"
    folder.mkdir()
    return folder


@pytest.fixture
def hub_settings(settings: Settings, echo_dir: Path) -> Settings:
    """Settings whose only downstream server is one echo server over stdio, prefixed 'a_'."""
    settings.servers = {"a": echo_stdio("a", echo_dir)}
    settings.hub.startup_wait_seconds = 10
    return settings


def echo_stdio(name: str, echo_dir: Path, **options: Any) -> ServerSettings:
    """Settings of an echo server the hub starts over stdio; its tools get the prefix name_."""
    options.setdefault("timeout_seconds", 10)
    options.setdefault("start_timeout_seconds", 15)
    return ServerSettings(
        name=name,
        prefix=f"{name}_",
        command=sys.executable,
        args=[str(ECHO_SERVER), "stdio"],
        env={"ECHO_DIR": str(echo_dir)},
        **options,
    )


def marks(echo_dir: Path, kind: str) -> list[str]:
    """Return the marks of one kind (start, cancelled) the echo servers wrote."""
    return sorted(p.name for p in echo_dir.glob(f"{kind}-*"))


async def wait_for_mark(echo_dir: Path, kind: str, seconds: float = 10) -> list[str]:
    """Wait until an echo server wrote a mark of this kind; another process writes it."""
    with anyio.fail_after(seconds):
        while True:
            found = marks(echo_dir, kind)
            if found:
                return found
            await anyio.sleep(0.05)


def text_of(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def hub_client(settings: Settings, mode: str = "legacy") -> AsyncIterator[Client]:
    """Run the hub in process and connect a client to it."""
    server = create_hub_server(settings)
    async with Client(server, mode=mode) as client:
        yield client


async def wait_for_health(url: str, seconds: float = 30) -> None:
    async with httpx2.AsyncClient() as http:
        with anyio.fail_after(seconds):
            while True:
                try:
                    response = await http.get(f"{url}/health")
                    if response.status_code == 200:
                        return
                except httpx2.TransportError:
                    pass
                await anyio.sleep(0.05)


@asynccontextmanager
async def http_hub(
    settings: Settings, transport: str = "http", token: str | None = TOKEN
) -> AsyncIterator[tuple[str, HubServer]]:
    """Serve the hub in process over HTTP on a free loopback port; yield its base URL."""
    server = create_hub_server(settings)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"

    async with anyio.create_task_group() as group:
        group.start_soon(
            lambda: serve_http_async(
                server, settings, transport, "127.0.0.1", 0, token, sockets=[listener]
            )
        )
        await wait_for_health(url)
        try:
            yield url, server
        finally:
            group.cancel_scope.cancel()

    listener.close()


def connect(url: str, transport: str = "http", token: str | None = TOKEN, mode: str = "legacy"):
    """Return a Client for the hub served at ``url``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if transport == "sse":
        return Client(sse_client(f"{url}/sse", headers=headers), mode=mode)
    http = create_mcp_http_client(headers=headers)
    return Client(streamable_http_client(f"{url}/mcp", http_client=http), mode=mode)


@contextmanager
def echo_process(transport: str, echo_dir: Path, **env: str) -> Iterator[str]:
    """Run an echo server over http or sse on a free port; yield its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ECHO_SERVER), transport, str(port)],
        env={**os.environ, "ECHO_DIR": str(echo_dir), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"echo server on port {port} did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def pid_alive(pid: int) -> bool:
    """Return whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children_of(pid: int) -> list[int]:
    """Return the ids of the live processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found
