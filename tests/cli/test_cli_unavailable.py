"""A subcommand whose component is not installed says which extra installs it."""

from __future__ import annotations

from kubetune import cli


def test_an_unavailable_component_names_the_extra_to_install(capsys):
    run = cli._unavailable("monitor", "monitoring", "needs the 'evidently' package")
    assert run(None) == 2
    err = capsys.readouterr().err
    assert err.startswith("kubetune monitor: not available in this build (needs the 'evidently' package; ")
    assert "pip install 'kubetune[monitoring]'" in err
    assert "issue" not in err


def test_every_component_names_an_extra_that_pyproject_declares(repo_root):
    import tomllib

    extras = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for module, _, extra in cli.COMPONENTS:
        assert extra == "" or extra in extras, module
