"""Bundle building (manifest + hashed graphs): one writer for build, compile and quantize."""
from .build import BundleGraph, build_bundle, manifest_for, write_artifact_bundle

__all__ = ["build_bundle", "write_artifact_bundle", "manifest_for", "BundleGraph"]
