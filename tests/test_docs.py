"""The docstring examples run and print what they say."""

import doctest

import pytest

import fastconv.api
import fastconv.dispatch
import fastconv.threads


@pytest.mark.parametrize("module", [fastconv.api, fastconv.dispatch, fastconv.threads], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
