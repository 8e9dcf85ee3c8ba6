"""The one server entry of the Flask and SageMaker containers: `python -m services.runtime.server`.

Checks the settings first, so a bad value is one line and exit status 1 — gunicorn itself reads
WEB_CONCURRENCY while it is imported and would die with a traceback on `WEB_CONCURRENCY=abc` —
then runs gunicorn with the one configuration (services/runtime/gunicorn_conf.py) on the one
app, behind nginx when FRONT_SERVER=nginx (services/runtime/nginx.py; the images set it). The
front server starts gunicorn on its unix socket with
`python -m services.runtime.server --upstream unix:PATH`.
"""

from __future__ import annotations

import sys

from services.web.settings import Settings, SettingsError

GUNICORN_ARGS = ["-c", "python:services.runtime.gunicorn_conf"]
APP = "services.runtime.server:worker_app()"
# gunicorn's exit status for a worker that could not boot: the master then stops the server with
# "Worker failed to boot" and the same status (gunicorn.arbiter.Arbiter.WORKER_BOOT_ERROR).
WORKER_BOOT_ERROR = 3
UPSTREAM_FLAG = "--upstream"  # `--upstream unix:PATH`: run gunicorn there, behind the front


def worker_app():
    """The app of one gunicorn worker: `create_app()`, except that a model or setting that
    cannot be served is one line on stderr (prefixed as the container's entry point prefixes
    its own: `serve:` on SageMaker) and exit status 3, not a traceback from every worker.

    This is where the model file is checked for real: the worker's load is the only load, so
    a container pays for importing onnxruntime and building a session once, not twice.
    """
    from services.core.errors import ModelLoadError
    from services.web.app import create_app  # numpy, onnxruntime: in the worker, after the fork

    settings = Settings.from_env()  # main() has checked this environment already
    prefix = "serve" if settings.target == "sagemaker" else "mhist"
    try:
        return create_app()
    except ModelLoadError as exc:
        print(f"{prefix}: cannot start: {exc}", file=sys.stderr, flush=True)
        sys.exit(WORKER_BOOT_ERROR)


def usage() -> str:
    """--help: what the command does, and every setting it reads, from their declarations."""
    from services.web.settings import describe

    lines = ["usage: python -m services.runtime.server",
             "",
             "Serve the ONNX model named by MODEL_PATH with gunicorn (behind nginx when",
             "FRONT_SERVER=nginx). Takes no arguments: every setting comes from the environment.",
             "Targets: F the Flask container, L Lambda, S SageMaker.",
             ""]
    for row in describe():
        names = row["variable"] + (f" (SageMaker: {row['sagemaker']})" if row["sagemaker"] else "")
        lines += [f"  {names}  [{row['read_by']}]",
                  f"      {row['doc']} (default: {row['default'].replace('`', '')})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        sys.exit(0)
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
              "environment (--help lists them)", file=sys.stderr, flush=True)
        sys.exit(2)
    elif settings.front_server == "nginx":
        from services.runtime import nginx

        sys.exit(nginx.run(settings))
    from gunicorn.app.wsgiapp import run  # only now: its import reads WEB_CONCURRENCY
    from gunicorn.errors import HaltServer

    sys.argv = ["gunicorn", *GUNICORN_ARGS, *extra, APP]
    try:
        run()
    except HaltServer as exc:
        # gunicorn 26 halts on the first worker that fails to boot, then raises the same
        # HaltServer again, uncaught, while reaping the next one: one line and its status
        # (3) instead of two tracebacks. Each worker has already said why (worker_app).
        print(f"mhist: stopped: {exc.reason}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_status)


if __name__ == "__main__":
    main()
