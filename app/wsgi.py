"""The WSGI entry point gunicorn imports: ``app.wsgi:app``."""
from . import create_app

app = create_app()
