"""The hub: one MCP server in front of the model, data and execution servers."""
