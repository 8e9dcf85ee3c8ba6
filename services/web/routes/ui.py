"""GET /: the upload page (static HTML/CSS/JS from services/web/static, no external origin)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

bp = Blueprint("ui", __name__)


@bp.get("/")
def index() -> Response:
    """Upload page: drop an image, see the label and the probabilities."""
    return current_app.send_static_file("index.html")
