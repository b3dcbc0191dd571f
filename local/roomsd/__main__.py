import sys

from roomsd.cli import main

sys.exit(main())
