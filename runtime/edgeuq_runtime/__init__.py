"""edgeuq_runtime: multi-sample uncertainty inference on the device (numpy core)."""
__version__ = "0.1.0"
