"""Settings from the environment and the `kubetune operator` command line."""

from __future__ import annotations

import pytest

from kubetune.cli import build_parser
from kubetune.operator.main import HANDLER_MODULES, load_handlers
from kubetune.operator.settings import Settings, SettingsError


def test_defaults_are_cluster_wide():
    settings = Settings.from_env({})
    assert settings.clusterwide and settings.namespaces == () and settings.resync_seconds == 30.0


def test_values_from_environment():
    settings = Settings.from_env({
        "KUBETUNE_NAMESPACES": "ml, research ,",
        "KUBETUNE_TRAINER_IMAGE": "registry.example/trainer:1",
        "KUBETUNE_ENABLE_KEDA": "true",
        "KUBETUNE_RESYNC_SECONDS": "2.5",
        "KUBETUNE_EXTRA_LABELS": "team=ml,cost=gpu, example.com/owner=a.b_c-1,empty=",
    })
    assert settings.namespaces == ("ml", "research") and not settings.clusterwide
    assert settings.trainer_image == "registry.example/trainer:1" and settings.enable_keda is True
    assert settings.resync_seconds == 2.5 and settings.extra_labels == {
        "team": "ml", "cost": "gpu", "example.com/owner": "a.b_c-1", "empty": ""}


@pytest.mark.parametrize(("env", "name"), [
    ({"KUBETUNE_ENABLE_KEDA": "maybe"}, "KUBETUNE_ENABLE_KEDA"),
    ({"KUBETUNE_METRICS_PORT": "http"}, "KUBETUNE_METRICS_PORT"),
    ({"KUBETUNE_RESYNC_SECONDS": "0"}, "KUBETUNE_RESYNC_SECONDS"),
    ({"KUBETUNE_EXTRA_LABELS": "novalue"}, "KUBETUNE_EXTRA_LABELS"),
    ({"KUBETUNE_EXTRA_LABELS": "team=ml platform"}, "KUBETUNE_EXTRA_LABELS"),  # not a label value
    ({"KUBETUNE_EXTRA_LABELS": "Example.COM/team=ml"}, "KUBETUNE_EXTRA_LABELS"),  # prefix must be a DNS name
    ({"KUBETUNE_EXTRA_LABELS": "team=" + "x" * 64}, "KUBETUNE_EXTRA_LABELS"),
    ({"KUBETUNE_EXTRA_LABELS": "kubetune.io/finetunejob=other"}, "KUBETUNE_EXTRA_LABELS"),  # would break selectors
])
def test_bad_values_name_the_variable(env, name):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env(env)


def test_operator_subcommand_parses():
    args = build_parser().parse_args(["operator", "--namespace", "ml", "-n", "x", "--metrics-port", "0", "--standalone"])
    assert args.namespace == ["ml", "x"] and args.metrics_port == 0 and args.standalone and callable(args.func)


def test_bad_setting_exits_2(monkeypatch, capsys):
    monkeypatch.setenv("KUBETUNE_LOG_FORMAT", "xml")
    args = build_parser().parse_args(["operator"])
    assert args.func(args) == 2
    assert "KUBETUNE_LOG_FORMAT" in capsys.readouterr().err


def test_handler_modules_load():
    loaded = load_handlers()
    assert "kubetune.operator.handlers_finetunejob" in loaded and set(loaded) <= set(HANDLER_MODULES)
