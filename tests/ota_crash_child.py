"""Child process of the kill -9 tests: runs one OTA operation on a device directory.

``python ota_crash_child.py update|rollback|service|boot DEVICE``; the parent sets
``EDGEUQ_OTA_CRASH_AT`` (the process SIGKILLs itself at that write point) or
``EDGEUQ_OTA_CRASH_LOG`` (list the points passed).
"""
import sys

from edgeuq_runtime.ota import boot, record_window, rollback

op, dev = sys.argv[1], sys.argv[2]
if op == "update":
    from edgeuq_runtime.ota.updater import OtaUpdater, UpdateConfig

    OtaUpdater(dev, config=UpdateConfig(attempts=2, healthy_needed=2, threads=1)).update()
elif op == "rollback":
    rollback(dev, "crash test")
elif op == "service":
    record_window(dev, True)
    record_window(dev, True)
elif op == "boot":
    boot(dev)
else:
    raise SystemExit(f"unknown op {op}")
