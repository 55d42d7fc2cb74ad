"""`python -m workers.cli`: the `dsar` command line, as the console script runs it."""

from workers.cli import main

main()
