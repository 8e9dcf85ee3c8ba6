"""Typed records for what a benchmark run writes (benchmarks/store.py: run.json, machine.json,
raw/<section>.json), parsed once by `load`. Fields the run may leave out are Optional; the
sections print them as "–"."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.report.fields import Fields
from benchmarks.store import SECTIONS, read_results
from benchmarks.targets import CONTAINER_IDS
from benchmarks.variants import VARIANTS


@dataclass(frozen=True, kw_only=True)
class Timing:
    """A latency record (benchmarks/timing.py): percentiles of `n` timed calls."""

    n: int | None
    p50_ms: float | None
    p95_ms: float | None = None
    p99_ms: float | None = None
    images_per_s: float | None = None
    samples_ms: tuple[float, ...] = ()


def _timing(f: Fields, required: bool = True) -> dict[str, Any]:
    get = f.need if required else f.may
    return {"n": get("n"), "p50_ms": get("p50_ms"), "p95_ms": get("p95_ms"),
            "p99_ms": get("p99_ms"), "samples_ms": tuple(f.may("samples_ms") or ())}


@dataclass(frozen=True)
class Answers:
    """A variant's answers on the check images against ONNX FP32's."""

    ok: bool
    images: int
    tolerance: float
    labels_agree: int
    max_abs_diff: float | None


def _answers(f: Fields | None) -> Answers | None:
    if f is None:
        return None
    return Answers(ok=bool(f.may("ok")), images=f.need("images"), tolerance=f.need("tolerance"),
                   labels_agree=f.need("labels_agree"), max_abs_diff=f.may("max_abs_diff"))


# --- run.json, machine.json --------------------------------------------------------------------

@dataclass(frozen=True)
class Skip:
    what: str
    reason: str


@dataclass(frozen=True)
class Run:
    stamp: str | None
    mode: str | None
    threads: int | None
    load_at_start: list[float] | None
    load_at_end: list[float] | None
    duration_s: float | str  # "?" when the run did not finish
    pipeline_s: float | None
    image_builds: dict[str, float] | None
    baseline_torch: str | None
    default_layout: str | None
    http_connection_policy: str
    throughput_client: str | None
    threading_env_stripped: dict[str, str]
    tolerances: dict[str, float]
    model_uri: str | None
    train_images: int | None
    skipped: list[Skip]
    failed: list[Skip]  # reason = the failure's message


def _run(f: Fields) -> Run:
    model = f.may("model") or {}
    return Run(
        stamp=f.may("stamp"), mode=f.may("mode"), threads=f.may("threads"),
        load_at_start=f.may("load_average_at_start"), load_at_end=f.may("load_average_at_end"),
        duration_s=f.may("duration_s", "?"), pipeline_s=f.may("pipeline_s"),
        image_builds=f.may("image_builds"), baseline_torch=f.may("baseline_torch"),
        default_layout=f.may("default_layout"),
        http_connection_policy=f.may("http_connection_policy", "not recorded"),
        throughput_client=f.may("throughput_client"),
        threading_env_stripped=f.may("threading_env_stripped") or {},
        tolerances=f.may("tolerances") or {},
        model_uri=model.get("uri"), train_images=model.get("train_images"),
        skipped=[Skip(s.need("what"), s.need("reason")) for s in _list(f, "skipped")],
        failed=[Skip(s.need("what"), s.need("message")) for s in _list(f, "failed")])


def _list(f: Fields, key: str) -> list[Fields]:
    return [Fields(item, f"{f.where}, {key}[{i}]") for i, item in enumerate(f.may(key) or [])]


@dataclass(frozen=True)
class Machine:
    """benchmarks/machine.py's description; every field None without machine.json."""

    cpu_model: str | None = None
    architecture: str | None = None
    usable_cpus: int | None = None
    logical_cpus: int | None = None
    memory_gib: float | None = None
    os: str | None = None
    python: str | None = None
    container_engine: str | None = None
    flags: dict[str, bool] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)


def _machine(f: Fields) -> Machine:
    keys = ("cpu_model", "architecture", "usable_cpus", "logical_cpus", "memory_gib", "os",
            "python", "container_engine")
    return Machine(**{key: f.may(key) for key in keys}, flags=f.may("flags", {}),
                   versions=f.may("versions") or {})


# --- 1. model only ---------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class ModelRun(Timing):
    variant: str
    label: str
    precision: str | None
    batch: int
    setup_s: float | None
    answers: Answers | None
    setting: str
    torch: str | None
    torch_threads: int | None
    onnxruntime: str
    first_call_s: float | None = None  # of setup_s: the first call (torch.compile compiles)
    # p50 of the call before each timed one, the first after another variant's turn (caches
    # that variant filled); None in runs from before it was recorded
    cold_p50_ms: float | None = None


