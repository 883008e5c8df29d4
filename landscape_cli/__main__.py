from landscape_cli.cli.entry import main

main()
