from pairmine.cli import main

main()
