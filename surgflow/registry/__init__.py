"""Registered chains on MLflow: versions, stage pointers with history, seals."""

from surgflow.registry.artifacts import ArtifactMismatch
from surgflow.registry.model import STAGES, ModelVersion, model_name, parse_ref
from surgflow.registry.store import ModelRegistry

__all__ = ["STAGES", "ArtifactMismatch", "ModelRegistry", "ModelVersion", "model_name",
           "parse_ref"]