@dataclass(frozen=True)
class Spread:
    """The reference's P(positive) on the check images, against its threshold."""

    positive_class: str
    threshold: float
    p_min: float
    p_max: float
    images: int
    labels: dict[str, int]
    labels_checked: dict[str, int]


@dataclass(frozen=True)
class ModelSection:
    by_batch: dict[int, dict[str, ModelRun]]  # batch → variant → run, in VARIANTS' order
    preprocessing: Timing | None
    answers_ok: dict[str, bool] | None  # variant → answers within tolerance; None: no checks
    reference_images: int | str  # "?" when the agreement has no reference entry
    spread: Spread | None


def _model_run(f: Fields) -> ModelRun:
    variant = f.need("variant")
    return ModelRun(
        **_timing(f), images_per_s=f.need("images_per_s"), variant=variant,
        label=f.may("label") or VARIANTS[variant].label, precision=f.may("precision"),
        batch=f.need("batch"), setup_s=f.may("setup_s"), answers=_answers(f.maybe_sub("answers")),
        setting=f.may("setting", ""), torch=f.may("torch"), torch_threads=f.may("torch_threads"),
        onnxruntime=f.may("onnxruntime", "?"),
        first_call_s=(f.may("first_call_s") or {}).get(str(f.need("batch"))),
        cold_p50_ms=f.may("cold_p50_ms"))


def _spread(f: Fields | None) -> Spread | None:
    if f is None or f.may("threshold") is None:
        return None
    return Spread(positive_class=f.need("positive_class"), threshold=f.need("threshold"),
                  p_min=f.need("p_positive_min"), p_max=f.need("p_positive_max"),
                  images=f.need("images"), labels=f.may("labels") or {},
                  labels_checked=f.may("labels_checked") or {})


def _model(f: Fields) -> ModelSection:
    runs = {key: _model_run(rec) for key, rec in f.items()
            if "/b" in key and rec.may("variant") in VARIANTS}
    by_batch = {batch: {name: runs[f"{name}/b{batch}"] for name in VARIANTS
                        if f"{name}/b{batch}" in runs}
                for batch in sorted({run.batch for run in runs.values()})}
    pre = f.maybe_sub("preprocessing/png224")
    agreement = f.maybe_sub("agreement")
    reference = agreement.maybe_sub("reference") if agreement else None
    return ModelSection(
        by_batch=by_batch,
        preprocessing=Timing(**_timing(pre), images_per_s=pre.need("images_per_s"))
        if pre else None,
        answers_ok={k: bool(v.may("ok")) for k, v in agreement.items() if k != "reference"}
        if agreement else None,
        reference_images=reference.may("images", "?") if reference else "?",
        spread=_spread(reference))


# --- 2. HTTP ---------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class HttpRun(Timing):
    mean_ms: float
    precision: str | None
    request: str
    request_bytes: int
    overhead_vs_session_run: float | None
    answers: Answers | None
    errors: int
    stages_ms: dict[str, float]
    paired: Paired | None = None  # requests alternating with in-process predict_bytes


@dataclass(frozen=True)
class Paired:
    """POST /predict on a new connection and in-process predict_bytes, in alternating rounds
    (benchmarks/overhead.py): the HTTP goals' quantity is their difference of p50s."""

    http_p50_ms: float
    predict_bytes_p50_ms: float
    http_minus_predict_bytes_ms: float
    n: int
    # p50 over the requests of each one's time − its own predict_bytes in the server
    # (Server-Timing): the same quantity without two processes' sessions compared.
    http_minus_server_predict_ms: float | None = None


@dataclass(frozen=True)
class HostRun:
    """The host server (`python -m services.runtime.server`), INT8, with its front server."""

    front_server: str  # "none" (gunicorn alone) or "nginx"
    paired: Paired
    overhead_vs_session_run: float | None
    # p50 of a bare gunicorn app that only reads the body (benchmarks/floor_app.py), same
    # client and rounds; None where not measured (behind nginx, older runs)
    floor_ms: float | None = None


@dataclass(frozen=True)
class CoreOverhead:
    """In-process, interleaved: predict_bytes − session.run − decode (p50 over the calls, each
    call's own stages), the stages (p50 µs) and the decode stage and floor (p50 ms)."""

    overhead_ms: float
    stages_us: dict[str, float]
    decode_ms: float | None
    decode_floor_ms: float | None


