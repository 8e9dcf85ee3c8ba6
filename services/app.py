"""`services.app:create_app`, the application factory's public name (kept for WSGI servers and
scripts that point at it); the app itself lives in services/web/app.py."""

from services.web.app import create_app

__all__ = ["create_app"]
