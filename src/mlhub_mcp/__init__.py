"""mlhub-mcp: model registry, datasets and model execution over the Model Context Protocol."""

__version__ = "0.1.0"
