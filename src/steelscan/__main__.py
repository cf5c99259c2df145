"""`python -m steelscan ...` runs the command line."""

from steelscan.cli import main

main()
