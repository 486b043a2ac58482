"""`python -m edgeopt.cli ...`: the same as the `edgeopt` console script."""
import sys

from edgeopt.cli import main

sys.exit(main())
