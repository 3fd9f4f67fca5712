"""``python -m pacs_node`` runs the command line."""

from pacs_node.cli import main

main()
