"""Whole-slide and region inference: the ONNX patch classifier run over tiles of a larger image.

    python -m services.slides SLIDE [SLIDE ...] --model MODEL.onnx --out DIR [--mpp X]

Modules, from pixels to files:
  tiling   scale (the model's µm/px against the source's), the tile grid, batched prediction
           through InferenceModel — shared by the CLI and POST /predict/region
  tissue   tissue mask on a low-resolution thumbnail (Otsu on saturation) and per-tile fractions
  outputs  CSV rows, QuPath GeoJSON, the heatmap PNG with its colour bar, summaries
  region   one in-memory region image → the /predict/region answer
  reader   OpenSlide: resolution, pyramid level, tiles and thumbnail of a slide (CLI only)
  run      one slide → its four output files (CLI only)

Only `reader`, `run` and `__main__` need the `slides` extra (OpenSlide, tqdm); the serving app
imports `tiling`, `tissue`, `outputs` and `region`, which use numpy and Pillow alone. Importing
this package imports none of them.
"""
