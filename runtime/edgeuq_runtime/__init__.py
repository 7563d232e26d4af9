"""edgeuq_runtime: multi-sample uncertainty inference on the device (numpy core).

Load a bundle (``manifest.json`` + trunk/head ONNX graphs) and predict::

    from edgeuq_runtime import UncertaintyRuntime
    rt = UncertaintyRuntime("bundle/", seed=0)
    result = rt.predict(windows)          # windows: (batch, rt.input_length) float array
    result.prediction, result.epistemic   # per input

Never imports torch or the host-side ``edgeuq`` package; backends (onnxruntime) are
imported lazily when a graph is loaded.
"""
__version__ = "0.1.0"

from .bundle import MANIFEST_FILE, Bundle, load_bundle, sha256_file, write_bundle
from .errors import BackendError, BundleError, InputError, IntegrityError, ManifestError, RuntimeUQError
from .executors import EXECUTORS, MAX_THREADS, GraphRunner, load_graph, register_executor
from .manifest import (FORMAT, MANIFEST_VERSION, MAX_SAMPLES, SUPPORTED_VERSIONS, GraphSpec, InputSpec, Manifest,
                       register_manifest_section)
from .noise import NOISE_MEANS, NOISE_SAMPLERS, NoiseSpec, mean_noise, sample_noise, sample_noise_tiled
from .preprocess import NORMALIZATIONS, input_quality, normalize, validate_windows
from .session import UncertaintyRuntime
from .uncertainty import UncertaintyResult, decompose, entropy, softmax

__all__ = [
    "__version__",
    # inference
    "UncertaintyRuntime", "UncertaintyResult", "decompose", "entropy", "softmax",
    # bundles and manifests
    "Bundle", "load_bundle", "write_bundle", "sha256_file", "MANIFEST_FILE",
    "Manifest", "InputSpec", "GraphSpec", "MANIFEST_VERSION", "SUPPORTED_VERSIONS", "FORMAT",
    "register_manifest_section", "MAX_SAMPLES",
    # noise contract
    "NoiseSpec", "NOISE_SAMPLERS", "NOISE_MEANS", "sample_noise", "mean_noise", "sample_noise_tiled",
    # preprocessing
    "validate_windows", "normalize", "NORMALIZATIONS", "input_quality",
    # executors
    "EXECUTORS", "GraphRunner", "load_graph", "register_executor", "MAX_THREADS",
    # errors
    "RuntimeUQError", "BundleError", "ManifestError", "IntegrityError", "InputError", "BackendError",
]

# The modules that register optional manifest sections (``register_manifest_section``) when
# imported, imported here statically so that a manifest holding their section parses wherever the
# runtime is used, and so that the import-linter contracts see the edges (no importlib). A new
# section module adds its line here; runtime/tests/test_rt_sections.py scans the package for every
# module that calls ``register_manifest_section`` and fails when one is missing from this list.
from . import calibration as _calibration  # noqa: F401,E402
from . import front_end as _front_end  # noqa: F401,E402
from . import placement as _placement  # noqa: F401,E402
from .ota import canaries as _canaries  # noqa: F401,E402
