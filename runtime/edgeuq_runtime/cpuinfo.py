"""The CPU's feature flags as the kernel reports them (``flags`` line of ``/proc/cpuinfo``): one
reader (flags and vendor) for the board's timing agent (it tells the host which ISA the board runs, so placement
skips libraries compiled for an ISA the board lacks) and for the host's own view
(:mod:`edgeuq.hostcpu`, which adds the ``EDGEUQ_HOST_ISA`` cap)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

__all__ = ["cpu_flags", "cpu_vendor", "check_vendor_name"]


def _first_field(cpuinfo: Path, keys: tuple) -> Optional[str]:
    """The value of the first line of ``cpuinfo`` whose key is ``keys[0]`` (else ``keys[1]``, ...);
    None when the file is unreadable or has no such line."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for key in keys:
        for line in text.splitlines():
            if line.split(":", 1)[0].strip() == key and ":" in line:
                return line.split(":", 1)[1]
    return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> Optional[frozenset]:
    """The first ``flags`` line of ``cpuinfo`` as a set; None when the file is unreadable or has no
    such line (not Linux, or an ARM kernel, which says ``Features``: read that line instead)."""
    value = _first_field(cpuinfo, ("flags", "Features"))
    return None if value is None else frozenset(value.split())


#: ``vendor_id`` of /proc/cpuinfo -> the short name tuning databases are kept under.
CPU_VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd", "HygonGenuine": "hygon"}


def cpu_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> Optional[str]:
    """The x86 CPU's vendor as a short lower-case name (``intel``, ``amd``, ``hygon``; another
    ``vendor_id`` lower-cased), from the first ``vendor_id`` line of ``cpuinfo``; None when the
    file is unreadable or has none (not x86, not Linux)."""
    value = _first_field(cpuinfo, ("vendor_id",))
    if value is None:
        return None
    raw = value.strip()
    return CPU_VENDORS.get(raw, raw.lower() or None)


def check_vendor_name(vendor: str) -> str:
    """``vendor`` if it is a CPU vendor's short name as :func:`cpu_vendor` gives them (lower case,
    letters, digits and dashes: ``intel``, ``amd``), else ValueError: such names become folder
    names (``tuning/<target>@<vendor>``)."""
    if not isinstance(vendor, str) or not vendor or not vendor.replace("-", "").isalnum() or vendor != vendor.lower():
        raise ValueError(f"CPU vendor must be a lower-case name such as 'intel' or 'amd', got {vendor!r}")
    return vendor
