"""The Kafka side of the loop: wire schemas, broker, producers, the feedback consumer."""
