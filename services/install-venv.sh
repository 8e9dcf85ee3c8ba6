#!/bin/sh
# The builder stage of every serving image (services/, lambda/, sagemaker/ Dockerfiles):
# /opt/venv with pyproject's extras ($2, comma-separated), versions from constraints.txt.
#   deps     the extras' dependencies only: a layer that stays cached while only code changes
#   package  the package itself; then pip and setuptools go (nothing installs at run time) and
#            bytecode is precompiled (Lambda's file system is read-only: it would be recompiled
#            at every cold start)
set -eu
step=$1
extras=$2
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
cd /src
if [ "$step" = deps ]; then
  python -m venv /opt/venv
  python - "$extras" > requirements.txt <<'PY'
import sys, tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
print("\n".join(req for name in sys.argv[1].split(",") for req in extras[name]))
PY
  # Wheels only for the native packages: a missing wheel must fail the build rather than
  # pull a compiler toolchain into it.
  /opt/venv/bin/pip install --only-binary=awslambdaric,onnxruntime,numpy,pillow,simplejson \
    -c constraints.txt -r requirements.txt
else
  /opt/venv/bin/pip install --no-deps -c constraints.txt ".[$extras]"
  /opt/venv/bin/python -m pip uninstall -y -q pip setuptools
  /opt/venv/bin/python -m compileall -q /opt/venv/lib
fi