@dataclass(frozen=True)
class HttpSection:
    reference: dict[str, Timing]  # "int8/session.run" → the in-process call
    containers: dict[str, HttpRun]  # CONTAINER_IDS' order, only those with samples
    host: dict[str, HostRun] = field(default_factory=dict)  # front server → run
    core: CoreOverhead | None = None  # INT8 only


def _paired(f: Fields) -> Paired | None:
    if f.may("http_minus_predict_bytes_ms") is None:
        return None
    http, core = f.sub("paired_http"), f.sub("paired_predict_bytes")
    return Paired(http.need("p50_ms"), core.need("p50_ms"),
                  f.need("http_minus_predict_bytes_ms"), http.need("n"),
                  f.may("http_minus_server_predict_ms"))


def _http_run(f: Fields) -> HttpRun:
    return HttpRun(**_timing(f), mean_ms=f.need("mean_ms"), precision=f.may("precision"),
                   request=f.may("request", "?"), request_bytes=f.may("request_bytes", 0),
                   overhead_vs_session_run=f.may("overhead_vs_session_run"),
                   answers=_answers(f.maybe_sub("answers")), errors=f.may("errors", 0),
                   stages_ms=f.may("stages_ms") or {}, paired=_paired(f))


def _core(f: Fields) -> CoreOverhead | None:
    core = f.maybe_sub("reference/int8/predict_bytes")
    if core is None or core.may("overhead_ms") is None:
        return None

    def p50(key: str) -> float | None:
        rec = f.maybe_sub(key)
        return rec.need("p50_ms") if rec else None
    return CoreOverhead(core.need("overhead_ms"), core.need("stages_us"),
                        p50("reference/int8/decode"), p50("reference/int8/decode_floor"))


def _http(f: Fields) -> HttpSection:
    reference = {key.removeprefix("reference/"): Timing(**_timing(rec))
                 for key, rec in f.items() if key.startswith("reference/")}
    containers = {key: _http_run(f.sub(key)) for key in CONTAINER_IDS
                  if (f.may(key) or {}).get("n")}
    host = {}
    for key, rec in f.items():
        if key.startswith("host/") and (paired := _paired(rec)):
            host[rec.need("front_server")] = HostRun(
                rec.need("front_server"), paired, rec.may("overhead_vs_session_run"),
                (rec.may("floor") or {}).get("p50_ms"))
    return HttpSection(reference, containers, host, _core(f))


# --- 3. throughput ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Level:
    """One concurrency level of a wrk run."""

    images_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    requests: int


@dataclass(frozen=True)
class Layout:
    """A workers × threads layout of the Flask container under load."""

    setting: str
    workers: int | None
    gunicorn_threads: int
    levels: dict[str, Level]  # concurrency (as written, a string) → level
    inprocess: dict[str, float | None]  # "predict_bytes"/"session.run" → images/s


def _layout(f: Fields) -> Layout:
    levels = {c: Level(images_per_s=r.need("throughput_images_per_s"), p50_ms=r.may("p50_ms"),
                       p99_ms=r.may("p99_ms"), errors=r.need("errors"),
                       requests=r.need("requests"))
              for c, r in f.sub("levels").items()}
    inprocess = f.maybe_sub("inprocess")
    return Layout(setting=f.need("setting"), workers=f.may("workers"),
                  gunicorn_threads=f.may("gunicorn_threads", 1), levels=levels,
                  inprocess={call: rec.may("images_per_s") for call, rec in inprocess.items()}
                  if inprocess else {})


# --- 4. cold start ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ProcessStart:
    first_prediction_s: float
    interpreter_s: float
    imports_s: float
    load_s: float
    first_predict_s: float
    heavy_modules: list[str]
    ok: bool
    n: int


@dataclass(frozen=True)
class ContainerStart:
    first_200_s: float
    init_s: float | None
    phases: dict[str, float]
    ok: bool
    n: int


@dataclass(frozen=True)
class ColdStart:
    processes: dict[str, ProcessStart]  # "flask-int8", "torch-eager", …
    containers: dict[str, ContainerStart]  # "flask-int8", "torch", "floor", …


