"""Verification: the :class:`Verifier` (enrol, verify, identify) over an :class:`EnrolmentStore`.

A store string picks the backend (:func:`open_store`): a path is an SQLite file, a ``postgresql://``
URL is PostgreSQL + pgvector, shared by service replicas.

>>> import tempfile, numpy as np
>>> import speakertrip as st
>>> from speakertrip.testing import speech_like, tiny_model_artifact
>>> verifier = st.Verifier(st.load_model(tiny_model_artifact()), store=tempfile.mkdtemp() + "/speakers.db")
>>> verifier.enroll("alice", [speech_like(1, 2.0, seed=s) for s in (1, 2)], sample_rate=16000)
2
>>> result = verifier.verify("alice", speech_like(1, 2.0, seed=3), sample_rate=16000)
>>> result.threshold, isinstance(result.accepted, bool)
(0.5, True)
>>> [match.name for match in verifier.identify(speech_like(1, 2.0, seed=3), top_k=3, sample_rate=16000)]
['alice']
"""

from __future__ import annotations

from speakertrip.verification.enrolment_store import EnrolmentStore, ModelMismatchError, SpeakerInfo, check_name
from speakertrip.verification.stores import copy_store, open_store
from speakertrip.verification.verifier import Match, VerificationResult, Verifier

__all__ = ["EnrolmentStore", "Match", "ModelMismatchError", "SpeakerInfo", "VerificationResult", "Verifier",
           "check_name", "copy_store", "open_store"]
