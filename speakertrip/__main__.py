"""`python -m speakertrip` runs the command line."""

import sys

from speakertrip.cli import main

sys.exit(main())
