"""The ``mlhub`` command: run a server, the hub, the demo, or maintenance tasks."""

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from mlhub_mcp.config import CONFIG_ENV, SERVER_NAMES, load_settings
from mlhub_mcp.errors import MLHubError
from mlhub_mcp.server_base import configure_logging

logger = logging.getLogger(__name__)


def _add_transport_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transport",
        choices=("stdio", "http", "sse"),
        default="stdio",
        help="MCP transport (default: stdio); http is streamable HTTP at /mcp, sse at /sse",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind for http/sse (default: 127.0.0.1); any other than a loopback "
        "address requires a token",
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port for http/sse")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _config_file(text: str) -> str:
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"configuration file {text!r} does not exist")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"configuration file {text!r} is not a file")

    return text


def _log_level(text: str) -> str:
    # argparse also converts a string default, so an invalid $MLHUB_LOG_LEVEL
    # is reported here as well.
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"invalid log level {text!r}; set --log-level or $MLHUB_LOG_LEVEL to one of "
            f"{', '.join(LOG_LEVELS)} (any case)"
        )

    return level


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlhub", description=__doc__)
    parser.add_argument(
        "--config",
        type=_config_file,
        help=f"path of hub_config.toml (default: ${CONFIG_ENV} or ./hub_config.toml)",
    )
    parser.add_argument(
        "--log-level",
        type=_log_level,
        default=os.environ.get("MLHUB_LOG_LEVEL", "INFO"),
        metavar="LEVEL",
        help=f"log level on stderr, one of {', '.join(LOG_LEVELS)} "
        "(default: $MLHUB_LOG_LEVEL or INFO)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one MCP server")
    serve.add_argument("server", choices=SERVER_NAMES)
    _add_transport_options(serve)
    serve.add_argument(
        "--token", help="bearer token required over http/sse (or MLHUB_SERVER_TOKEN)"
    )

    hub = commands.add_parser("hub", help="run the hub in front of the three servers")
    _add_transport_options(hub)
    hub.add_argument("--token", help="bearer token required over http/sse (or MLHUB_HUB_TOKEN)")

    demo = commands.add_parser("demo", help="run the whole flow on the digits dataset")
    demo.add_argument(
        "--home", help="data directory for the demo (default: a new temporary directory)"
    )

    commands.add_parser("doctor", help="check every configured backend and print fixes")

    sweep = commands.add_parser("sweep", help="list stored files no catalog entry refers to")
    sweep.add_argument("--remove", action="store_true", help="delete the orphan files")
    return parser


def _serve(name: str, transport: str, host: str, port: int, token: str | None) -> None:
    from mlhub_mcp.server_base import run_server

    settings = load_settings()
    if name == "model":
        from mlhub_mcp.models.server import create_model_server

        server = create_model_server(settings)
    elif name == "data":
        from mlhub_mcp.datasets.server import create_data_server

        server = create_data_server(settings)
    else:
        from mlhub_mcp.execution.server import create_execution_server

        server = create_execution_server(settings)

    run_server(server, transport, host, port, token, settings)


def _hub(args: argparse.Namespace) -> None:
    from mlhub_mcp.hub.server import run_hub

    run_hub(load_settings(), args.transport, args.host, args.port, args.token)


def _doctor() -> int:
    from mlhub_mcp.doctor import format_table, run_doctor

    checks, ok = anyio.run(run_doctor, load_settings())
    print(format_table(checks))
    return 0 if ok else 1


def _sweep(remove: bool) -> int:
    from mlhub_mcp.platform import open_platform
    from mlhub_mcp.sweep import sweep_orphans

    async def sweep() -> list[str]:
        async with open_platform(load_settings()) as platform:
            return await sweep_orphans(platform, remove)

    orphans = anyio.run(sweep)
    verb = "removed" if remove else "found"
    for key in orphans:
        print(key)
    print(f"{len(orphans)} orphan files {verb}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ["MLHUB_LOG_LEVEL"] = args.log_level.upper()
    configure_logging(args.log_level.upper())
    if args.config:
        os.environ[CONFIG_ENV] = os.path.abspath(args.config)

    try:
        if args.command == "serve":
            _serve(args.server, args.transport, args.host, args.port, args.token)
        elif args.command == "hub":
            _hub(args)
        elif args.command == "demo":
            from mlhub_mcp.demo import run_demo

            return run_demo(args.home)
        elif args.command == "doctor":
            return _doctor()
        elif args.command == "sweep":
            return _sweep(args.remove)
    except MLHubError as exc:
        print(f"mlhub: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

    return 0


if __name__ == "__main__":
    sys.exit(main())
