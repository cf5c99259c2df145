"""`python -m steelscan.cli ...` runs the command line."""

from steelscan.cli import main

main()
