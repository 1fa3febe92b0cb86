"""The quickstart trains on every CPU Ray reserved for the worker, not on one thread.

Real Ray (the session's local instance): a worker actor that reserves 2 CPUs, whose torch was
left at one thread (as an earlier import or a stray OMP_NUM_THREADS would leave it), ends up
with 2 after the trainer's worker setup.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow  # starts the session's Ray when no other test has (~10-60 s)


def test_worker_torch_threads_follow_the_cpu_reservation(ray_session):
    ray = ray_session
    if ray.cluster_resources().get("CPU", 0) < 2:
        pytest.skip("the session's Ray has fewer than 2 CPUs")

    @ray.remote(num_cpus=2)
    class Worker:
        def setup(self):
            import torch

            from kubetune.trainer.distributed import use_reserved_cpus

            torch.set_num_threads(1)
            before = torch.get_num_threads()
            return before, use_reserved_cpus(), torch.get_num_threads()

    worker = Worker.remote()
    try:
        before, returned, after = ray.get(worker.setup.remote(), timeout=120)
    finally:
        ray.kill(worker)
    assert before == 1
    assert returned == after == 2
