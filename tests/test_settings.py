"""The one settings object: every variable parsed in one place, one-line errors, one table."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from services.core.cpus import default_threads
from services.web.settings import Settings, SettingsError, variables
from tests.conftest import REPO_ROOT

BAD_VALUES = {  # variable → a value it must refuse
    "MODEL_REQUIRED": "2",  # once read as "required" by gunicorn and "optional" by the app
    "MODEL_RETRY_SECONDS": "soon",
    "MAX_CONTENT_LENGTH": "10MB",
    "MAX_BATCH": "0",
    "MAX_IMAGE_PIXELS": "-5",
    "PORT": "eighty",
    "WEB_CONCURRENCY": "abc",
    "GUNICORN_THREADS": "1.5",
    "GUNICORN_TIMEOUT": "",  # empty means "default", so this one is accepted: skipped below
    "GUNICORN_MAX_REQUESTS": "-1",
    "LOG_LEVEL": "loud",
    "ORT_INTRA_OP_THREADS": "all",
    "ORT_SPINNING": "maybe",
    "EMF_METRICS": "sometimes",
    "SERVING_TARGET": "kubernetes",
    "S3_INPUT_URI": "my-bucket/incoming",  # no scheme
    "S3_OUTPUT_URI": "s3://My_Bucket/results",  # not a bucket name S3 allows
    "S3_MAX_OBJECT_BYTES": "0",
}


@pytest.mark.parametrize("variable", [v for v, raw in BAD_VALUES.items() if raw])
def test_a_bad_value_is_one_line_naming_the_variable(variable: str) -> None:
    raw = BAD_VALUES[variable]
    with pytest.raises(SettingsError) as info:
        Settings.from_env({variable: raw})
    message = str(info.value)
    assert message.startswith(f"{variable}={raw!r} is not valid: expected ")
    assert "\n" not in message


def test_empty_means_default_and_overrides_win() -> None:
    assert Settings.from_env({"GUNICORN_TIMEOUT": ""}).timeout == 30
    settings = Settings.from_env({"MAX_BATCH": "4"}, {"MAX_BATCH": 8, "MHIST_API_TOKEN": "t"})
    assert (settings.max_batch, settings.api_token) == (8, "t")
    with pytest.raises(SettingsError, match="unknown setting"):
        Settings.from_env({}, {"MAX_BATHC": 8})


def test_s3_locations_are_folders_given_in_pairs_that_cannot_loop() -> None:
    settings = Settings.from_env({"S3_INPUT_URI": "s3://slides/incoming",
                                  "S3_OUTPUT_URI": "s3://slides/results/"})
    assert (settings.s3_input.bucket, settings.s3_input.prefix) == ("slides", "incoming/")
    assert str(settings.s3_output) == "s3://slides/results/"
    assert Settings.from_env({}).s3_input is None  # the S3 flow is off by default
    whole = Settings.from_env({"S3_INPUT_URI": "s3://slides", "S3_OUTPUT_URI": "s3://out/"})
    assert whole.s3_input.prefix == ""
    problems = {
        ("s3://slides/in/", ""): "S3_INPUT_URI is set but S3_OUTPUT_URI is not",
        ("", "s3://slides/out/"): "S3_OUTPUT_URI is set but S3_INPUT_URI is not",
        ("s3://slides/in/", "s3://slides/in/results/"): "would trigger the function again",
        ("s3://slides/", "s3://slides/results/"): "would trigger the function again",
        ("s3://slides/a/a/", "s3://slides/a/"): "would trigger the function again",
        ("s3://slides//x", "s3://out/"): "S3_INPUT_URI='s3://slides//x' is not valid",
    }
    for (source, results), message in problems.items():
        with pytest.raises(SettingsError, match=re.escape(message)) as info:
            Settings.from_env({"S3_INPUT_URI": source, "S3_OUTPUT_URI": results})
        assert "\n" not in str(info.value)
    # Another bucket, or a sibling folder, is fine.
    Settings.from_env({"S3_INPUT_URI": "s3://slides/a/", "S3_OUTPUT_URI": "s3://slides/b/"})
    Settings.from_env({"S3_INPUT_URI": "s3://slides/", "S3_OUTPUT_URI": "s3://results/"})


def test_ort_threads_follow_the_worker_layout() -> None:
    layout = Settings.from_env({"WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "1"})
    assert layout.ort_threads == default_threads(1)
    assert Settings.from_env({"ORT_INTRA_OP_THREADS": "3"}).ort_threads == 3


def test_each_target_reads_the_same_knob_under_one_name() -> None:
    env = {"GUNICORN_THREADS": "3", "MAX_BATCH": "5", "ORT_INTRA_OP_THREADS": "1"}
    for target in ("flask", "lambda", "sagemaker"):
        settings = Settings.from_env({**env, "SERVING_TARGET": target})
        assert (settings.threads, settings.max_batch, settings.ort_threads) == (3, 5, 1)


def test_docs_table_lists_every_variable() -> None:
    """docs/serving.md's settings table is generated from variables() by docs/hooks.py at
    build time; every variable, ours and SageMaker's, has a row there."""
    from tests.test_docs import load_hooks

    table = load_hooks().settings_table()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    documented = {re.match(r"\| `([A-Z0-9_]+)`", row).group(1) for row in rows}
    ours = {env for env, _ in variables().values()}
    sagemakers = {sm for _, sm in variables().values() if sm}
    assert documented == ours
    assert sagemakers <= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))


def test_gunicorn_refuses_a_bad_setting_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.runtime.server"], cwd=REPO_ROOT, capture_output=True,
        text=True,
        timeout=60, env={"PATH": "/usr/bin:/bin", "WEB_CONCURRENCY": "abc",
                         "MODEL_PATH": "/nonexistent.onnx"})
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "mhist: cannot start: WEB_CONCURRENCY='abc' is not valid: expected a positive integer")


def test_server_help_lists_every_setting_with_its_default() -> None:
    result = subprocess.run([sys.executable, "-m", "services.runtime.server", "--help"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "WEB_CONCURRENCY": "abc"})
    assert result.returncode == 0, result.stderr  # help works even with a bad environment
    for env, sagemaker_env in variables().values():
        assert f"  {env}" in result.stdout
        if sagemaker_env:
            assert f"(SageMaker: {sagemaker_env})" in result.stdout
    assert result.stdout.count("(default: ") == len(variables())
