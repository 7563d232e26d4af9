#!/usr/bin/env python3
"""The OTA goals table (issue 21's closing note), counted from the test suites that check them.

    python scripts/ota_goals.py                                  # run the suites, print the table
    python scripts/ota_goals.py --json results/ota_goals.json    # ... and write it with provenance
    python scripts/ota_goals.py --collect-only                   # count the cases without running them

Each OTA test file runs in its own ``python -m pytest`` process (JUnit XML parsed here):

* **attack and failure cases**: every collected item of the end-to-end fault suites
  (tests/test_ota_faults.py, test_ota_http.py, test_ota_redteam.py, test_ota_stream.py) except
  the items in ``NOT_CASES`` (controls, the case-table self check, measurements, unit checks of
  a helper, re-checks of a case counted elsewhere through a second code path). Each case
  asserts the refusal reason (or the recovery) and that the device is untouched, so a
  *passing* case is: not wrongly accepted, no traceback (any exception other than the
  refusal fails it), and -- with its run time under ``HANG_S`` -- no hang. A failing case is
  classified from its message: ``DID NOT RAISE`` = wrongly accepted, else a traceback/other.
* **power-cut points**: tests/test_ota_powercut.py's ``test_power_cut_total`` records the cut
  points, crash states and failures (a failure = a crash state that does not boot a verified
  bundle or loses the known-good release: "bricked").
* **fleet rollout**: tests/test_ota_rollout.py's bad-release fleet test records the fleet
  size, the devices of the first stage and whether the collector halted the rollout itself.

Nothing is counted from a run that did not happen: with ``--collect-only`` the outcome
columns say "not run".
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
CASE_SUITES = ("tests/test_ota_faults.py", "tests/test_ota_http.py", "tests/test_ota_redteam.py",
               "tests/test_ota_stream.py")
POWERCUT = "tests/test_ota_powercut.py"
ROLLOUT = "tests/test_ota_rollout.py::test_fleet_bad_release_halts_itself_after_the_first_stage"
HANG_S = 120.0     # a case running longer than this counts as a hang (the suites' deadlines are 2-10 s)
GOALS = {"cases": 150, "cut_points": 100, "fleet": 100}

#: Collected items that are not attack/failure cases (function name -> why).
NOT_CASES: Dict[str, str] = {
    "test_control_full_and_delta_updates_install": "control (a good update installs)",
    "test_control_root_and_targets_key_rotation_accepted": "control",
    "test_control_keys_rotate_on_disk_then_publish": "control",
    "test_control_update_over_http": "control",
    "test_case_table_matches_tests": "self check of the red-team case table",
    "test_bundle_archive_reads_members_in_bounded_memory": "measurement (memory of the reader)",
    "test_big_bundle_installs_with_bounded_extra_peak_rss": "measurement (peak RSS of an update child)",
    "test_content_range_must_continue_the_file": "unit check of the Content-Range parser",
    "test_download_to_file_hashes_across_resumes": "unit check of the download helper",
    "test_download_to_file_refuses_more_than_the_signed_length": "re-check (endless target counted in faults/http)",
    "test_bundle_archive_refuses_duplicates_and_sizes_beyond_the_signed_length":
        "re-check through the streaming reader of red-team member cases",
    "test_bundle_archive_refuses_a_sparse_member": "re-check (sparse tar counted in the red-team suite)",
    "test_truncated_archive_is_refused_before_extraction": "re-check (truncated archive counted end to end)",
    "test_member_shrinking_under_the_reader_is_refused": "unit check of the streaming reader",
    "test_delta_is_skipped_for_archives_above_the_in_memory_limit": "behaviour check (delta size limit)",
    "test_streamed_packing_is_byte_identical_to_the_published_archive": "unit check (archive identity)",
}


def _func(name: str) -> str:
    return name.split("[", 1)[0]


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "runtime"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def collect(target: str) -> List[str]:
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", target],
                       cwd=ROOT, env=_env(), capture_output=True, text=True)
    items = [ln.strip() for ln in r.stdout.splitlines() if "::" in ln]
    if r.returncode != 0 or not items:
        raise SystemExit(f"collecting {target} failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}")
    return items


def run(target: str, timeout: float) -> Tuple[List[Dict[str, Any]], float, int]:
    """Run one target under pytest; per item: id, outcome, seconds, message, properties."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        t0 = time.perf_counter()
        try:
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                                target], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
            code = r.returncode
        except subprocess.TimeoutExpired:
            return [], time.perf_counter() - t0, -1
        wall = time.perf_counter() - t0
        if not xml.is_file():
            raise SystemExit(f"pytest wrote no report for {target}:\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}")
        items = []
        for tc in ET.parse(xml).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                el = tc.find(tag)
                if el is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    message = (el.get("message") or "") + "\n" + (el.text or "")
            props = {p.get("name"): p.get("value") for p in tc.iter("property")}
            items.append({"name": tc.get("name"), "file": tc.get("classname"), "outcome": outcome,
                          "seconds": float(tc.get("time") or 0.0), "message": message[:2000], "properties": props})
        return items, wall, code


