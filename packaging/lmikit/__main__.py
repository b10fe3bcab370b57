"""`python -m lmikit` is the `lmi` command."""

from lmikit.cli import main

main()
