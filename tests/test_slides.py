"""Whole-slide inference (python -m services.slides) and POST /predict/region, on real slides.

The slides are pyramidal tiled TIFFs written here (tests/support/slides.py) at 0.5 µm/px with
levels at 2.0 and 8.0 µm/px, read back through the OpenSlide wheels. The fixture model was
trained at 64 px on 448-µm synthetic patches, so its input is at 7.0 µm/px (mhist.mpp): the
CLI must read level 1 (2.0 µm/px, no upsampling, fewest pixels) and let the model's own
preprocessing shrink each 224-px tile to 64 px. The tissue is the synthetic generator's, with
a planted SSA field, an HP field and glass around them.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image

from services.core.files import sha256_file
from services.core.metadata import DEFAULT_MPP, ModelMetadata
from services.core.model import InferenceModel
from services.core.tissue import otsu_threshold
from services.slides.outputs import OVERLAY_ALPHA, colormap, probability_column
from services.slides.reader import choose_level
from services.web.app import create_app
from tests.conftest import REPO_ROOT
from tests.support.slides import SLIDE_LAYOUT, tissue_canvas, write_pyramid

CELL_PX = 224  # a 448 µm field at 2.0 µm/px, the canvas (= level 1) resolution
CANVAS_MPP, LEVEL0_MPP = 2.0, 0.5
TILE_L0 = 896  # 448 µm at 0.5 µm/px
ROWS, COLS = len(SLIDE_LAYOUT), len(SLIDE_LAYOUT[0])
BAD = {  # file → the error code the CLI must name for it
    "glass.tif": "no_tissue",
    "no-resolution.tif": "unknown_resolution",
    "coarse.tif": "resolution_too_coarse",
    "truncated.tif": "corrupt_slide",
    "garbled.tif": "corrupt_slide",
    "notes.txt": "not_a_slide",
}


@pytest.fixture(scope="module")
def canvas() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return tissue_canvas(SLIDE_LAYOUT, CELL_PX)


@pytest.fixture(scope="module")
def slides(canvas, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder: the good slide first (name order), then every kind of bad input."""
    folder = tmp_path_factory.mktemp("slides")
    write_pyramid(folder / "a-polyp.tif", canvas[0], CANVAS_MPP, LEVEL0_MPP)
    small, _ = tissue_canvas(("SH", "HS"), CELL_PX)
    glass, _ = tissue_canvas(("...", "..."), CELL_PX)
    write_pyramid(folder / "glass.tif", glass, CANVAS_MPP, LEVEL0_MPP)
    write_pyramid(folder / "no-resolution.tif", small, CANVAS_MPP, LEVEL0_MPP, resolution=False)
    # 16 µm/px at level 0: the 7 µm/px model would need 2.3× upsampling.
    coarse = np.asarray(Image.fromarray(small).resize((56, 56), Image.Resampling.BOX))
    write_pyramid(folder / "coarse.tif", coarse, 16.0, 16.0, downsamples=(1,))
    whole = write_pyramid(folder / "whole.tif", small, CANVAS_MPP, LEVEL0_MPP).read_bytes()
    (folder / "whole.tif").unlink()
    (folder / "truncated.tif").write_bytes(whole[: len(whole) // 2])
    garbled = bytearray(whole)  # the TIFF header intact, most of the rest zeroed
    start, end = len(whole) // 10, len(whole) * 9 // 10
    garbled[start:end] = bytes(end - start)
    (folder / "garbled.tif").write_bytes(bytes(garbled))
    (folder / "notes.txt").write_text("not a slide\n")
    return folder


def run_slides(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.slides", *map(str, args)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def folder_run(slides: Path, model_int8_path: Path, tmp_path_factory) -> dict:
    """The CLI over the whole folder, as a user runs it."""
    out = tmp_path_factory.mktemp("slides-out")
    result = run_slides(slides, "--model", model_int8_path, "--out", out, "--no-progress",
                        "--threads", "2")
    return {"result": result, "out": out}


@pytest.fixture(scope="module")
def good(folder_run: dict) -> dict:
    out = folder_run["out"]
    with open(out / "a-polyp.tiles.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    return {"rows": rows, "summary": json.loads((out / "a-polyp.summary.json").read_text()),
            "geojson": json.loads((out / "a-polyp.geojson").read_text()), "out": out}


def cell_of(row: dict) -> tuple[int, int]:
    """(row, column) of the layout cell a level-0 tile lies on."""
    return int(row["y"]) // TILE_L0, int(row["x"]) // TILE_L0


def test_openslide_reads_the_written_pyramid(slides: Path, canvas) -> None:
    with openslide.OpenSlide(str(slides / "a-polyp.tif")) as slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(LEVEL0_MPP)
        assert slide.level_dimensions == ((COLS * TILE_L0, ROWS * TILE_L0),
                                          (COLS * CELL_PX, ROWS * CELL_PX),
                                          (COLS * CELL_PX // 4, ROWS * CELL_PX // 4))
        assert slide.level_downsamples == pytest.approx((1.0, 4.0, 16.0))
        block = slide.read_region((TILE_L0, TILE_L0), 1, (CELL_PX, CELL_PX)).convert("RGB")
        second = slice(CELL_PX, 2 * CELL_PX)
        assert np.array_equal(np.asarray(block), canvas[0][second, second])
        top_left = np.asarray(slide.read_region((0, 0), 0, (8, 8)).convert("RGB"))
        assert np.array_equal(top_left[::4, ::4], canvas[0][:2, :2])  # level 0 = 4× the canvas


def test_the_level_that_needs_no_upsampling_is_read(good: dict, model_int8_path: Path) -> None:
    analysis = good["summary"]["analysis"]
    assert InferenceModel(model_int8_path).metadata.mpp == pytest.approx(7.0)
    assert (analysis["level"], analysis["level_mpp"], analysis["model_mpp"]) == (1, 2.0, 7.0)
    assert (analysis["tile_px_level0"], analysis["tile_px_read"], analysis["model_input_px"]) == (
        TILE_L0, CELL_PX, 64)
    assert analysis["grid"] == [COLS, ROWS]
    assert choose_level((1.0, 4.0, 16.0), 14.0) == 1
    assert choose_level((1.0, 4.0, 16.0), 3.0) == 0
    assert choose_level((1.0, 4.0, 16.0), 40.0) == 2
    assert choose_level((1.0, 4.0, 16.0), 0.6) == 0  # upsampling: the finest level


def test_background_tiles_are_skipped(good: dict, canvas) -> None:
    truth = canvas[1]
    analysed = {cell_of(row) for row in good["rows"]}
    tissue = {tuple(cell) for cell in np.argwhere(truth["S"] | truth["H"])}
    assert analysed == tissue
    assert all(float(row["tissue_fraction"]) >= 0.5 for row in good["rows"])
    assert good["summary"]["tiles"] == {"grid": ROWS * COLS, "analysed": len(tissue),
                                        "background": ROWS * COLS - len(tissue)}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_the_heatmap_localises_the_planted_ssa_field(good: dict, canvas) -> None:
    called = np.zeros((ROWS, COLS), dtype=bool)
    probability = np.full((ROWS, COLS), np.nan)
    for row in good["rows"]:
        called[cell_of(row)] = row["label"] == "SSA"
        probability[cell_of(row)] = float(row["p_ssa"])
    score = iou(called, canvas[1]["S"])
    print(f"IoU of SSA tiles vs the planted SSA field: {score:.3f}")
    assert score >= 0.6
    assert np.nanmean(probability[canvas[1]["S"]]) > np.nanmean(probability[canvas[1]["H"]])
    # The picture: the thumbnail (32 px a tile) plus a 90 px colour bar. Viridis's green channel
    # rises with P (its "yellowness" does not: purple, blue and teal are all low), and the
    # overlay mixes OVERLAY_ALPHA of the colour into the thumbnail. So the SSA field must be
    # greener than the HP field by about OVERLAY_ALPHA × the gap between the fields' colours.
    heatmap = Image.open(good["out"] / "a-polyp.heatmap.png").convert("RGB")
    assert heatmap.size == (COLS * 32 + 90, ROWS * 32)
    green = np.asarray(heatmap)[..., 1].astype(float)
    ssa_field, hp_field = green[32:4 * 32, 32:4 * 32], green[2 * 32:5 * 32, 6 * 32:9 * 32]
    field_p = np.array([np.nanmean(probability[canvas[1][field]]) for field in "SH"])
    drawn_gap = OVERLAY_ALPHA * np.diff(colormap(field_p)[::-1, 1].astype(float))[0]
    print(f"field P {field_p}, green gap {ssa_field.mean() - hp_field.mean():.1f} "
          f"(colour map × alpha: {drawn_gap:.1f})")
    assert drawn_gap > 0
    assert ssa_field.mean() - hp_field.mean() > drawn_gap / 2


def test_geojson_is_a_qupath_feature_collection_in_level0_pixels(good: dict) -> None:
    from shapely.geometry import shape

    document = good["geojson"]
    assert document["type"] == "FeatureCollection"
    assert len(document["features"]) == len(good["rows"])
    width, height = COLS * TILE_L0, ROWS * TILE_L0
    for feature, row in zip(document["features"], good["rows"], strict=True):
        polygon = shape(feature["geometry"])
        assert polygon.is_valid and polygon.area == TILE_L0 * TILE_L0
        x0, y0, x1, y1 = polygon.bounds
        assert (x0, y0) == (int(row["x"]), int(row["y"])) and x0 % TILE_L0 == 0
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        props = feature["properties"]
        # A tile the input checks turned away is classified not_assessable, not as its label.
        shown_as = row["decision"] if row["reasons"] else row["label"]
        assert props["objectType"] == "tile" and props["classification"]["name"] == shown_as
        assert len(props["classification"]["color"]) == 3
        assert props["measurements"]["P(SSA)"] == pytest.approx(float(row["p_ssa"]))
    assert len({f["id"] for f in document["features"]}) == len(document["features"])


def test_summary_reports_area_ssa_share_regions_and_provenance(good: dict,
                                                               model_int8_path: Path) -> None:
    summary = good["summary"]
    tile_mm2 = 0.448 ** 2
    assert summary["tissue_area_mm2"] == pytest.approx(18 * tile_mm2, rel=0.15)
    assert summary["positive_class"] == "SSA"
    assert summary["fraction_positive"] == pytest.approx(0.5, abs=0.15)
    top = summary["top_regions"][0]
    # The planted 3x3 SSA field, less any tile the input checks turned away (at most one).
    turned_away = sum(1 for r in good["rows"] if r["reasons"] and cell_of(r)[0] in (1, 2, 3)
                      and cell_of(r)[1] in (1, 2, 3))
    assert turned_away <= 1 and summary["assessable"]["share"] >= 0.9, summary["assessable"]
    assert top["tiles"] == 9 - turned_away
    assert top["bbox"] == [TILE_L0, TILE_L0, 3 * TILE_L0, 3 * TILE_L0]
    assert summary["model"]["sha256"] == sha256_file(model_int8_path)
    assert summary["model"]["mpp"] == pytest.approx(7.0)
    assert summary["slide"]["mpp"] == LEVEL0_MPP
    assert summary["slide"]["mpp_source"].startswith("openslide.mpp")
    timings = summary["timings"]
    assert timings["total_s"] > 0 and timings["tiles_per_s"] > 0
    print(f"tiles/s on the test slide: {timings['tiles_per_s']} "
          f"({summary['tiles']['analysed']} tiles, {timings['total_s']} s in all)")
    header = (good["out"] / "a-polyp.tiles.csv").read_text().splitlines()[0]
    assert header == "x,y,width,height,tissue_fraction,p_ssa,label,decision,reasons"


def test_every_bad_slide_fails_on_one_line_and_the_good_one_finishes(folder_run: dict) -> None:
    result, out = folder_run["result"], folder_run["out"]
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(BAD), result.stderr
    for name, code in BAD.items():
        (line,) = [e for e in errors if e.startswith(f"error: {name}: ")]
        assert line.endswith(f"[{code}]"), line
        assert not list(out.glob(f"{Path(name).stem}.*")), name  # nothing half-written
    assert "a-polyp.tif: 18 tiles analysed" in result.stdout
    with open(out / "slides.summary.csv", newline="") as stream:
        table = {row["slide"]: row for row in csv.DictReader(stream)}
    assert table["a-polyp.tif"]["status"] == "ok"
    assert table["a-polyp.tif"]["tiles_analysed"] == "18"
    assert {name: table[name]["error"].split(":")[0] for name in BAD} == BAD
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"a-polyp{s}" for s in (".tiles.csv", ".geojson", ".heatmap.png", ".summary.json")]
        + ["slides.summary.csv"])


def test_mpp_option_overrides_a_missing_resolution(slides: Path, model_int8_path: Path,
                                                   tmp_path: Path) -> None:
    result = run_slides(slides / "no-resolution.tif", "--model", model_int8_path, "--out",
                        tmp_path, "--mpp", "0.5", "--no-progress", "--min-tissue", "0.4")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "no-resolution.summary.json").read_text())
    assert summary["slide"]["mpp_source"] == "--mpp"
    assert summary["tiles"]["analysed"] == 4
    assert not (tmp_path / "slides.summary.csv").exists()  # one slide: no table


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(model_int8_path: Path):
    return create_app({"MODEL_PATH": str(model_int8_path)}).test_client()


def test_region_endpoint_equals_the_cli_on_the_same_pixels(client, canvas, good: dict) -> None:
    # The canvas is the slide's level 1: the pixels the CLI read, at 2.0 µm/px.
    reply = client.post("/predict/region?mpp=2.0", data=png(canvas[0]),
                        headers={"Content-Type": "image/png"})
    assert reply.status_code == 200, reply.get_data()[:300]
    body = reply.get_json()
    from_cli = {(int(r["x"]) // 4, int(r["y"]) // 4): (float(r["p_ssa"]), r["label"])
                for r in good["rows"]}
    from_api = {(t["x"], t["y"]): (t["p_ssa"], t["label"]) for t in body["tiles"]}
    assert from_api == from_cli
    assert body["grid"] == {"columns": COLS, "rows": ROWS, "tile_px": CELL_PX,
                            "stride_px": CELL_PX, "background_tiles": ROWS * COLS - 18}
    assert body["scale"] == {"region_mpp": 2.0, "model_mpp": 7.0, "mpp_source": "query",
                             "tile_um": 448.0}
    assert body["summary"]["top_regions"][0]["bbox"] == [CELL_PX, CELL_PX, 3 * CELL_PX,
                                                         3 * CELL_PX]
    assert set(body["tiles"][0]) == {"x", "y", "width", "height", "tissue_fraction",
                                     probability_column("SSA"), "label", "decision", "reasons"}
    heatmap = Image.open(io.BytesIO(__import__("base64").b64decode(body["heatmap"]["base64"])))
    assert heatmap.format == "PNG" and max(heatmap.size) <= 512


def region(client, image: bytes, query: str = "", **headers: str):
    reply = client.post(f"/predict/region{query}", data=image,
                        headers={"Content-Type": "image/png", **headers})
    return reply.status_code, (reply.get_json() or {}).get("error", {}).get("code")


def test_region_bad_inputs_are_4xx_json(client, canvas) -> None:
    tissue = png(canvas[0][:448, :448])  # four cells around the SSA field's corner
    glass = png(np.full((448, 448, 3), 238, dtype=np.uint8))
    assert region(client, tissue, "?mpp=2.0")[0] == 200
    assert region(client, glass, "?mpp=2.0") == (422, "no_tissue")
    assert region(client, tissue, "?mpp=20") == (422, "resolution_too_coarse")
    assert region(client, tissue, "?mpp=-1") == (400, "invalid_parameter")
    assert region(client, tissue, "?mpp=nan") == (400, "invalid_parameter")
    assert region(client, tissue, "?stride=0.5") == (400, "invalid_parameter")
    # Once a 500: an integer stride beyond the image overflowed the grid's arithmetic.
    assert region(client, tissue, "?stride=1e20") == (400, "invalid_stride")
    assert region(client, tissue, "?min_tissue=1.5") == (400, "invalid_parameter")
    assert region(client, png(canvas[0][:40, :40])) == (400, "region_too_small")
    assert region(client, tissue, "?stride=1") == (400, "too_many_tiles")
    assert region(client, b"not an image") == (400, "invalid_image")


def test_region_over_the_pixel_limit_is_413(model_int8_path: Path, canvas) -> None:
    small_limit = create_app({"MODEL_PATH": str(model_int8_path),
                              "MAX_IMAGE_PIXELS": 1_000_000}).test_client()
    assert region(small_limit, png(canvas[0]), "?mpp=2.0") == (413, "image_too_large")


def test_metadata_carries_the_models_scale(client, model_int8_path: Path) -> None:
    assert client.get("/metadata").get_json()["mpp"] == pytest.approx(7.0)
    props = InferenceModel(model_int8_path).metadata.to_props()
    assert props["mhist.mpp"] == "7.0"
    older = ModelMetadata.from_props({k: v for k, v in props.items() if k != "mhist.mpp"})
    assert older.mpp == DEFAULT_MPP and "assumed" in older.describe()["mpp_note"]
    assert "mpp_note" not in ModelMetadata.from_props(props).describe()
    with pytest.raises(ValueError, match="mpp"):
        ModelMetadata.from_props({**props, "mhist.mpp": "0"})


def test_mpp_is_set_at_training_and_export() -> None:
    from export.to_onnx import _model_mpp
    from services.core.preprocessing import PreprocessSpec
    from training.train import config_from_args, get_args_parser

    parse = get_args_parser().parse_args
    assert config_from_args(parse(["--image-size", "224"])).mpp == pytest.approx(2.0)
    assert config_from_args(parse(["--image-size", "64"])).mpp == pytest.approx(7.0)
    assert config_from_args(parse(["--mpp", "0.5"])).mpp == 0.5
    spec = PreprocessSpec(size=112, resize_size=112)
    assert _model_mpp(None, {"config": {"mpp": 1.5}}, spec) == 1.5
    assert _model_mpp(3.0, {"config": {"mpp": 1.5}}, spec) == 3.0
    assert _model_mpp(None, {}, spec) == pytest.approx(4.0)  # an older card: derived


def test_otsu_splits_two_populations() -> None:
    values = np.concatenate([np.full(500, 0.05), np.full(300, 0.4)])
    assert 0.05 < otsu_threshold(values) <= 0.4


def test_the_serving_app_needs_neither_openslide_nor_tqdm() -> None:
    code = ("import sys, services.web.app, services.web.routes.region; "
            "print(sorted({'openslide', 'tqdm', 'torch'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr
