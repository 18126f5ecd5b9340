"""A pytest plugin: the skip census, and a failed run when a test is skipped for a reason
outside a short allowed list.

A package that ``.[dev]`` installs is imported, never skipped: a broken install step must turn
the run red, not into a green run with tests quietly missing. The only reasons a test may skip
are facts about the machine that CI cannot change: a CUDA device present or absent, a CPU with
or without native fp16, a machine too busy for a timing guard. Every run ends with the census
(reason -> count); a skip outside the list is marked as such and sets the exit status to 1.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

ALLOWED_SKIPS = {
    "CUDA device present or absent": re.compile(r"CUDA device"),
    "CPU with or without native fp16": re.compile(r"fp16"),
    "machine not quiet for a timing guard": re.compile(r"not a quiet machine"),
}

_skips: Counter[str] = Counter()


def _reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason.removeprefix("Skipped: ")


def _record(report: pytest.CollectReport | pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skips[_reason(report)] += 1


def allowed(reason: str) -> bool:
    return any(pattern.search(reason) for pattern in ALLOWED_SKIPS.values())


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _record(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _record(report)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    passing = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)  # all skipped: none ran
    if any(not allowed(reason) for reason in _skips) and exitstatus in passing:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    write = terminalreporter.write_line
    total = sum(_skips.values())
    terminalreporter.section("skip census")
    write(f"{total} skipped; allowed reasons: {', '.join(ALLOWED_SKIPS)}")
    for reason, count in _skips.most_common():
        verdict = "allowed" if allowed(reason) else "NOT ALLOWED (fails the run)"
        write(f"{count:4d}  {verdict}: {reason}")
    if any(not allowed(reason) for reason in _skips):
        write("a skip outside the allowed list fails the run: install '.[dev]' or fix the test")
