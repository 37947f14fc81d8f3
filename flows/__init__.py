"""Prefect flows, one per stage of the loop, each thin over the surgflow library."""
