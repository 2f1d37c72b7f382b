"""`python -m quantship.cli`, as `quantship`'s click group alone (`python -m quantship` runs the
console script)."""

from quantship.cli import main

main()
