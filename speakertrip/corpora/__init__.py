"""Corpora: one module per corpus, each turning its folder layout into manifests and trial lists.

Each defines a ``prepare_<corpus>(...)`` function with typed arguments; ``speakertrip prepare <corpus>``
(:mod:`speakertrip.commands.prepare`) parses the command line, calls it and prints.
"""
