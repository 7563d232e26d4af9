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
from .executors import EXECUTORS, GraphRunner, load_graph, register_executor
from .manifest import FORMAT, MANIFEST_VERSION, SUPPORTED_VERSIONS, GraphSpec, InputSpec, Manifest
from .noise import NOISE_MEANS, NOISE_SAMPLERS, NoiseSpec, mean_noise, sample_noise
from .preprocess import NORMALIZATIONS, normalize, validate_windows
from .session import UncertaintyRuntime
from .uncertainty import UncertaintyResult, decompose, entropy, softmax

__all__ = [
    "__version__",
    # inference
    "UncertaintyRuntime", "UncertaintyResult", "decompose", "entropy", "softmax",
    # bundles and manifests
    "Bundle", "load_bundle", "write_bundle", "sha256_file", "MANIFEST_FILE",
    "Manifest", "InputSpec", "GraphSpec", "MANIFEST_VERSION", "SUPPORTED_VERSIONS", "FORMAT",
    # noise contract
    "NoiseSpec", "NOISE_SAMPLERS", "NOISE_MEANS", "sample_noise", "mean_noise",
    # preprocessing
    "validate_windows", "normalize", "NORMALIZATIONS",
    # executors
    "EXECUTORS", "GraphRunner", "load_graph", "register_executor",
    # errors
    "RuntimeUQError", "BundleError", "ManifestError", "IntegrityError", "InputError", "BackendError",
]
