"""The producer service."""
