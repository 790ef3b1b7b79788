"""The top floor: the command line, the wiring of the services, the demo.

Only this package imports several services; each service imports only the platform, the
core and itself (``tests/test_layering.py``)."""
