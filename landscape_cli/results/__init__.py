"""The result types the analyses return, each declared once (``results.base``): its JSON keys,
gate names, schema model and table rows follow from the declaration. Torch-free, so that
``landscape schema`` and ``--help`` start without it. Which command returns which type is said
by the command registry (``landscape_cli.commands``)."""
