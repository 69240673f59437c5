import sys

from imagend.cli import main

sys.exit(main())
