from quantship.cli import main

main()
