"""``python -m maas``."""

from maas.cli.main import app

app()
