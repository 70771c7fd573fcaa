"""fastconv's environment variables, read on every call at the cost of a dict lookup.

``os.environ.get`` costs about a microsecond for a variable that is not set (it encodes the name,
then raises and catches KeyError), and a small convolution reads five (FASTCONV_VERBOSE,
FASTCONV_AUTOTUNE, FASTCONV_BACKEND and the c backend's test hooks).  ``os.environ`` keeps the
process environment in a dict of encoded names and values (``_data``), which every assignment to
``os.environ`` updates: :func:`get` reads that dict, with the names encoded once.  Where an
interpreter has no such dict it falls back to ``os.environ.get``; either way the answer is
``os.environ.get``'s.
"""

from __future__ import annotations

import os

_DATA = getattr(os.environ, "_data", None)
_KEYS: dict[str, object] = {}


def get(name: str, default: str | None = None) -> str | None:
    """``os.environ.get(name, default)``."""
    if _DATA is None:
        return os.environ.get(name, default)
    key = _KEYS.get(name)
    if key is None:
        key = _KEYS[name] = os.environ.encodekey(name)
    value = _DATA.get(key)
    return default if value is None else os.environ.decodevalue(value)
