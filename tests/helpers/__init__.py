"""What the tests share, imported as ``helpers.NAME`` from any folder under ``tests/`` (pytest's
``pythonpath`` in pyproject.toml puts ``tests/`` on the path): the samples, exact references,
quadratics with a chosen spectrum, the CLI runners and the bad-input contract."""
