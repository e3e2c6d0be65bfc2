"""`python -m hpo.cli`: the `hpo` command (worker processes are started this way)."""

import sys

from hpo.cli.main import main

sys.exit(main())
