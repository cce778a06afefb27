"""Change notifications from the hub to its clients.

When a downstream server starts, stops, or reports a changed listing, the
hub notifies its own clients in the way each protocol era expects:

- Handshake-era clients (2024-11-05 to 2025-11-25) get
  ``notifications/{tools,prompts,resources}/list_changed`` on their
  connection. The hub remembers each connection when the client sends
  ``notifications/initialized``.
- 2026-07-28 clients get the events on the ``subscriptions/listen`` streams
  they opened, through the SDK's subscription bus.
"""

import logging
from collections import deque
from dataclasses import dataclass

from mcp.server.session import ServerSession
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ToolsListChanged,
)

logger = logging.getLogger(__name__)

# NOTE: the SDK gives a handler no public signal when a connection closes, so
# connections are kept up to this count and the oldest are forgotten first.
# Past it, the clients of the oldest connections miss change notifications.
MAX_TRACKED_CONNECTIONS = 1024


@dataclass(frozen=True)
class ListingChange:
    """The set of hub listings that changed."""

    tools: bool = False
    prompts: bool = False
    resources: bool = False

    def __bool__(self) -> bool:
        return self.tools or self.prompts or self.resources


class ClientNotifier:
    """Sends listing changes to every connected client of the hub."""

    def __init__(self) -> None:
        self.bus = InMemorySubscriptionBus()
        self.listen_handler = ListenHandler(self.bus)
        self._sessions: deque[ServerSession] = deque(maxlen=MAX_TRACKED_CONNECTIONS)

    def add(self, session: ServerSession) -> None:
        """Remember a handshake-era connection; its notifications go to its standalone stream."""
        self._sessions.append(session)

    async def send(self, change: ListingChange) -> None:
        """Notify every client of ``change``; a closed connection is skipped."""
        if not change:
            return

        for session in list(self._sessions):
            try:
                if change.tools:
                    await session.send_tool_list_changed()
                if change.prompts:
                    await session.send_prompt_list_changed()
                if change.resources:
                    await session.send_resource_list_changed()
            except Exception:
                logger.debug("dropped a change notification: connection closed", exc_info=True)
                self._sessions.remove(session)

        if change.tools:
            await self.bus.publish(ToolsListChanged())
        if change.prompts:
            await self.bus.publish(PromptsListChanged())
        if change.resources:
            await self.bus.publish(ResourcesListChanged())

    def close(self) -> None:
        self.listen_handler.close()
        self._sessions.clear()
