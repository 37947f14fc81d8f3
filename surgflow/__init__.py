"""surgflow: continuous training for surgical-video models."""

__version__ = "0.1.0"
