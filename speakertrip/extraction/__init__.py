"""Extraction: utterances → embeddings. Batched embedding (:mod:`.batched`), the model users load
(:mod:`.model`), embedding stores (:mod:`.store`), whole corpora across ranks (:mod:`.corpus`), and
deployable ONNX / TorchScript exports (:mod:`.export`, imported on its own: it needs the export extra).

>>> import numpy as np
>>> from speakertrip.testing import tiny_model_artifact
>>> model = load_model(tiny_model_artifact())
>>> store = EmbeddingStore(["a", "b"], embed_many(model, [np.ones(16000), np.zeros(8000) + 0.5], sample_rate=16000))
>>> store.embeddings.shape
(2, 192)
"""

from __future__ import annotations

from speakertrip.extraction.batched import embed_many, embed_one, split_chunks
from speakertrip.extraction.corpus import embed_corpus, find_items
from speakertrip.extraction.model import EmbeddingModel, load_model, load_speechbrain_checkpoint
from speakertrip.extraction.store import EmbeddingStore, load_store, save_store

__all__ = ["EmbeddingModel", "EmbeddingStore", "embed_corpus", "embed_many", "embed_one", "find_items", "load_model",
           "load_speechbrain_checkpoint", "load_store", "save_store", "split_chunks"]
