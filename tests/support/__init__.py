"""Helpers the tests share: builders of test data, command-line groups, pipeline waits.

Tests import from here, never the private (``_name``) helpers of the code under test."""
