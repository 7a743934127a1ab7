"""``python -m maas.cli``."""

from maas.cli.main import app

app()
