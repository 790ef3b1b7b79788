"""The casebook service."""
