"""(3) Throughput of the Flask container: closed loop at concurrency 1, 2, 4, 8 on 127.0.0.1,
a bounded number of requests per level, for each gunicorn layout (workers × ORT threads, see
BenchConfig.server_settings) — the numbers behind the default layout of the `http` target
(services/settings.py, which services/gunicorn_conf.py reads).

The load generator runs on the same machine: its client threads take a little CPU from the
server, equally for every layout. Every answer is compared with the ONNX FP32 reference (the
container serves the INT8 file).
"""

from __future__ import annotations

import pytest

from benchmarks.checks import response_checker
from benchmarks.config import ServerSetting
from benchmarks.load import closed_loop
from benchmarks.targets import running, wait_first_ok
from services.settings import Settings


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
    check = response_checker(reference, bench_model.image.name, "int8")
    with running("flask", onnx_images["flask-int8"], threads=setting.ort_threads,
                 env=setting.env()) as target:
        wait_first_ok(target, png_224)
        # Every worker loads its own session: warm them all before measuring.
        closed_loop(target.base_url, target.path, png_224, "image/png",
                    setting.workers * setting.gunicorn_threads, 2 * setting.workers)
        levels = {}
        for concurrency in bench_config.concurrency:
            record = closed_loop(target.base_url, target.path, png_224, "image/png",
                                 concurrency, bench_config.throughput_requests,
                                 validate=check)
            levels[str(concurrency)] = record
    # The layout the `http` target takes by default on this machine (services/settings.py).
    default = Settings.from_env({})
    results.set_run(default_layout=ServerSetting(default.workers, default.ort_threads,
                                                 default.threads).label)
    results.put("throughput", setting.label, {
        "setting": setting.label, "workers": setting.workers,
        "gunicorn_threads": setting.gunicorn_threads, "ort_threads": setting.ort_threads,
        "levels": levels,
    })
    for concurrency, record in levels.items():
        assert record["errors"] == 0, (concurrency, record["error_examples"])
        assert record["ok"] == bench_config.throughput_requests
