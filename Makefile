# Two commands on a fresh machine (Python 3.11 + make):
#   make demo   sample data → training (MLflow) → ONNX FP32 + INT8 → a prediction → serve it
#   make test   the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
EXTRAS ?= serving,lambda,training,aws,slides,dev
DATA_DIR ?= data/sample
OUT ?= artifacts
PORT ?= 8000
# The CPUs the INT8 file is for: portable (every CPU; model.int8.onnx) or vnni (AVX-512 VNNI,
# AVX-VNNI, AMX or Arm dot product; model.int8.vnni.onnx). INT8 is the file predict, serve
# and images use: `make export serve CPU_CLASS=vnni INT8=artifacts/model.int8.vnni.onnx`.
CPU_CLASS ?= portable
INT8 ?= $(OUT)/model.int8.onnx
# The synthetic sample is learnt in ~1 min on 2 CPUs at 128 px (224 px from scratch needs
# many more epochs to settle its batch-norm statistics); real MHIST runs use 224.
EPOCHS ?= 5
IMAGE_SIZE ?= 128
TRACKING_URI ?= sqlite:///mlflow.db
export MLFLOW_TRACKING_URI ?= $(TRACKING_URI)

.PHONY: setup test test-deps lint demo sample train export predict serve images mlflow-ui bench bench-full clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with every extra, versions pinned by constraints.txt

# Headless Chromium for the upload-page test comes from Debian's package (no browser download).
test-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Chromium (Debian: sudo apt-get install chromium) for the browser test" >&2; fi; }
	@# A real OCI registry for the push test (tests/test_registry_push.py): the binary only, so
	@# the package's own service (on :5000) is stopped and disabled where systemd started it.
	@command -v docker-registry >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry >/dev/null \
	    && { systemctl disable --now docker-registry >/dev/null 2>&1 || true; }; \
	  else echo "install Debian's docker-registry (sudo apt-get install docker-registry) for the push test" >&2; fi; }
	@# wrk, the load generator of the throughput benchmark (benchmarks/test_throughput.py): a C
	@# event loop, so the client takes little of the CPUs it shares with the server.
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	  else echo "install wrk (Debian: sudo apt-get install wrk) for the throughput benchmark" >&2; fi; }
	@# qemu-user: `qemu-x86_64 -cpu Haswell` runs onnxruntime's AVX2 kernels on a VNNI host, for
	@# the export's AVX2 gate and tests/test_cpu_class.py (the user-mode emulator only: no
	@# binfmt registration, nothing changes for other programs).
	@command -v qemu-x86_64 >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user >/dev/null; \
	  else echo "install qemu-user (Debian: sudo apt-get install --no-install-recommends qemu-user) for the AVX2-kernel checks" >&2; fi; }
	@# PostgreSQL server programs for the team-MLflow test (tests/test_mlflow_team.py), which
	@# runs its own throwaway cluster; the package's default cluster is not needed, so it is
	@# stopped and disabled where systemd started it.
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null \
	    && { systemctl disable --now postgresql >/dev/null 2>&1 || true; }; \
	  else echo "install PostgreSQL (Debian: sudo apt-get install postgresql) for the team-MLflow test" >&2; fi; }

test: setup test-deps  ## the whole suite (container tests need docker or podman)
	$(PY) -m pytest -p no:cacheprovider tests benchmarks

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint services/Dockerfile lambda/Dockerfile sagemaker/Dockerfile

sample: setup
	$(PY) -m training.sample_data --out $(DATA_DIR) --count 400 --seed 0

train: setup
	$(PY) training/train.py --data-dir $(DATA_DIR) --epochs $(EPOCHS) --weights none --image-size $(IMAGE_SIZE)

export: setup
	$(PY) export/to_onnx.py --model-uri models:/mhist-resnet18/latest --data-dir $(DATA_DIR) --out $(OUT) --cpu-class $(CPU_CLASS)

predict: setup
	$(PY) -m services.predict --format text --model $(INT8) $$(ls $(DATA_DIR)/images/*.png | head -n 3)

serve: setup
	MODEL_PATH=$(INT8) PORT=$(PORT) $(PY) -m services.runtime.server

# The main job on the built-in SYNTHETIC sample, ending with the Flask service on :$(PORT).
demo: sample train export predict serve

images: setup  ## build the three serving images (docker if a daemon answers, else podman)
	$(PY) -m awsdeploy.images build all --model $(INT8)

mlflow-ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri $(TRACKING_URI) --host 127.0.0.1 --port 5000

bench: setup  ## quick benchmark smoke (what CI runs inside `make test`)
	$(PY) -m pytest -p no:cacheprovider benchmarks

bench-full: setup  ## full benchmark report into benchmarks/results/<timestamp>/
	MHIST_BENCH_MODE=full $(PY) -m pytest -p no:cacheprovider benchmarks -s

clean:
	rm -rf $(OUT) data/sample mlruns .pytest_cache
