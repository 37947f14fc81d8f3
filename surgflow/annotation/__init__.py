"""The annotators' workbench: feedback tasks in Label Studio and corrections back to Kafka."""
