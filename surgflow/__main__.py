from surgflow.cli import main

main()
