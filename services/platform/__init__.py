"""Platform glue: the one settings object, the embedded broker, topics, Kafka clients, the CLI."""
