"""The inference service: the HTTP app, the fleet consumer of the ``videos`` topic, hot swap of
production chains and highlight reels (SPEC §8).

Nothing happens at import; :func:`surgflow.serving.server.serve` is the entry point.
"""
