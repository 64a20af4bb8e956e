"""`python -m onfinish` is the `onfinish` command."""

from onfinish.cli import main

main()
