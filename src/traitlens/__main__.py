"""`python -m traitlens ...` runs the command line (also under torchrun)."""

from traitlens.cli import main

main()
