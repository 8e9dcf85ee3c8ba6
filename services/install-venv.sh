#!/bin/sh
# The builder stage of every serving image (services/, lambda/, sagemaker/ Dockerfiles).
#   deps EXTRAS      /opt/venv with pyproject's extras (comma-separated), versions from
#                    constraints.txt; the dependencies only: a layer that stays cached while
#                    only code changes
#   package EXTRAS   the package itself; then what serving never loads leaves the venv (below)
#                    and bytecode is precompiled (Lambda's file system is read-only: it would
#                    be recompiled at every cold start)
#   rootfs USER [EXECUTABLE...]
#                    /rootfs: the smallest root the venv runs on, for a final `FROM scratch`
#                    stage: the base's interpreter and standard library, every shared library
#                    that the interpreter, its extension modules, the venv's and EXECUTABLE's
#                    ELF files link (found with ldd, so nothing is guessed), busybox as a
#                    shell, /etc/passwd with USER as uid 10001, an empty /tmp. /opt/venv itself
#                    is copied by the Dockerfile (a layer of its own).
set -eu
step=$1
shift
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
cd /src

site_packages() {
  /opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))'
}

# Files no serving code path imports, opens or dlopens (services/, gunicorn, awslambdaric, the
# S3 flow); each was checked by running the container suite without it.
prune_venv() {
  sp=$(site_packages)
  # onnxruntime: its model tools, quantizer and transformer optimizers are offline tools
  # (export/ runs them on the host); libonnxruntime.so is the C API for other languages:
  # the Python module links its own copy of the runtime (ldd shows no libonnxruntime.so).
  rm -rf "$sp/onnxruntime/tools" "$sp/onnxruntime/quantization" \
    "$sp/onnxruntime/transformers" "$sp"/onnxruntime/capi/libonnxruntime.so*
  # numpy: its test suites, the Fortran wrapper generator and build helpers, C headers and
  # static libraries for compiling extensions, and type stubs (read by type checkers only).
  find "$sp/numpy" -depth -type d \( -name tests -o -name _pyinstaller \) -exec rm -rf {} +
  rm -rf "$sp/numpy/f2py" "$sp/numpy/distutils" "$sp/numpy/_core/include" \
    "$sp/numpy/_core/lib"
  find "$sp" -name '*.pyi' -delete
  # Console scripts of what was pruned or is never run here (serving runs `python -m ...`).
  rm -f /opt/venv/bin/f2py /opt/venv/bin/numpy-config /opt/venv/bin/onnxruntime_test \
    /opt/venv/bin/Activate.ps1 /opt/venv/bin/activate*
}

if [ "$step" = deps ]; then
  extras=$1
  python -m venv /opt/venv
  python - "$extras" > requirements.txt <<'PY'
import sys, tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
print("\n".join(req for name in sys.argv[1].split(",") for req in extras[name]))
PY
  # Wheels only for the native packages: a missing wheel must fail the build rather than
  # pull a compiler toolchain into it.
  /opt/venv/bin/pip install --only-binary=awslambdaric,onnxruntime,numpy,pillow,pyspng,simplejson,msgspec \
    -c constraints.txt -r requirements.txt
  exit 0
fi

if [ "$step" = package ]; then
  extras=$1
  /opt/venv/bin/pip install --no-deps -c constraints.txt ".[$extras]"
  # Nothing installs at run time.
  /opt/venv/bin/python -m pip uninstall -y -q pip setuptools
  prune_venv
  /opt/venv/bin/python -m compileall -q /opt/venv/lib
  exit 0
fi

[ "$step" = rootfs ] || { echo "install-venv.sh: unknown step $step" >&2; exit 2; }
user=$1
shift
root=/rootfs
mkdir -p "$root"

# Copy one path as it is (a symlink stays a symlink) into its canonical folder under $root.
keep() {
  dir=$(realpath "$(dirname "$1")")
  mkdir -p "$root$dir"
  cp -P "$1" "$root$dir/"
}

# The merged-/usr links (/lib -> usr/lib, ...) first, so the ELF interpreter's path resolves.
for top in /bin /sbin /lib /lib32 /lib64 /libx32; do
  if [ -L "$top" ]; then cp -P "$top" "$root$top"; fi
