"""The data layer: manifests, the P×K sampler, crop and evaluation datasets with their collation.

``speakertrip.data.manifest`` (JSONL utterance lists), ``speakertrip.data.sampler`` (``PKSampler``),
``speakertrip.data.datasets`` (``CropDataset``, ``EvalDataset``, ``bucket_batches``).
"""

from __future__ import annotations

from speakertrip.data.manifest import Utterance, read_manifest, write_manifest

__all__ = ["Utterance", "read_manifest", "write_manifest"]
