"""Host side of over-the-air updates (``pip install edgeuq[ota]``).

* :mod:`.keys` — ed25519 keys per TUF role, rotation (``edgeuq keys``).
* :mod:`.repository` — an in-memory TUF repository (python-tuf metadata API) that writes a
  static tree with consistent snapshots and per-role expiry.
* :mod:`.publish` — ``edgeuq publish``: a bundle release, bsdiff4 deltas, the channel file.
* :mod:`.canaries` — uncertainty canaries added to a bundle with the device runtime itself.

The device side lives in ``edgeuq_runtime.ota``.
"""
