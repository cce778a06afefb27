"""Model server: a registry of model files and hosted LLMs."""
