"""Errors raised by mlhub-mcp.

Every error the user can act on derives from ``MLHubError``, which derives from
the SDK's ``ToolError`` so that a tool raising it returns ``is_error=True`` with
the message, instead of the SDK's generic crash text::

    MLHubError
    ├── ConfigurationError      settings or hub_config.toml are invalid
    ├── NotFound                no such model, dataset, deployment or execution
    ├── InvalidInput            the caller's value cannot be used
    │   ├── PathNotAllowed      a path outside the configured import directories
    │   ├── InvalidModelFile    a model file that cannot be read or run
    │   ├── UntrustedModelFile  a pickle or joblib file not marked as trusted
    │   ├── InvalidDatasetFile  a dataset file that cannot be parsed
    │   └── SchemaMismatch      a dataset that does not fit a model
    ├── Conflict                the catalog already contains the entry, or its state changed
    ├── BackendUnavailable      the catalog or artifact backend cannot be reached
    └── ExecutionFailed         a run stopped on an error
"""

from mcp.server.mcpserver.exceptions import ToolError


class MLHubError(ToolError):
    """Base class of the errors mlhub-mcp reports to its callers."""


class ConfigurationError(MLHubError):
    """The settings or the configuration file are invalid."""


class NotFound(MLHubError):
    """An entry named by the caller does not exist."""

    def __init__(self, kind: str, name: str, hint: str = "") -> None:
        self.kind = kind
        self.name = name
        message = f"{kind} {name!r} not found"
        if hint:
            message = f"{message}; {hint}"
        super().__init__(message)


class InvalidInput(MLHubError):
    """A value given by the caller cannot be used."""


class PathNotAllowed(InvalidInput):
    """A local path lies outside every configured import directory."""


class InvalidModelFile(InvalidInput):
    """A model file cannot be read, checked or run."""


class UntrustedModelFile(InvalidInput):
    """A pickle or joblib file was given without the trusted flag."""


class InvalidDatasetFile(InvalidInput):
    """A dataset file cannot be parsed."""


class SchemaMismatch(InvalidInput):
    """A dataset does not have the columns or types a model needs."""


class Conflict(MLHubError):
    """The catalog already contains the entry, or its state changed meanwhile."""


class BackendUnavailable(MLHubError):
    """The catalog or the artifact backend cannot be reached."""


class ExecutionFailed(MLHubError):
    """An execution stopped on an error."""
