"""The one server entry of the Flask and SageMaker containers: `python -m services.server`.

Checks the settings first, so a bad value is one line and exit status 1 — gunicorn itself reads
WEB_CONCURRENCY while it is imported and would die with a traceback on `WEB_CONCURRENCY=abc` —
then runs gunicorn with the one configuration (services/gunicorn_conf.py) on the one app.
"""

from __future__ import annotations

import sys

from services.settings import Settings, SettingsError

GUNICORN_ARGS = ["-c", "python:services.gunicorn_conf", "services.app:create_app()"]


def main() -> None:
    try:
        Settings.from_env()
    except SettingsError as exc:
        print(f"mhist: cannot start: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    from gunicorn.app.wsgiapp import run  # only now: its import reads WEB_CONCURRENCY

    sys.argv = ["gunicorn", *GUNICORN_ARGS]
    run()


if __name__ == "__main__":
    main()
