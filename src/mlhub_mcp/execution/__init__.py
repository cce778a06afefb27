"""Execution server: deployments and runs of models over datasets."""
