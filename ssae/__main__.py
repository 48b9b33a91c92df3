"""`python -m ssae` runs the command line, as the `ssae` script does."""

import sys

from ssae.app.cli import main

sys.exit(main())
