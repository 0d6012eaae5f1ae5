"""Corpora: one module per corpus, each turning its folder layout into manifests and trial lists.

A module listed in ``speakertrip.commands.prepare.CORPORA`` defines ``add_prepare_parser``
for ``speakertrip prepare <corpus>`` and a ``prepare_<corpus>(root, out, ...)`` function.
"""
