"""`make test-repeat N=10`: the whole suite N times in a row on a fresh clone, and a table.

Each run is `make test` in a clone of the committed HEAD (what CI sees: an uncommitted
file is not there), with a JUnit report per run. The table gives each run's start (UTC
and platform-local), the conditions it ran under, its result and time, and every test
that failed with the first line of its error, so a failure is read, not rerun.

Conditions, to find what fails only sometimes:
  BUSY=1        keep both cores busy with another process during every run
  BUSY=alt      ... during every other run
  AT=23:59:30   every process's clock starts at that local (Asia/Shanghai) time today
                (TEST_CLOCK_START, see tests/conftest.py); a comma list cycles through
                times, e.g. AT=22:59:30,23:59:30,now
  J=3           three runs at a time, each in a clone of its own (a run that shares the
                machine with two others is a busy run too)
  KEEP=1        keep the clones (under .data/repeat/) after the runs

Usage: python -m tests.repeat [-n N] [-j J] [--busy {0,1,alt}] [--at T[,T...]]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ZoneInfo("Asia/Shanghai")


@dataclass
class Run:
    number: int
    started: datetime
    busy: bool
    at: str
    seconds: float = 0.0
    rc: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.failures


def _burn() -> None:  # pragma: no cover - runs in a child process
    while True:
        pass


def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        line = line.strip()
        if line:
            return line[:160]
    return ""


def read_report(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(counts, [(test id, first error line)]) from one JUnit report."""
    if not path.exists():
        return {}, [("<no report>", "the run ended before pytest wrote its report")]
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failures = []
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            for kind in ("failure", "error"):
                bad = case.find(kind)
                if bad is not None:
                    name = f"{case.get('classname', '')}::{case.get('name', '')}"
                    failures.append((name, _first_line(bad.get("message")) or kind))
    return counts, failures


def _summary(run: Run) -> str:
    c = run.counts
    if not c:
        return f"rc {run.rc}, no report"
    passed = c["tests"] - c["failures"] - c["errors"] - c["skipped"]
    parts = [f"{passed} passed"]
    for key in ("failures", "errors", "skipped"):
        if c[key]:
            parts.append(f"{c[key]} {key}")
    return ", ".join(parts)


def table(runs: list[Run]) -> str:
    lines = [
        "| run | started (UTC) | clock (Asia/Shanghai) | busy | result | time | failed tests |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        failed = "; ".join(f"`{name}`: {line}" for name, line in r.failures) or "-"
        lines.append(
            f"| {r.number} | {r.started:%Y-%m-%d %H:%M:%S} | {r.at} | "
            f"{'yes' if r.busy else 'no'} | {'PASS' if r.ok else 'FAIL'}: {_summary(r)} | "
            f"{r.seconds:.0f} s | {failed} |"
        )
    bad = sum(not r.ok for r in runs)
    lines.append("")
    lines.append(f"{len(runs) - bad} of {len(runs)} runs passed")
    return "\n".join(lines)


def fresh_clone(dest: Path) -> str:
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    if dirty:
        print("note: uncommitted changes are not in the clone; runs test HEAD", flush=True)
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=dest, capture_output=True, text=True
    ).stdout.strip()


def run_once(run: Run, clone: Path, work: Path) -> Run:
    env = {k: v for k, v in os.environ.items() if k not in ("TEST_CLOCK_START", "MAKEFLAGS")}
    if run.at != "now":
        env["TEST_CLOCK_START"] = run.at
    report = work / f"run-{run.number}.xml"
    log = work / f"run-{run.number}.log"
    run.started = datetime.now(UTC)
    t0 = time.monotonic()
    with open(log, "w") as out:
        run.rc = subprocess.run(
            ["make", "test", f"PYTEST_ARGS=--junitxml={report}"],
            cwd=clone,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        ).returncode
    run.seconds = time.monotonic() - t0
    run.counts, run.failures = read_report(report)
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=10)
    p.add_argument("-j", type=int, default=1, help="runs at once, each in a clone of its own")
    p.add_argument("--busy", choices=["0", "1", "alt"], default="0")
    p.add_argument("--at", default="now")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = ROOT / ".data" / "repeat" / stamp
    clones = [work / f"clone-{k}" for k in range(max(1, args.j))]
    commit = ""
    for clone in clones:
        commit = fresh_clone(clone)
    times = [t.strip() for t in args.at.split(",") if t.strip()] or ["now"]
    print(
        f"{args.n} runs of `make test` ({len(clones)} at a time) on fresh clones of {commit} "
        f"in {work}",
        flush=True,
    )
    pending = [
        Run(
            i,
            datetime.now(UTC),
            args.busy == "1" or (args.busy == "alt" and i % 2 == 0),
            times[(i - 1) % len(times)],
        )
        for i in range(1, args.n + 1)
    ]
    runs: list[Run] = []
    running: list[Run] = []
    lock = threading.Lock()
    burners: list[multiprocessing.Process] = []

    def set_burners() -> None:
        # the machine is busy while any running run asked for it
        with lock:
            want = any(r.busy for r in running)
            if want and not burners:
                for _ in range(os.cpu_count() or 2):
                    b = multiprocessing.Process(target=_burn, daemon=True)
                    b.start()
                    burners.append(b)
            elif not want and burners:
                for b in burners:
                    b.terminate()
                    b.join()
                burners.clear()

    def stream(clone: Path) -> None:
        while True:
            with lock:
                if not pending:
                    return
                run = pending.pop(0)
                running.append(run)
            set_burners()
            run_once(run, clone, work)
            with lock:
                running.remove(run)
                runs.append(run)
            set_burners()
            print(
                f"run {run.number}/{args.n}: {'PASS' if run.ok else 'FAIL'} {_summary(run)} "
                f"in {run.seconds:.0f} s (busy={run.busy}, clock={run.at}) "
                f"log {work / f'run-{run.number}.log'}",
                flush=True,
            )

    threads = [threading.Thread(target=stream, args=(c,)) for c in clones]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for b in burners:
            b.terminate()

    runs.sort(key=lambda r: r.number)
    result = table(runs)
    (work / "table.md").write_text(f"Commit {commit}\n\n{result}\n")
    print()
    print(result)
    if not args.keep:
        for clone in clones:
            shutil.rmtree(clone, ignore_errors=True)
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
