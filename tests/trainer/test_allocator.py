"""The allocator local Ray training workers run on (trainer_image/allocator.py)."""

from __future__ import annotations

import pytest

from kubetune.trainer import pipeline
from kubetune.trainer.allocator import TCMALLOC_LIBRARY, find_tcmalloc, worker_allocator_env
from kubetune.trainer.errors import TrainerConfigError

INSTALLED = f"/usr/lib/x86_64-linux-gnu/{TCMALLOC_LIBRARY}"


def installed(path: str) -> bool:
    return path == INSTALLED


def missing(_path: str) -> bool:
    return False


def test_auto_preloads_tcmalloc_when_installed_and_quietens_its_large_allocation_reports():
    env = worker_allocator_env({}, exists=installed)
    assert env["LD_PRELOAD"] == INSTALLED
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40


def test_auto_keeps_glibc_when_tcmalloc_is_missing():
    assert worker_allocator_env({}, exists=missing) == {}
    assert worker_allocator_env({"KUBETUNE_ALLOCATOR": "auto"}, exists=missing) == {}


def test_system_and_an_allocator_already_preloaded_are_left_alone():
    assert worker_allocator_env({"KUBETUNE_ALLOCATOR": "system"}, exists=installed) == {}
    assert worker_allocator_env({"LD_PRELOAD": "/opt/libjemalloc.so.2"}, exists=installed) == {}


def test_other_preloads_are_kept_in_front():
    env = worker_allocator_env({"LD_PRELOAD": "/opt/libtrace.so"}, exists=installed)
    assert env["LD_PRELOAD"] == f"/opt/libtrace.so {INSTALLED}"


def test_tcmalloc_asked_for_but_missing_fails_with_what_to_install():
    with pytest.raises(TrainerConfigError, match="libtcmalloc-minimal4"):
        worker_allocator_env({"KUBETUNE_ALLOCATOR": "tcmalloc"}, exists=missing)


def test_an_unknown_allocator_names_the_variable_and_the_choices():
    with pytest.raises(TrainerConfigError, match=r"KUBETUNE_ALLOCATOR='mimalloc'.*auto, tcmalloc, system"):
        worker_allocator_env({"KUBETUNE_ALLOCATOR": "mimalloc"}, exists=installed)


def test_a_local_cluster_gives_the_workers_the_allocator_env(monkeypatch):
    """ray.init is replaced by a recorder: starting a second local Ray in the test process is
    not possible while the session's Ray runs (the next test runs a real worker instead)."""
    ray = pytest.importorskip("ray")
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    assert pipeline._connect_ray(True, 1, {"LD_PRELOAD": INSTALLED})
    assert calls[0]["runtime_env"]["env_vars"] == {"LD_PRELOAD": INSTALLED}
    assert pipeline._connect_ray(True, 1, {})
    assert "env_vars" not in calls[1]["runtime_env"]


@pytest.mark.skipif(find_tcmalloc() is None, reason=f"{TCMALLOC_LIBRARY} not installed (.ci/run installs it)")
def test_a_ray_worker_started_with_the_env_runs_on_tcmalloc_and_trains(ray_session):
    """A real Ray worker given the env through runtime_env (as the local cluster's workers are)
    has tcmalloc mapped and runs a torch forward and backward on it."""
    ray = ray_session
    env = worker_allocator_env({})

    @ray.remote(num_cpus=1, runtime_env={"env_vars": env})
    def probe():
        import torch

        model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.SiLU(), torch.nn.Linear(256, 8))
        loss = model(torch.randn(32, 64)).pow(2).mean()
        loss.backward()
        with open("/proc/self/maps") as maps:
            return "tcmalloc" in maps.read(), float(loss), model[0].weight.grad is not None

    mapped, loss, has_grad = ray.get(probe.remote(), timeout=120)
    assert mapped
    assert loss > 0 and has_grad
