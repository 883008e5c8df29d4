from landscape_cli.cli.app import main

main()