def count_cases(collect_only: bool, timeout: float, log=print) -> Dict[str, Any]:
    per_suite: Dict[str, Any] = {}
    totals = {"cases": 0, "passed": 0, "wrongly_accepted": 0, "tracebacks": 0, "hangs": 0, "skipped": 0}
    for suite in CASE_SUITES:
        if collect_only:
            names = [i.split("::", 1)[1] for i in collect(suite)]
            items = [{"name": n, "outcome": "not run", "seconds": 0.0, "message": ""} for n in names]
            wall = 0.0
        else:
            items, wall, code = run(suite, timeout)
            if code == -1:
                raise SystemExit(f"{suite} did not finish within {timeout:g} s: counted as hanging; fix it first")
        cases = [i for i in items if _func(i["name"]) not in NOT_CASES]
        row = {"collected": len(items), "cases": len(cases), "excluded": len(items) - len(cases),
               "passed": sum(i["outcome"] == "passed" for i in cases), "seconds": round(wall, 1),
               "slowest_case_s": round(max((i["seconds"] for i in cases), default=0.0), 2)}
        bad = [i for i in cases if i["outcome"] in ("failed", "error")]
        row["wrongly_accepted"] = sum("DID NOT RAISE" in i["message"] for i in bad)
        row["tracebacks"] = len(bad) - row["wrongly_accepted"]
        row["hangs"] = sum(i["seconds"] > HANG_S for i in cases)
        row["skipped"] = sum(i["outcome"] == "skipped" for i in cases)
        row["failed_cases"] = [f"{i['name']}: {i['message'][:300]}" for i in bad]
        per_suite[suite] = row
        for k in totals:
            totals[k] += row[k]
        log(f"  {suite}: {row['cases']} cases ({row['excluded']} other items), "
            + ("not run" if collect_only else f"{row['passed']} passed, {row['seconds']} s"))
    return {"suites": per_suite, **totals}


