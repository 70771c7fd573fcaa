"""Every backend x every op x every named edge case, against torch.nn.functional."""

import pytest

from cases import all_cases
from harness import check, fastconv_backends, kernel_of

import fastconv
from fastconv import dispatch

CASES = all_cases()


def _require(backend: str, case=None) -> None:
    """Skip unless ``backend`` runs here (and, given a case, has the function of its op)."""
    ok, reason = dispatch.status(backend)
    if not ok:
        pytest.skip(f"{backend} unavailable: {reason}")
    if case is None:
        return
    kernel = kernel_of(case)
    if not hasattr(dispatch.get_module(backend), kernel):  # an op this backend leaves to others
        pytest.skip(f"{backend} does not implement {kernel}")


@pytest.mark.parametrize("backend", fastconv_backends())
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_torch(backend, case):
    _require(backend, case)
    check(case, backend)


@pytest.mark.parametrize("case", [c for c in CASES if c.dtype == "float32"], ids=lambda c: c.id)
def test_auto_matches_torch(case):
    check(case, "auto")


def test_every_backend_is_tested():
    # The names the harness runs are the registry's: a new backend joins without edits here.
    assert set(fastconv_backends()) >= {"naive", "im2col", "numba", "c"}
    assert "torch" in fastconv.dispatch.backends()
