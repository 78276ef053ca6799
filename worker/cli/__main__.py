"""``python -m worker.cli`` runs the ``chat-archiver`` command."""

from worker.cli import main

main(prog_name="chat-archiver")
