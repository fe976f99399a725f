"""`python -m duetmc` is the `duetmc` command (torchrun uses this form)."""

from duetmc.cli import main

main()
