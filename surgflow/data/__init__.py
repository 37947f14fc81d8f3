"""Videos, taxonomies, versioned datasets, views and clip loading.

Knows nothing of Kafka, models or Prefect.
"""