def _props(target: str, timeout: float, test: str) -> Tuple[Optional[Dict[str, str]], str]:
    items, _, code = run(target, timeout)
    if code == -1:
        return None, f"did not finish within {timeout:g} s"
    item = next((i for i in items if _func(i["name"]) == test), None)
    if item is None or item["outcome"] != "passed":
        return None, f"{test}: {item['outcome'] if item else 'not collected'} {item['message'][:300] if item else ''}"
    return item["properties"], "passed"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collect-only", action="store_true", help="count the cases; run nothing (outcomes: not run)")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds per pytest process")
    ap.add_argument("--json", type=Path, help="also write the table (results/ota_goals.json) with provenance")
    a = ap.parse_args(argv)
    from edgeuq.provenance import command_line, start, write_results
    from edgeuq.report import format_table, results_table

    prov = start("full", 1, packages=("numpy", "onnxruntime", "tuf"),
                 note="counts from the OTA test suites (scripts/ota_goals.py); not a timing")
    print("attack and failure cases:")
    cases = count_cases(a.collect_only, a.timeout)
    ran = not a.collect_only
    if ran:
        print(f"power cuts: running {POWERCUT}")
        pc, pc_status = _props(POWERCUT, a.timeout, "test_power_cut_total")
        print(f"fleet rollout: running {ROLLOUT}")
        fl, fl_status = _props(ROLLOUT, a.timeout, _func(ROLLOUT.split("::")[1]))
    else:
        pc = fl = None
        pc_status = fl_status = "not run"

    def num(d: Optional[Dict[str, str]], k: str) -> Optional[int]:
        return int(d[k]) if d and k in d else None

    not_run = "not run" if not ran else None
    c_ok = ran and cases["passed"] == cases["cases"] and not cases["skipped"]
    rows = [
        ["attack and failure cases", f">= {GOALS['cases']}", str(cases["cases"]),
         "yes" if c_ok and cases["cases"] >= GOALS["cases"] else ("not run" if not ran else "NO")],
        ["  wrongly accepted", "0", not_run or str(cases["wrongly_accepted"]),
         not_run or ("yes" if cases["wrongly_accepted"] == 0 and c_ok else "NO")],
        ["  tracebacks", "0", not_run or str(cases["tracebacks"]),
         not_run or ("yes" if cases["tracebacks"] == 0 and c_ok else "NO")],
        [f"  hangs (a case over {HANG_S:g} s)", "0", not_run or str(cases["hangs"]),
         not_run or ("yes" if cases["hangs"] == 0 and c_ok else "NO")],
    ]
    cut, fails = num(pc, "cut_points"), num(pc, "failures")
    rows += [
        ["power-cut points", f">= {GOALS['cut_points']}", str(cut) if cut is not None else pc_status,
         "yes" if cut is not None and cut >= GOALS["cut_points"] else ("not run" if not ran else "NO")],
        ["  crash states checked (synced / names / reorder)", "-",
         str(num(pc, "crash_states")) if pc else pc_status, "-"],
        ["  bricked or known-good lost", "0", str(fails) if fails is not None else pc_status,
         "yes" if fails == 0 else ("not run" if not ran else "NO")],
    ]
    fleet, halted = num(fl, "fleet_devices"), num(fl, "halted_automatically")
    rows += [
        ["fleet rollout halted by in-service health (simulated devices)", f">= {GOALS['fleet']}",
         str(fleet) if fleet is not None else fl_status,
         "yes" if fleet is not None and fleet >= GOALS["fleet"] and halted == 1 else ("not run" if not ran else "NO")],
        ["  devices updated in stage 1, rolled back to known-good", "-",
         f"{num(fl, 'stage1_updated')}, {num(fl, 'rolled_back_to_known_good')}" if fl else fl_status, "-"],
    ]
    hdr = ["goal", "target", "measured", "met"]
    print()
    print(format_table(hdr, rows))
    for suite, row in cases["suites"].items():
        for f in row["failed_cases"]:
            print(f"FAILED {suite}::{f}")
    met = all(r[3] in ("yes", "-") for r in rows)
    if a.json:
        note = ("Counted by scripts/ota_goals.py from the OTA test suites (each file in its own pytest process); "
                "cases = collected items of test_ota_faults/http/redteam/stream minus controls, measurements and "
                "re-checks (listed in the script); the power cuts and the fleet are simulated (in-process).")
        write_results(a.json, results_table(hdr, rows, note=note,
                                            detail={"cases": cases, "powercut": pc, "fleet": fl,
                                                    "not_cases": NOT_CASES, "hang_s": HANG_S}),
                      command_line("scripts/ota_goals.py", argv), prov)
        print(f"wrote {a.json}")
    return 0 if met or a.collect_only else 1


if __name__ == "__main__":
    sys.exit(main())
