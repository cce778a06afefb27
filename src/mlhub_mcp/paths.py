"""Checks on local paths and file names given by callers.

A tool that reads a local file could otherwise read any file on the host, so a
path is accepted only when, after resolving symbolic links and ``..``, it lies
under one of the configured import directories.
"""

import re
from pathlib import Path

from mlhub_mcp.errors import InvalidInput, PathNotAllowed

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,199}$")


def resolve_import_path(raw: str, import_dirs: list[Path]) -> Path:
    """Resolve ``raw`` to an existing regular file under one of ``import_dirs``.

    A relative path is taken relative to the first import directory.

    Raises:
        PathNotAllowed: The path is empty, missing, not a file, or outside every import directory.
    """
    if not raw or "\x00" in raw:
        raise PathNotAllowed(f"invalid path {raw!r}: give the path of a file")

    candidate = Path(raw).expanduser()
    if not candidate.is_absolute():
        candidate = import_dirs[0] / candidate

    try:
        resolved = candidate.resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError):
        raise PathNotAllowed(f"file {raw!r} does not exist") from None

    allowed = [d.resolve() for d in import_dirs]
    if not any(resolved.is_relative_to(d) for d in allowed):
        dirs = ", ".join(str(d) for d in allowed)
        raise PathNotAllowed(
            f"path {raw!r} is outside the import directories ({dirs}); copy the file into one "
            "of them or add its directory to storage.import_dirs in hub_config.toml"
        )

    if not resolved.is_file():
        raise PathNotAllowed(f"path {raw!r} is not a regular file")

    return resolved


def check_file_name(name: str) -> str:
    """Return ``name`` if it is a plain file name without directories or ``..``.

    Raises:
        InvalidInput: The name contains a path separator, ``..`` or unusual characters.
    """
    if ".." in name or not _SAFE_NAME.match(name):
        raise InvalidInput(
            f"invalid file name {name!r}: use a plain name such as 'model.onnx', made of "
            "letters, digits, '.', '_', '-' and spaces, without '/' or '..'"
        )

    return name


def check_entry_name(name: str, kind: str) -> str:
    """Return ``name`` if it is usable as a model, dataset or deployment name.

    Raises:
        InvalidInput: The name is empty, too long or contains characters other than
            letters, digits, '.', '_' and '-'.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name or "") or ".." in name:
        raise InvalidInput(
            f"invalid {kind} name {name!r}: use 1 to 100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )

    return name
