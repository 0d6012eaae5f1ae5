"""speakertrip: speaker verification with triplet-loss metric learning.

>>> import speakertrip as st
>>> st.__version__
'0.1.0'

``st.load_model``, ``st.Verifier`` and the subpackages (``st.scoring``, ``st.losses``, ...)
are imported on first use, so that ``import speakertrip`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY_ATTRIBUTES = {
    "load_model": ("speakertrip.models", "load_model"),
    "EmbeddingModel": ("speakertrip.models", "EmbeddingModel"),
    "Verifier": ("speakertrip.verification", "Verifier"),
}
_SUBMODULES = {"audio", "corpora", "data", "features", "models", "losses", "training", "extraction", "scoring", "evaluation",
               "verification", "testing", "errors"}


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRIBUTES:
        module, attribute = _LAZY_ATTRIBUTES[name]
        return getattr(importlib.import_module(module), attribute)
    if name in _SUBMODULES:
        return importlib.import_module(f"speakertrip.{name}")
    raise AttributeError(f"module 'speakertrip' has no attribute {name!r}")
