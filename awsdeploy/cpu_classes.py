"""Which AWS compute fits which INT8 CPU class (services/core/cpus.py), checked before a deploy.

A `vnni` file (full 8-bit weights) answers wrong on CPUs without a dot-product instruction, and
the server refuses it there at start: better to refuse the deploy than to find a crash-looping
endpoint. A `portable` file and FP32 fit everything.

Families by their CPUs (AWS's instance type pages): AVX-512 VNNI from Intel Cascade Lake (c5
and m5 fleets still mix in Skylake, which lacks it) and AMD Zen 4; AMX from Sapphire Rapids;
Graviton2 and later have the Arm dot product. Lambda documents Graviton2 for arm64 functions,
and promises nothing about the x86 CPU of an x86_64 function.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from services.core.cpus import CpuClassError, model_cpu_class

# With AVX-512 VNNI or AMX (x86), or the dot product (Graviton2+).
VNNI_FAMILIES = frozenset(
    {
        "c6i",
        "c6id",
        "c6in",
        "m6i",
        "m6id",
        "m6in",
        "m6idn",
        "r6i",
        "r6id",
        "r6in",
        "r6idn",
        "c7i",
        "c7i-flex",
        "m7i",
        "m7i-flex",
        "r7i",
        "r7iz",
        "c8i",
        "m8i",
        "r8i",  # Intel
        "c7a",
        "m7a",
        "r7a",
        "c8a",
        "m8a",
        "r8a",  # AMD Zen 4 / Zen 5
        "c6g",
        "c6gd",
        "c6gn",
        "m6g",
        "m6gd",
        "r6g",
        "r6gd",
        "t4g",
        "c7g",
        "c7gd",
        "c7gn",
        "m7g",
        "m7gd",
        "r7g",
        "r7gd",
        "c8g",
        "m8g",
        "r8g",  # Graviton2, 3, 4
    }
)
# AVX2 only (AMD Zen 2/3), or fleets that mix in CPUs without VNNI (Skylake in c5/m5/t3).
PORTABLE_ONLY_FAMILIES = frozenset(
    {
        "c5a",
        "c5ad",
        "m5a",
        "m5ad",
        "r5a",
        "r5ad",
        "t3a",
        "c6a",
        "m6a",
        "r6a",
        "c4",
        "m4",
        "r4",
        "t2",
        "t3",
        "c5",
        "c5d",
        "c5n",
        "m5",
        "m5d",
        "m5n",
        "r5",
        "r5d",
        "r5n",
    }
)
CLASS_HELP = (
    "vnni fits x86 with AVX-512 VNNI or AMX (c6i, c7i, m7i, c7a …) and Graviton (c6g, "
    "c7g, m7g …); portable fits every CPU, AVX2-only ones (c6a, c5a) and Lambda x86_64 "
    "included"
)


def family(instance_type: str) -> str:
    """`ml.c7i.xlarge` or `c7i.xlarge` → `c7i`."""
    return instance_type.removeprefix("ml.").split(".", 1)[0]


def file_class(model: Path) -> str | None:
    """The CPU class of an ONNX file (None: FP32, or not an ONNX file); ValueError for an
    unknown class."""
    import onnx  # only the deploy scripts need it, and only here

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends: not an ONNX file
        return None  # nothing to check here; the deploy's own checks and the server say why
    props = {p.key: p.value for p in proto.metadata_props}
    return _class(json.loads(props.get("mhist.quantization", "{}")), str(model))


def archive_class(archive: Path, manifest: str) -> str | None:
    """The CPU class recorded in a SageMaker model.tar.gz's manifest (sagemaker/package.py);
    None for FP32 or an archive without a manifest (the server still checks at start)."""
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile(manifest)
            data = json.loads(member.read()) if member else {}
    except (tarfile.TarError, KeyError, ValueError):
        return None  # not package.py's archive: the endpoint's own start-up checks it
    return _class((data.get("metadata") or {}).get("quantization") or {}, str(archive))


def _class(quantization: dict, where: str) -> str | None:
    try:
        return model_cpu_class(quantization)
    except CpuClassError as exc:
        raise ValueError(f"{where}: {exc}") from None


def instance_misfit(instance_type: str, cpu_class: str | None) -> str | None:
    """Why `cpu_class` does not fit `instance_type` (None: it fits, or nothing is known)."""
    if cpu_class != "vnni" or family(instance_type) in VNNI_FAMILIES:
        return None
    if family(instance_type) in PORTABLE_ONLY_FAMILIES:
        return (
            f"{instance_type} has CPUs without VNNI or the Arm dot product, where the vnni "
            f"INT8 file answers wrong and the server refuses it: deploy the portable file "
            f"(export --cpu-class portable) or pick another instance type ({CLASS_HELP})"
        )
    return None


def unknown_family(instance_type: str, cpu_class: str | None) -> str | None:
    """A note when a vnni file goes to a family this table does not know."""
    if cpu_class == "vnni" and family(instance_type) not in VNNI_FAMILIES | PORTABLE_ONLY_FAMILIES:
        return (
            f"instance family {family(instance_type)!r} is not in awsdeploy/cpu_classes.py: "
            "if its CPUs lack VNNI / the Arm dot product, the server will refuse the vnni "
            "file at start"
        )
    return None


def lambda_misfit(architecture: str, cpu_class: str | None) -> str | None:
    """Lambda x86_64 runs on whatever x86 CPU AWS picks (AVX2-only ones too); arm64 on
    Graviton2 or later, which has the dot product."""
    if cpu_class == "vnni" and architecture != "arm64":
        return (
            "Lambda does not say which x86 CPU runs an x86_64 function (AVX2-only ones "
            "too), where the vnni INT8 file answers wrong and the function refuses it at "
            "INIT: deploy the portable file (export --cpu-class portable), or "
            "--architecture arm64 (Graviton2 or later)"
        )
    return None
