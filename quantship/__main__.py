from quantship.cli import run

run()
