"""status.monitoring becomes the operator's gauges (names from docs/contracts.md)."""

from prometheus_client import REGISTRY

from kubetune.operator import handlers_monitoring as hm


def value(name, **labels):
    return REGISTRY.get_sample_value(name, labels)


def test_gauges_follow_status_and_forget_gone_signals_and_deployments():
    hm.export_gauges("ml", "gauge-bot", {"driftShare": 0.25, "safetyFlagRatio": 0.02, "samples": 812,
                                         "driftScores": {"prompt.content": 0.71, "response.length": 0.04}})
    assert value("kubetune_drift_share", namespace="ml", deployment="gauge-bot") == 0.25
    assert value("kubetune_safety_flag_ratio", namespace="ml", deployment="gauge-bot") == 0.02
    assert value("kubetune_monitor_samples", namespace="ml", deployment="gauge-bot") == 812
    assert value("kubetune_drift_score", namespace="ml", deployment="gauge-bot", signal="prompt.content") == 0.71

    hm.export_gauges("ml", "gauge-bot", {"driftShare": 0.5, "driftScores": {"prompt.content": 0.8}})
    assert value("kubetune_drift_share", namespace="ml", deployment="gauge-bot") == 0.5
    assert value("kubetune_drift_score", namespace="ml", deployment="gauge-bot", signal="response.length") is None

    hm.forget_gauges("ml", "gauge-bot")
    assert value("kubetune_drift_share", namespace="ml", deployment="gauge-bot") is None
    assert value("kubetune_drift_score", namespace="ml", deployment="gauge-bot", signal="prompt.content") is None


def test_one_name_in_two_namespaces_is_two_series():
    hm.export_gauges("team-a", "chat", {"driftShare": 0.1, "driftScores": {"prompt.content": 0.5}})
    hm.export_gauges("team-b", "chat", {"driftShare": 0.9, "driftScores": {"prompt.content": 0.9}})
    assert value("kubetune_drift_share", namespace="team-a", deployment="chat") == 0.1
    assert value("kubetune_drift_share", namespace="team-b", deployment="chat") == 0.9
    hm.forget_gauges("team-b", "chat")
    assert value("kubetune_drift_share", namespace="team-b", deployment="chat") is None
    assert value("kubetune_drift_score", namespace="team-a", deployment="chat", signal="prompt.content") == 0.5
    hm.forget_gauges("team-a", "chat")


def test_p_values_and_calibrated_verdicts_become_gauges_and_are_forgotten():
    hm.export_gauges("ml", "p-bot", {"driftScores": {"prompt.content": 0.8, "prompt.length": 0.1},
                                     "driftPValues": {"prompt.content": 0.001, "prompt.length": 0.3},
                                     "driftThresholds": {"prompt.content": 0.004, "prompt.length": 0.05}})
    labels = {"namespace": "ml", "deployment": "p-bot"}
    assert value("kubetune_drift_p_value", **labels, signal="prompt.content") == 0.001
    assert value("kubetune_drift_significant", **labels, signal="prompt.content") == 1.0
    assert value("kubetune_drift_significant", **labels, signal="prompt.length") == 0.0
    hm.export_gauges("ml", "p-bot", {"driftScores": {"prompt.content": 0.5}, "driftPValues": {"prompt.content": 0.4},
                                     "driftThresholds": {"prompt.content": 0.05}})
    assert value("kubetune_drift_significant", **labels, signal="prompt.content") == 0.0
    assert value("kubetune_drift_p_value", **labels, signal="prompt.length") is None
    hm.forget_gauges("ml", "p-bot")
    assert value("kubetune_drift_significant", **labels, signal="prompt.content") is None
