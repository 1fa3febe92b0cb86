"""Chart fixtures: each rendering is done once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chart.chart_render import CHART, CI_VALUES, Rendered, load_values, render_chart

@pytest.fixture(scope="session", params=[None, *CI_VALUES], ids=["default", *[p.stem for p in CI_VALUES]])
def values_file(request) -> Path | None:
    """None for the chart's defaults, else one of charts/kubetune/ci/*-values.yaml."""
    return request.param


@pytest.fixture(scope="session")
def rendered(values_file) -> Rendered:
    return render_chart(load_values(values_file), label=values_file.stem if values_file else "default")


@pytest.fixture(scope="session")
def default_render() -> Rendered:
    return render_chart({}, label="default")


@pytest.fixture(scope="session")
def namespaced_render() -> Rendered:
    return render_chart(load_values(CHART / "ci" / "namespaced-values.yaml"), label="namespaced")


@pytest.fixture(scope="session")
def integrations_render() -> Rendered:
    return render_chart(load_values(CHART / "ci" / "all-integrations-values.yaml"), label="all-integrations")
