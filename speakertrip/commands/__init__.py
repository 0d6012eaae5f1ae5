"""Subcommands of the `speakertrip` command; each module defines `register(subparsers)`."""

# what ``--data`` accepts in embed, calibrate and finetune (speakertrip.data.items reads it); here, not there, so that
# building the parser imports no numpy: every command builds all of it, `speakertrip metrics --help` included
DATA_HELP = ("an audio folder in the VoxCeleb layout (DIR/<speaker>/<session>/<utt>.wav; keys are paths relative to "
             "DIR, the speaker is the first folder) or a manifest .jsonl (keys: utt_id)")
