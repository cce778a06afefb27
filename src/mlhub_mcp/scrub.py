"""Removal of secrets (tokens, keys, passwords) from text before it is logged or stored.

Two mechanisms work together:

- Known values: every secret the process reads from its settings or the
  environment is registered with `register_secret` and replaced wherever it
  appears, whatever the surrounding text.
- Patterns: passwords in URIs (``scheme://user:password@host``), bearer and
  basic credentials, and query parameters or ``key=value`` pairs whose key
  names a secret are masked even when their value was never registered.

`install_log_scrubbing` applies both to every log record of the process.
"""

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"

# Values shorter than this are not registered: masking every "abc" in the
# logs would hide more than it protects.
_MIN_SECRET_LENGTH = 4

# Environment variables whose values are secrets.
SECRET_ENV_VARS = (
    "MLHUB_HUB_TOKEN",
    "MLHUB_SERVER_TOKEN",
    "MINIO_ROOT_PASSWORD",
    "MINIO_ROOT_USER",
    "MONGO_INITDB_ROOT_PASSWORD",
    "GROQ_API_KEY",
)

# Environment variables holding URIs whose password part is a secret.
SECRET_URI_ENV_VARS = ("MLHUB_MONGODB_URI",)

# HTTP headers whose values are secrets.
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "x-auth-token"}
)

_SECRET_KEY_WORDS = (
    r"(?:token|secret|password|passwd|api[_-]?key|access[_-]?key|signature|credential)"
)

_URI_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/?#@\s]*):(?P<password>[^@/?#\s]+)@"
)
# Punctuation that ends a sentence or closes a bracket around a URL. A run of
# it at the end of a value is left in the text, so "(https://h/?token=x)."
# keeps its ")." after masking.
_TRAILING_PUNCTUATION = r"[)\]>.!?:]*"

# Words that name a credential without being one, as in "wrong bearer token".
_CREDENTIAL_WORD = re.compile(r"(?i)token|tokens|credentials?|auth|authentication|header|scheme")
_AUTH_VALUE_CHAR = r"[A-Za-z0-9._~+/=-]"
_AUTH_SCHEME = re.compile(
    r"(?i)\b(?P<scheme>bearer|basic)"
    r"(?P<word>\s+(?:token|credentials?)(?=\s))?"
    r"\s+(?P<value>" + _AUTH_VALUE_CHAR + r"+?)"
    r"(?=\.*(?!" + _AUTH_VALUE_CHAR + r"))"
)
# After "bearer token", a value counts as a secret when it has a digit or is
# this long; shorter plain words ("bearer token for /mcp") stay readable.
_MIN_PLAIN_SECRET_LENGTH = 16
_KEY_VALUE = re.compile(
    r"(?i)(?P<key>[A-Za-z0-9_.-]*" + _SECRET_KEY_WORDS + r"[A-Za-z0-9_.-]*)"
    r"(?P<sep>\s*[=:]\s*|\"\s*:\s*\")(?P<value>[^\s&\"',;}]+?)"
    r"(?=" + _TRAILING_PUNCTUATION + r"(?:[\s&\"',;}]|$))"
)

_SECRET_NAME = re.compile(r"(?i)" + _SECRET_KEY_WORDS + r"|^key$|_key$")

_lock = threading.Lock()
_known: set[str] = set()
_installed = False


def register_secret(value: str | None) -> None:
    """Remember ``value`` so that `scrub_text` masks it wherever it appears."""
    if not value or len(value) < _MIN_SECRET_LENGTH:
        return

    with _lock:
        _known.add(value)


def register_secrets(values: Iterable[str | None]) -> None:
    """Register each of ``values`` with `register_secret`."""
    for value in values:
        register_secret(value)


def register_environment_secrets(environ: Mapping[str, str] | None = None) -> None:
    """Register the values of the environment variables that hold secrets."""
    environ = os.environ if environ is None else environ
    for name in SECRET_ENV_VARS:
        register_secret(environ.get(name))

    for name in SECRET_URI_ENV_VARS:
        userinfo = _URI_USERINFO.search(environ.get(name, ""))
        if userinfo:
            register_secret(userinfo.group("password"))


def register_named_secrets(values: Mapping[str, str]) -> None:
    """Register the values of ``values`` whose names mark them as secrets.

    Fits HTTP headers (``Authorization``, ``X-Api-Key``) and environment
    variables (``GROQ_API_KEY``, ``DB_PASSWORD``) alike.
    """
    for name, value in values.items():
        if name.lower() not in SECRET_HEADERS and not _SECRET_NAME.search(name):
            continue

        register_secret(value)
        scheme = _AUTH_SCHEME.match(value)
        if scheme:
            register_secret(scheme.group("value"))


def scrub_text(text: str) -> str:
    """Return ``text`` with registered secrets and secret-looking values masked."""
    if not text:
        return text

    with _lock:
        known = sorted(_known, key=len, reverse=True)

    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)

    text = _URI_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _AUTH_SCHEME.sub(_mask_auth_value, text)
    text = _KEY_VALUE.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)
    return text


def _mask_auth_value(match: re.Match[str]) -> str:
    value = match["value"]
    if _CREDENTIAL_WORD.fullmatch(value):
        return match[0]

    word = match["word"] or ""
    has_digit = any(char.isdigit() for char in value)
    if word and not has_digit and len(value) < _MIN_PLAIN_SECRET_LENGTH:
        return match[0]

    return f"{match['scheme']}{word} {MASK}"


def scrub_value(value: Any) -> Any:
    """Return a copy of a JSON-like value with every string scrubbed."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {key: scrub_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_value(item) for item in value]
    return value


class _ScrubbingRecordFactory:
    """Log record factory that masks secrets in the message and the traceback."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.wrapped(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:
            # A malformed record is left for the logging module to report.
            return record

        scrubbed = scrub_text(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None

        if record.exc_info and record.exc_info[1] is not None:
            # Formatters reuse exc_text when it is set, so the traceback is
            # rendered once here, masked.
            record.exc_text = scrub_text(logging.Formatter().formatException(record.exc_info))

        return record


def install_log_scrubbing() -> None:
    """Mask secrets in every log record created from now on in this process.

    Works through the log record factory, so it covers every logger and
    handler, including ones added later. Calling it again does nothing.
    """
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True

    register_environment_secrets()
    logging.setLogRecordFactory(_ScrubbingRecordFactory(logging.getLogRecordFactory()))
