"""The `hpo` command line: argument parsing and one thin module per command.

`main` is the console script's entry point; `python -m hpo.cli` runs it too.
"""

from hpo.cli.main import main

__all__ = ["main"]
