"""Every backend x every op x every named edge case, against torch.nn.functional."""

import pytest

from cases import all_cases
from harness import check, fastconv_backends, require

import fastconv

CASES = all_cases()


@pytest.mark.parametrize("backend", fastconv_backends())
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_torch(backend, case):
    require(backend, case)
    check(case, backend)


@pytest.mark.parametrize("case", [c for c in CASES if c.dtype == "float32"], ids=lambda c: c.id)
def test_auto_matches_torch(case):
    check(case, "auto")


def test_every_backend_is_tested():
    # The names the harness runs are the registry's: a new backend joins without edits here.
    assert set(fastconv_backends()) >= {"naive", "im2col", "numba", "c"}
    assert "torch" in fastconv.dispatch.backends()
