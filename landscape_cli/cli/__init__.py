"""The ``landscape`` command line (Typer): one module per subcommand, shared options in common."""
