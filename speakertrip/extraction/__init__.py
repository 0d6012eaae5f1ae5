"""Extraction at scale: whole corpora into embedding stores, sharded across torchrun ranks (:mod:`.corpus`), and
deployable ONNX / TorchScript exports (:mod:`.export`, imported on its own: it needs the export extra).

The model and its ``embed`` / ``embed_batch`` live in :mod:`speakertrip.models`; embedding stores in
:mod:`speakertrip.data.embedding_store`.

>>> import tempfile
>>> from speakertrip.data.embedding_store import load_store
>>> from speakertrip.models import load_model
>>> from speakertrip.testing import make_voxceleb_tree, tiny_model_artifact
>>> root = make_voxceleb_tree(tempfile.mkdtemp(), num_speakers=2, sessions=1)
>>> embed_corpus(load_model(tiny_model_artifact()), root / "wav", root / "emb.npz")[:2]
(4, 4)
>>> load_store(root / "emb.npz").embeddings.shape
(4, 192)
"""

from __future__ import annotations

from speakertrip.extraction.corpus import embed_corpus

__all__ = ["embed_corpus"]
