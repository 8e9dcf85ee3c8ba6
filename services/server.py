"""The one server entry of the Flask and SageMaker containers: `python -m services.server`.

Checks the settings first, so a bad value is one line and exit status 1 — gunicorn itself reads
WEB_CONCURRENCY while it is imported and would die with a traceback on `WEB_CONCURRENCY=abc` —
then runs gunicorn with the one configuration (services/gunicorn_conf.py) on the one app, behind
nginx when FRONT_SERVER=nginx (services/front.py; the images set it). The front server
starts gunicorn on its unix socket with `python -m services.server --upstream unix:PATH`.
"""

from __future__ import annotations

import sys

from services.settings import Settings, SettingsError

GUNICORN_ARGS = ["-c", "python:services.gunicorn_conf"]
APP = "services.app:create_app()"
UPSTREAM_FLAG = "--upstream"  # `--upstream unix:PATH`: run gunicorn there, behind the front


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"mhist: cannot start: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    extra: list[str] = []
    if argv[:1] == [UPSTREAM_FLAG] and len(argv) == 2:
        # Only nginx can reach the socket, so its X-Forwarded-* (which it overwrites) are true.
        extra = ["--bind", argv[1], "--forwarded-allow-ips", "*"]
    elif argv:
        print(f"mhist: unexpected arguments {' '.join(argv)}; settings come from the "
              "environment (README, Serving settings)", file=sys.stderr, flush=True)
        sys.exit(2)
    elif settings.front_server == "nginx":
        from services import front

        sys.exit(front.run(settings))
    from gunicorn.app.wsgiapp import run  # only now: its import reads WEB_CONCURRENCY

    sys.argv = ["gunicorn", *GUNICORN_ARGS, *extra, APP]
    run()


if __name__ == "__main__":
    main()
