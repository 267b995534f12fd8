"""``python -m skulens`` runs the CLI."""

from skulens.cli.app import main

main()
