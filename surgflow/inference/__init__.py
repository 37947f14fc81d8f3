"""The chain runner: a registered chain over a whole video with onnxruntime."""

from surgflow.inference.runner import ChainRunner
from surgflow.inference.timeline import Analysis, Timeline

__all__ = ["Analysis", "ChainRunner", "Timeline"]