def _cold(f: Fields) -> ColdStart:
    processes, containers = {}, {}
    for key, rec in f.items():
        kind, _, name = key.partition("/")
        if kind == "process":
            processes[name] = ProcessStart(
                rec.need("first_prediction_s_median"), rec.need("interpreter_s_median"),
                rec.need("imports_s_median"), rec.need("load_s_median"),
                rec.need("first_predict_s_median"), rec.need("heavy_modules"),
                not rec.may("answer_problems"), len(rec.need("first_prediction_s_all")))
        elif kind == "container":
            containers[name] = ContainerStart(
                rec.need("first_200_s_median"), rec.may("init_s_median"),
                rec.may("phases_median") or {}, not rec.may("answer_problems"),
                len(rec.need("first_200_s_all")))
    return ColdStart(processes, containers)


# --- 5. size ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageSize:
    target: str | None
    image_mb: float
    venv_mb: float
    top_packages: list[tuple[str, float]]  # (package, MB), largest first
    slimmed: bool | None = None  # the baseline's root is the slim FROM-scratch one (or not)


@dataclass(frozen=True)
class SizeSection:
    images: dict[str, ImageSize]
    base_image: str | None
    base_image_mb: float | None


def _size(f: Fields) -> SizeSection:
    images = {key: ImageSize(rec.may("target"), rec.need("image_mb"), rec.need("venv_mb"),
                             [(p["package"], p["mb"]) for p in rec.need("top_packages")],
                             rec.may("slimmed"))
              for key, rec in f.items() if key != "base"}
    base = f.maybe_sub("base")
    if not base or not base.may("base_image_mb"):
        return SizeSection(images, None, None)
    return SizeSection(images, base.need("image"), base.need("base_image_mb"))


# --- 6. peers --------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class PeerRun(Timing):
    server: str
    request: str
    request_bytes: int
    first_200_s: float
    answers: Answers | None
    settings: str


def _peer(f: Fields) -> PeerRun:
    return PeerRun(**_timing(f, required=False), server=f.need("server"),
                   request=f.may("request", "?"), request_bytes=f.need("request_bytes"),
                   first_200_s=f.need("first_200_s"),
                   answers=_answers(f.maybe_sub("answers")), settings=f.may("settings", "–"))


# --- 7. precision ----------------------------------------------------------------------------

METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "f1")


@dataclass(frozen=True)
class ModelFile:
    size_bytes: int
    load_ms: float
    metrics: dict[str, float | None]  # METRICS the export measured, in METRICS' order


@dataclass(frozen=True)
class Precision:
    """export_report.json's FP32-vs-INT8 comparison."""

    fp32: ModelFile
    int8: ModelFile
    top1_agreement: float
    max_abs_prob_diff: float
    images: int | None
    split: str


def _precision(f: Fields) -> Precision | None:
    rec = f.maybe_sub("fp32_vs_int8")
    if rec is None:
        return None
    cmp_ = rec.sub("comparison")
    measured = [m for m in METRICS if m in (cmp_.may("fp32") or {})]

    def file(name: str) -> ModelFile:
        stats, metrics = rec.sub(name), cmp_.sub(name)
        return ModelFile(stats.need("size_bytes"), stats.need("load_ms_median"),
                         {m: metrics.may(m) for m in measured})
    return Precision(file("fp32"), file("int8"), cmp_.may("top1_agreement", float("nan")),
                     cmp_.may("max_abs_prob_diff", float("nan")), cmp_.may("images"),
                     cmp_.may("split", "held-out"))


# --- 8. whole slide --------------------------------------------------------------------------

@dataclass(frozen=True)
class SlideRun:
    label: str
    runtime: str | None
    setting: str | None
    tiles_per_s: float
    seconds_per_slide: float
    load_s: float
    warmup_s: float | None
    after_load_rss_mb: int
    peak_rss_mb: int
    n: int
    tiles_grid: int
    tiles_analysed: int
    level: int
    tile_px_read: int
    batch_size: int
    threads: int


@dataclass(frozen=True)
class SlideCheck:
    """One variant on one slide size against ONNX FP32, tile by tile."""

    ok: bool
    tiles: int
    tolerance: float
    max_abs_diff: float | None
    labels_agree: int
    label_share: float
    labels_decided: int


@dataclass(frozen=True)
class SlideMemory:
    """Peak RSS on the 1x and 4x slides ("1x"/"4x" → value)."""

    tiles: dict[str, int]
    peak_rss_mb: dict[str, int]
    after_warmup_rss_mb: dict[str, int]
    peak_ratio: float


@dataclass(frozen=True)
class SlidesSection:
    runs: dict[str, SlideRun]
    side_px: int
    mpp: float | None
    downsamples: list[int] | None
    file_mb: float | None
    load_start: list[float] | None
    load_end: list[float] | None
    reference: str
    checks: dict[str, dict[str, SlideCheck]]  # variant → slide size → check
    sides_px: dict[str, int]
    memory: dict[str, SlideMemory]


