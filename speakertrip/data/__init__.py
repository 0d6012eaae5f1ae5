"""The data layer: manifests, the P×K sampler, the crop dataset with its collation.

``speakertrip.data.manifest`` (JSONL utterance lists), ``speakertrip.data.sampler`` (``PKSampler``),
``speakertrip.data.datasets`` (``CropDataset``, ``bucket_batches``).
"""

from __future__ import annotations

from speakertrip.data.manifest import Utterance, read_manifest, write_manifest

__all__ = ["Utterance", "read_manifest", "write_manifest"]
