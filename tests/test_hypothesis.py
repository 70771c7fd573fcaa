"""Hypothesis-drawn problems across the whole option space, for every backend, against torch."""

import pytest
from hypothesis import given, settings

import strategies
from harness import check, fastconv_backends, require

from fastconv import dispatch


@pytest.mark.parametrize("backend", fastconv_backends())
@pytest.mark.parametrize("family", list(strategies.ALL))
def test_drawn_problems_match_torch(backend, family):
    require(backend, None)
    module = dispatch.get_module(backend)
    if family in ("adaptive_max_pool2d", "activation", "linear") and not hasattr(
        module, {"activation": "activation"}.get(family, family)
    ):
        pytest.skip(f"{backend} does not implement {family}")

    # A share of the profile's examples (default 100; HYPOTHESIS_PROFILE=thorough: 500).
    share = (
        0.6
        if family in ("conv2d", "pool")
        else 0.1
        if family in ("activation", "linear", "adaptive_max_pool2d")
        else 0.25
    )

    @settings(max_examples=max(10, int(settings.default.max_examples * share)))
    @given(case=strategies.ALL[family])
    def run(case):
        check(case, backend)

    run()
