"""Run the command-line tool as ``python -m gateway``."""

from gateway.cli import main

main()
