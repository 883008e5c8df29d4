"""The science of each subcommand: typed results, no printing."""
