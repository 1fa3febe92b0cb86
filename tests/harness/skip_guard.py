"""Fail the run when a test under a guarded folder is skipped.

`KUBETUNE_FORBID_SKIPS=tests/operator/,tests/operator_serving/` (set by .ci/run) turns a skip
there into a failed session: a suite that silently stops running (a missing schema, an
uninstalled tool) shows in CI instead of passing green.
"""

from __future__ import annotations

import os

import pytest

ENV = "KUBETUNE_FORBID_SKIPS"


def guarded_prefixes(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    value = (environ if environ is not None else os.environ).get(ENV, "")
    return tuple(part.strip() for part in value.split(",") if part.strip())


class SkipGuard:
    def __init__(self, prefixes: tuple[str, ...]):
        self.prefixes = prefixes
        self.skipped: list[str] = []

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and report.nodeid.startswith(self.prefixes):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skipped.append(f"{report.nodeid}: {reason}")

    @pytest.hookimpl
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped and report.nodeid.startswith(self.prefixes):  # a module-level skip
            self.skipped.append(f"{report.nodeid}: {report.longrepr}")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.skipped and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.skipped:
            terminalreporter.section(f"skipped where {ENV} forbids it", red=True)
            for line in self.skipped:
                terminalreporter.line(line)


def register(config: pytest.Config) -> None:
    prefixes = guarded_prefixes()
    if prefixes:
        config.pluginmanager.register(SkipGuard(prefixes), "kubetune-skip-guard")
