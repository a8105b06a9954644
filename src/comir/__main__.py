"""``python -m comir`` runs the command line, like the ``comir`` command."""

import sys

from comir.cli import main

sys.exit(main())