def _slide_run(name: str, f: Fields) -> SlideRun:
    keys = ("tiles_grid", "tiles_analysed", "level", "tile_px_read", "batch_size", "threads")
    return SlideRun(
        label=f.may("label") or name, runtime=f.may("runtime"), setting=f.may("setting"),
        tiles_per_s=f.need("tiles_per_s_median"),
        seconds_per_slide=f.need("seconds_per_slide_median"), load_s=f.need("load_s_median"),
        warmup_s=f.may("warmup_s_median"), after_load_rss_mb=f.need("after_load_rss_mb"),
        peak_rss_mb=f.need("peak_rss_mb"), n=f.need("n"), **{k: f.need(k) for k in keys})


def _slide_check(f: Fields) -> SlideCheck:
    return SlideCheck(ok=bool(f.may("ok")), tiles=f.need("tiles"),
                      tolerance=f.need("tolerance"), max_abs_diff=f.may("max_abs_diff"),
                      labels_agree=f.need("labels_agree"), label_share=f.need("label_share"),
                      labels_decided=f.may("labels_decided", 0))


def _slide_memory(f: Fields) -> SlideMemory:
    return SlideMemory(f.need("tiles"), f.need("peak_rss_mb"),
                       f.may("after_warmup_rss_mb") or {}, f.need("peak_ratio"))


def _slides(f: Fields) -> SlidesSection | None:
    runs = {key.removeprefix("run/"): _slide_run(key.removeprefix("run/"), rec)
            for key, rec in f.items() if key.startswith("run/")}
    if not runs:
        return None
    info = f.may("slides") or {}
    size, load = (info.get("sizes") or {}).get("1x") or {}, info.get("load_average") or {}
    agreement = f.maybe_sub("agreement") or Fields({}, f.where)
    memory = f.maybe_sub("memory") or Fields({}, f.where)
    return SlidesSection(
        runs=runs, side_px=size.get("side_px", 0), mpp=size.get("mpp"),
        downsamples=size.get("downsamples"), file_mb=size.get("file_mb"),
        load_start=load.get("start"), load_end=load.get("end"),
        reference=agreement.may("reference", "ort-fp32"),
        checks={name: {s: _slide_check(c) for s, c in sizes.items()}
                for name, sizes in agreement.items() if sizes.raw},
        sides_px=memory.may("sides_px") or {},
        memory={name: _slide_memory(rec) for name, rec in memory.items()
                if "peak_rss_mb" in rec.raw})


# --- the whole folder ------------------------------------------------------------------------

@dataclass(frozen=True)
class Results:
    """A results folder; a section is None where the run wrote nothing for it."""

    run: Run
    machine: Machine
    model: ModelSection | None
    http: HttpSection | None
    throughput: dict[str, Layout]  # layout label → layout
    coldstart: ColdStart | None
    size: SizeSection | None
    peer: dict[str, PeerRun]
    precision: Precision | None
    slides: SlidesSection | None
    oip: Fields | None = None  # raw/oip.json as written (benchmarks/report/oip.py reads it)


def parse(raw: dict[str, Any], folder: Path = Path(".")) -> Results:
    """Results from benchmarks.store.read_results' dicts; `folder` names the files in errors."""
    def part(name: str, where: str) -> Fields | None:
        return Fields(raw[name], str(folder / where)) if raw.get(name) else None

    run = part("run", "run.json") or Fields({}, str(folder / "run.json"))
    machine = part("machine", "machine.json")
    sections = {name: part(name, f"raw/{name}.json") for name in SECTIONS}
    tp, peer, precision, slides = (sections[k] for k in ("throughput", "peer", "precision",
                                                         "slides"))
    return Results(
        run=_run(run), machine=_machine(machine) if machine else Machine(),
        model=_model(sections["model"]) if sections["model"] else None,
        http=_http(sections["http"]) if sections["http"] else None,
        throughput={k: _layout(rec) for k, rec in tp.items()} if tp else {},
        coldstart=_cold(sections["coldstart"]) if sections["coldstart"] else None,
        size=_size(sections["size"]) if sections["size"] else None,
        peer={k: _peer(rec) for k, rec in peer.items()} if peer else {},
        precision=_precision(precision) if precision else None,
        slides=_slides(slides) if slides else None, oip=sections.get("oip"))


def load(folder: str | Path) -> Results:
    """Parse a benchmarks/results/<timestamp> folder (benchmarks.store's layout)."""
    return parse(read_results(Path(folder)), Path(folder))
