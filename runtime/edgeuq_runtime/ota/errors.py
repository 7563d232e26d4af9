"""Errors of the over-the-air updater. Every refusal carries a short machine-readable reason."""
from __future__ import annotations

from ..errors import RuntimeUQError

__all__ = ["OtaError", "UpdateRefused", "UpdateBusy", "SlotError"]


class OtaError(RuntimeUQError):
    """Base class of every OTA error."""


class UpdateRefused(OtaError):
    """An update was refused; the running model is untouched.

    ``reason`` is a short code (``tuf``, ``board``, ``abi``, ``floor``, ``canary-class``, ...);
    the message says what was wrong in words.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"update refused [{reason}]: {detail}")


class SlotError(OtaError):
    """The slot layout on the device is unusable (no verified bundle in any slot)."""


class UpdateBusy(UpdateRefused):
    """Another process holds the device's update lock (an update, rollback or mark-good runs)."""

    def __init__(self, detail: str) -> None:
        super().__init__("busy", detail)
