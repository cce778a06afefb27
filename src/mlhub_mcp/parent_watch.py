"""Exit when the parent process dies, so that a killed hub leaves no server behind.

The hub starts each stdio server with ``MLHUB_PARENT_PID`` set to its own
process id. The server calls `exit_with_parent` at start:

- On Linux it requests SIGTERM from the kernel when the parent dies
  (``prctl(PR_SET_PDEATHSIG)``), which also covers a SIGKILL of the parent.
- Elsewhere a daemon thread polls the parent process id once a second.

Either way, a parent that died before the call is detected at once, because
the process has then been re-parented and ``getppid()`` no longer matches.
"""

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time

logger = logging.getLogger(__name__)

PARENT_PID_ENV = "MLHUB_PARENT_PID"

# From <linux/prctl.h>.
_PR_SET_PDEATHSIG = 1

_POLL_SECONDS = 1.0


def parent_environment() -> dict[str, str]:
    """Return the variables that make a child started by this process call `exit_with_parent`."""
    return {PARENT_PID_ENV: str(os.getpid())}


def exit_with_parent() -> bool:
    """Arrange for this process to exit when the process in ``MLHUB_PARENT_PID`` dies.

    Returns whether a watch was set up: False when the variable is unset or
    invalid. Exits at once when that parent is already gone.
    """
    raw = os.environ.get(PARENT_PID_ENV, "")
    if not raw.isdigit():
        return False

    parent = int(raw)
    signalled = sys.platform.startswith("linux") and _set_parent_death_signal()
    _exit_if_orphaned(parent)

    if not signalled:
        thread = threading.Thread(
            target=_poll_parent, args=(parent,), name="parent-watch", daemon=True
        )
        thread.start()

    return True


def _set_parent_death_signal() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            logger.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(errno))
            return False
    except (OSError, AttributeError):
        logger.warning("prctl is unavailable; watching the parent process by polling")
        return False

    return True


def _exit_if_orphaned(parent: int) -> None:
    if os.getppid() != parent:
        logger.warning("parent process %d is gone; exiting", parent)
        os._exit(1)


def _poll_parent(parent: int) -> None:
    while True:
        time.sleep(_POLL_SECONDS)
        if os.getppid() != parent:
            # The process was re-parented: the hub died without closing the pipes.
            os.kill(os.getpid(), signal.SIGTERM)
            return
