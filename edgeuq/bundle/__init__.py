"""Bundle building (manifest + hashed graphs)."""
from .build import build_bundle

__all__ = ["build_bundle"]
