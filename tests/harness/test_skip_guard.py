"""The CI guard: a skip under a guarded folder fails the run, elsewhere it does not."""

from __future__ import annotations

import pytest

from tests.harness.skip_guard import ENV

SUITE = {
    "pytest.ini": "[pytest]\nasyncio_default_fixture_loop_scope = function\n",
    "conftest.py": "from tests.harness.skip_guard import register\n\n"
                   "def pytest_configure(config):\n    register(config)\n",
    "tests/operator/test_a.py": "import pytest\n\ndef test_runs():\n    pass\n\n"
                                "def test_skips():\n    pytest.skip('schema absent')\n",
    "tests/other/test_b.py": "import pytest\n\ndef test_skips():\n    pytest.skip('tool absent')\n",
}


@pytest.fixture()
def suite(pytester):
    for path, text in SUITE.items():
        target = pytester.path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return pytester


def test_a_skip_in_a_guarded_folder_fails_the_run(suite, monkeypatch):
    monkeypatch.setenv(ENV, "tests/operator/")
    result = suite.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*skipped where KUBETUNE_FORBID_SKIPS forbids it*",
                                 "tests/operator/test_a.py::test_skips: *schema absent*"])
    assert "tests/other" not in result.stdout.str().split("forbids it")[1]


def test_without_the_variable_skips_are_only_reported(suite, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    result = suite.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret == pytest.ExitCode.OK
