"""(3) Throughput of the Flask container against its in-process ceiling, per gunicorn layout.

For each layout (workers × ORT threads, × gthreads; benchmarks.config.ServerSetting):
1. the ceiling, in-process: `predict_bytes` and bare `session.run` of the same INT8 file in the
   same worker × thread layout, without HTTP (benchmarks.inprocess);
2. the container under wrk at concurrency 1, 2, 4, 8 (keep-alive connections, a fixed time per
   level; benchmarks.load.WRK_POLICY). wrk is a C event loop that costs little CPU, which
   matters because client and server share this machine's cores.

The report sets (2) against (1): images/s at concurrency 4 as a share of in-process
predict_bytes, and p99 against p50. Every answer is checked: the first against the ONNX FP32
reference, every one under load for status 200 and that same label.
"""

from __future__ import annotations

import pytest

from benchmarks.checks import response_checker
from benchmarks.config import ServerSetting
from benchmarks.inprocess import CALLS, inprocess_throughput
from benchmarks.load import WRK_POLICY, LoadGeneratorMissing, closed_loop, wrk_load, wrk_path
from benchmarks.targets import running, wait_first_ok
from services.web.settings import Settings
from tests.conftest import unavailable


def _settings_ids(settings: tuple[ServerSetting, ...]) -> list[str]:
    return [s.ident for s in settings]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "setting" in metafunc.fixturenames:
        from benchmarks.config import load_config

        # Collection-time view of the layouts (the fixture would be too late to parametrize).
        options = metafunc.config
        settings = load_config(options.getoption("--bench-mode"),
                               options.getoption("--bench-skip")).server_settings
        metafunc.parametrize("setting", settings, ids=_settings_ids(settings))


@pytest.mark.container
def test_flask_throughput(setting: ServerSetting, onnx_images, bench_model, bench_config,
                          png_224, reference, results):
    try:
        wrk_path()  # before the ceiling's and the container's minutes, not after
    except LoadGeneratorMissing as exc:
        unavailable(str(exc))
    ceiling = {call: inprocess_throughput(bench_model.file("int8"), png_224, setting, call,
                                          bench_config.throughput_seconds)
               for call in CALLS}
    check = response_checker(reference, bench_model.image.name, "int8")
    with running("flask", onnx_images["flask-int8"], threads=setting.ort_threads,
                 env=setting.env()) as target:
        _, first = wait_first_ok(target, png_224)
        assert check(first) is None, check(first)
        label = first.json()["label"]
        # Every worker loads its own session: warm them all before measuring.
        closed_loop(target.base_url, target.path, png_224, "image/png",
                    setting.workers * setting.gunicorn_threads, 2 * setting.workers,
                    validate=check)
        levels = {}
        for concurrency in bench_config.concurrency:
            levels[str(concurrency)] = wrk_load(
                target.base_url, target.path, png_224, "image/png", concurrency,
                bench_config.throughput_seconds, label)
    # The layout the `http` target takes by default on this machine (services/web/settings.py).
    default = Settings.from_env({})
    results.set_run(default_layout=ServerSetting(default.workers, default.ort_threads,
                                                 default.threads).label,
                    throughput_client=WRK_POLICY)
    results.put("throughput", setting.label, {
        "setting": setting.label, "workers": setting.workers,
        "gunicorn_threads": setting.gunicorn_threads, "ort_threads": setting.ort_threads,
        "inprocess": ceiling, "levels": levels,
    })
    for concurrency, record in levels.items():
        assert record["errors"] == 0, (concurrency, record["error_examples"])
        assert record["ok"] > 0, (concurrency, record)