done

# The interpreter: every link from the venv's python to the base's binary.
link=$(readlink /opt/venv/bin/python)
while [ -L "$link" ]; do
  keep "$link"
  next=$(readlink "$link")
  case $next in /*) link=$next ;; *) link=$(dirname "$link")/$next ;; esac
done
keep "$link"
interpreter=$(realpath "$link")

# The standard library minus what serving never imports: tests and their extension modules,
# the IDE, Tk, 2to3, pip's bootstrap, pydoc's topics, and the databases, terminal UI and NIS
# modules whose C libraries (Berkeley DB, SQLite, ncurses, readline, Kerberos) would follow.
stdlib=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
mkdir -p "$root$stdlib"
cp -a "$stdlib/." "$root$stdlib/"
(
  cd "$root$stdlib"
  rm -rf test idlelib tkinter turtledemo turtle.py lib2to3 ensurepip pydoc_data \
    sqlite3 dbm curses config-* __pycache__/turtle.*
  cd lib-dynload
  rm -f _test*.so _ctypes_test*.so _xxtestfuzz*.so xxlimited*.so nis.*.so ossaudiodev*.so \
    _dbm*.so _gdbm*.so _sqlite3*.so _curses*.so readline*.so _tkinter*.so
)
# Debian's sitecustomize.py is a link into /etc/python3.X.
mkdir -p "$root/etc"
for etc in /etc/python3*; do
  if [ -d "$etc" ]; then cp -a "$etc" "$root/etc/"; fi
done

# busybox: a shell and a few tools for `exec`, health probes and the SageMaker entry's
# `#!/usr/bin/env` line; the base's coreutils, dash, apt and perl (most of its 176 MB) stay out.
busybox=$(command -v busybox)
keep "$busybox"
for applet in sh env id grep du sort head tail cut ls cat ps wc; do
  ln -s busybox "$root$(dirname "$(realpath "$busybox")")/$applet"
done
for executable in "$@"; do keep "$executable"; done

# Shared libraries: what ldd resolves for every ELF file that can run or be loaded. Those
# under /opt/venv (the wheels' bundled ones) come with the venv. Each is copied under the
# name the loader asks for (its soname link, dereferenced).
{
  echo "$interpreter"
  echo "$busybox"
  for executable in "$@"; do echo "$executable"; done
  find "$root$stdlib/lib-dynload" -name '*.so' | sed "s|^$root||"
  find /opt/venv -name '*.so*' -type f
} | while read -r elf; do ldd "$elf" 2>/dev/null || true; done \
  | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $2 ~ /^\(/ {print $1}' \
  | grep -v '^/opt/venv/' | sort -u | while read -r lib; do
    dir=$(realpath "$(dirname "$lib")")
    mkdir -p "$root$dir"
    cp -L "$lib" "$root$dir/$(basename "$lib")"
  done
cp -P /etc/ld.so.conf "$root/etc/"
cp -a /etc/ld.so.conf.d "$root/etc/"
ldconfig -r "$root"

# Run-time data: the C.UTF-8 locale (Python's default coercion target), CA certificates for
# TLS (boto3's S3 flow), name service order, the users, and /tmp (gunicorn's heartbeat
# files, nginx's run folder, the Prometheus files).
if [ -d /usr/lib/locale/C.utf8 ]; then
  mkdir -p "$root$(realpath /usr/lib/locale)"
  cp -a /usr/lib/locale/C.utf8 "$root$(realpath /usr/lib/locale)/"
fi
for path in /etc/ssl/certs/ca-certificates.crt /etc/ssl/openssl.cnf /etc/nsswitch.conf \
    /usr/lib/ssl/cert.pem /usr/lib/ssl/certs /usr/lib/ssl/openssl.cnf; do
  if [ -e "$path" ] || [ -L "$path" ]; then keep "$path"; fi
done
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\n%s:x:10001:10001::/nonexistent:/usr/sbin/nologin\n' \
  "$user" > "$root/etc/passwd"
printf 'root:x:0:\n%s:x:10001:\n' "$user" > "$root/etc/group"
mkdir -p -m 1777 "$root/tmp"
