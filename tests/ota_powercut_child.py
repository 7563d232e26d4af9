"""Child of the strace cross-check: one install on DEVICE with the FsRecorder on; prints its events.

``python ota_powercut_child.py DEVICE`` (run under strace by tests/test_ota_powercut.py)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pytest  # noqa: E402

from ota_powercut import FsRecorder  # noqa: E402

from edgeuq_runtime.ota.updater import OtaUpdater, UpdateConfig  # noqa: E402

dev = Path(sys.argv[1])
rec = FsRecorder(dev)
mp = pytest.MonkeyPatch()
rec.install(mp)
try:
    out = OtaUpdater(dev, config=UpdateConfig(attempts=2, healthy_needed=2, threads=1)).update()
finally:
    rec.stop()
    mp.undo()
print(json.dumps({"status": out["status"], "root": str(rec.root), "ops": [e.op for e in rec.events],
                  "touched": sorted(rec.touched)}))
