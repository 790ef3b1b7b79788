"""The pure domain core: contract models, taxonomy, policy, rules, case lifecycle.

Nothing here imports Kafka, Faust or SQL (``tests/test_architecture.py`` enforces it), so the
rules that decide what may be shared under article L115-2-1 can be read and tested alone.
"""
