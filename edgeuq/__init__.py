"""edgeuq: edge deployment toolchain for uncertainty-aware transformers."""
__version__ = "0.1.0"
