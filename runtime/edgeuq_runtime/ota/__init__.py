"""Over-the-air updates for the device (``pip install edgeuq-runtime[ota]``).

* :mod:`.core` — the pure verification core (no IO): release rules, archive and bundle
  checks, canary checks, the boot decision.
* :mod:`.updater` — :class:`OtaUpdater` on ``tuf.ngclient.Updater`` with a shipped bootstrap root.
* :mod:`.fetchers` — HTTP (http.client, wall-clock deadline) and file transports behind tuf's one-method interface.
* :mod:`.slots` — A/B slots, fsync, atomic symlink flip, pending record, mark-good, rollback,
  and :func:`current_bundle`, the bundle the runtime must load.
* :mod:`.serve` — :func:`open_runtime` (boot + load) and :func:`serve_window` (predict and
  report health: N healthy windows mark a trial release good, a bad one rolls it back).
* :mod:`.canaries` — the ``canaries`` manifest section and its on-device check.

Importing this package needs only numpy (tuf is imported when an update runs), so a
device can always find and load its committed bundle.
"""
from .canaries import CanarySpec, canaries_of, parse_canaries, run_canaries
from .core import RUNTIME_ABI, SUPPORTED_ABIS, DeviceIdentity
from .errors import OtaError, SlotError, UpdateBusy, UpdateRefused
from .slots import boot, current_bundle, mark_good, record_window, rollback, status

__all__ = ["current_bundle", "boot", "mark_good", "record_window", "rollback", "status", "CanarySpec",
           "canaries_of", "parse_canaries", "run_canaries", "RUNTIME_ABI", "SUPPORTED_ABIS", "DeviceIdentity",
           "OtaError", "SlotError", "UpdateBusy", "UpdateRefused"]
