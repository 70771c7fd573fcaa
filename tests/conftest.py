import os

import pytest
from hypothesis import HealthCheck, settings

# `make test` draws the same examples every run (derandomize): a CI run fails for a change in the
# code, never for a newly drawn case.  HYPOTHESIS_PROFILE=thorough explores: 5x the examples,
# drawn afresh each time.
settings.register_profile("default", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _clean_dispatch_state():
    """Each test starts from the default backend choice and thread count."""
    import fastconv
    from fastconv import dispatch, threads

    n = threads.get_num_threads()
    yield
    fastconv.set_backend(None)
    dispatch.set_autotune(False) if dispatch._autotune else None
    dispatch._autotune = None
    threads.set_num_threads(n)


@pytest.fixture
def restore_wait_policy(monkeypatch):
    """`fastconv bench` sets OMP_WAIT_POLICY for the runtimes it is about to load (passive on a busy
    machine): undo it after the test."""
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", ""))
    if not os.environ["OMP_WAIT_POLICY"]:
        monkeypatch.delenv("OMP_WAIT_POLICY")
