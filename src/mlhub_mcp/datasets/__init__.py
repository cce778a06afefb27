"""Data server: datasets with schema, preview and statistics."""
