"""Checks on caller paths, file names and entry names."""

from pathlib import Path

import pytest

from mlhub_mcp.errors import InvalidInput, PathNotAllowed
from mlhub_mcp.paths import check_entry_name, check_file_name, resolve_import_path


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    root = tmp_path / "allowed"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "m.onnx").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("secret")
    return root


def test_relative_path_resolves_under_first_dir(allowed: Path) -> None:
    assert resolve_import_path("sub/m.onnx", [allowed]) == allowed / "sub" / "m.onnx"


def test_dotdot_inside_the_dir_is_fine(allowed: Path) -> None:
    assert resolve_import_path("sub/../sub/m.onnx", [allowed]) == allowed / "sub" / "m.onnx"


@pytest.mark.parametrize("raw", ["../secret.txt", "sub/../../secret.txt", "/etc/passwd"])
def test_escapes_are_rejected(allowed: Path, raw: str) -> None:
    with pytest.raises(PathNotAllowed, match="outside the import directories"):
        resolve_import_path(raw, [allowed])


def test_symlink_escape_is_rejected(allowed: Path) -> None:
    (allowed / "link.txt").symlink_to(allowed.parent / "secret.txt")

    with pytest.raises(PathNotAllowed):
        resolve_import_path("link.txt", [allowed])


@pytest.mark.parametrize("raw", ["", "missing.onnx", "sub", "a\x00b"])
def test_missing_or_odd_paths_are_rejected(allowed: Path, raw: str) -> None:
    with pytest.raises(PathNotAllowed):
        resolve_import_path(raw, [allowed])


@pytest.mark.parametrize("name", ["../x.onnx", "a/b.csv", "..", ".hidden", "x\\y.csv", ""])
def test_bad_file_names(name: str) -> None:
    with pytest.raises(InvalidInput):
        check_file_name(name)


def test_good_file_name() -> None:
    assert check_file_name("model v2.onnx") == "model v2.onnx"


@pytest.mark.parametrize("name", ["", "a b", "-x", "a/b", "a..b", "x" * 101])
def test_bad_entry_names(name: str) -> None:
    with pytest.raises(InvalidInput):
        check_entry_name(name, "model")
