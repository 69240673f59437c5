"""`python -m imagend`: the same as the `imagend` command."""

import sys

from imagend.cli import main

sys.exit(main())
