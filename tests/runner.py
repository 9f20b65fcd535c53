"""
Run the trial suite and end with one line CI can read: ``N passed, N failed, N skipped``.

Usage: ``python -m tests.runner [trial test names]`` (default: the whole ``tests`` package).
The exit status is trial's, and non-zero when no test ran.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

_SUMMARY = re.compile(r"^(PASSED|FAILED) \((?P<counts>[^)]*)\)")


def summarize(line: str) -> tuple[int, int, int] | None:
    """Read (passed, failed, skipped) from trial's closing line."""
    match = _SUMMARY.match(line.strip())
    if not match:
        return None
    counts = {k.strip(): int(v) for k, v in (p.split("=") for p in match.group("counts").split(",") if "=" in p)}
    passed = counts.get("successes", 0) + counts.get("expectedFailures", 0)
    failed = counts.get("failures", 0) + counts.get("errors", 0) + counts.get("unexpectedSuccesses", 0)
    return passed, failed, counts.get("skips", 0)


def main(argv: list[str]) -> int:
    jobs = os.environ.get("TRIAL_JOBS", str(min(4, os.cpu_count() or 1)))
    names = argv or ["tests"]
    command = [sys.executable, "-m", "twisted.trial", f"--jobs={jobs}", *names]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = None
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        result = summarize(line) or result
    status = proc.wait()
    sys.stdout.flush()
    if result is None:
        print("0 passed, 1 failed (trial printed no summary)")
        return status or 1
    passed, failed, skipped = result
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    if passed == 0:
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
