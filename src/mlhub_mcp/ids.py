"""Identifiers and timestamps stored in the catalog."""

import secrets
import time
from datetime import UTC, datetime


def new_id() -> str:
    """Return a new id that sorts by creation time (48-bit milliseconds, 48 random bits)."""
    millis = int(time.time() * 1000)
    return f"{millis:012x}{secrets.token_hex(6)}"


def utc_now() -> str:
    """Return the current UTC time in ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")
