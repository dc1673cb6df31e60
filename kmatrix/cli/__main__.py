"""`python -m kmatrix.cli`: the kmatrix command."""

import os

from kmatrix.cli.main import main

# os._exit: the exit status is final even if a non-daemon thread lingers.
os._exit(main())
