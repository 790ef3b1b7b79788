"""help-exchange: inter-branch fragility signalling for the French social-security funds.

Layout: ``core`` is the pure domain (contract models, taxonomy, policy, rules) and imports
no Kafka, Faust or SQL; ``platform`` holds settings, the embedded broker, topics and the CLI;
``producer``, ``correlator``, ``casebook`` and ``ledger`` are the services, thin adapters
around the core.
"""

__version__ = "0.1.0"
