"""The ``skulens`` command line."""
