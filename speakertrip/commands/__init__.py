"""Subcommands of the `speakertrip` command; each module defines `register(subparsers)`."""
