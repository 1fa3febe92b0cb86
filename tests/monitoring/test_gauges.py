"""status.monitoring becomes the operator's gauges (names from docs/contracts.md)."""

from prometheus_client import REGISTRY

from kubetune.operator import handlers_monitoring as hm


def value(name, **labels):
    return REGISTRY.get_sample_value(name, labels)


def test_gauges_follow_status_and_forget_gone_signals_and_deployments():
    hm.export_gauges("gauge-bot", {"driftShare": 0.25, "safetyFlagRatio": 0.02, "samples": 812,
                                   "driftScores": {"prompt.content": 0.71, "response.length": 0.04}})
    assert value("kubetune_drift_share", deployment="gauge-bot") == 0.25
    assert value("kubetune_safety_flag_ratio", deployment="gauge-bot") == 0.02
    assert value("kubetune_monitor_samples", deployment="gauge-bot") == 812
    assert value("kubetune_drift_score", deployment="gauge-bot", signal="prompt.content") == 0.71

    hm.export_gauges("gauge-bot", {"driftShare": 0.5, "driftScores": {"prompt.content": 0.8}})
    assert value("kubetune_drift_share", deployment="gauge-bot") == 0.5
    assert value("kubetune_drift_score", deployment="gauge-bot", signal="response.length") is None

    hm.forget_gauges("gauge-bot")
    assert value("kubetune_drift_share", deployment="gauge-bot") is None
    assert value("kubetune_drift_score", deployment="gauge-bot", signal="prompt.content") is None
