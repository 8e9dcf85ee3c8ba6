"""Summary and plots from a results folder's raw JSON — rerunnable at any time:

    python -m benchmarks.report benchmarks/results/<timestamp>
    python -m benchmarks.report benchmarks/results/<timestamp> --latest benchmarks/LATEST.md \\
        --readme README.md
    python -m benchmarks.report --readme README.md      # README's table from LATEST.md alone

writes <folder>/summary.md (Markdown tables with ratios, the machine, what was skipped and
why) and <folder>/plots/*.png. Nothing here measures anything, and every sentence that states
a result is computed from the measurements: a ratio, a comparison, a flag. What is fixed text
says how something was measured, never what came out.

The floor plan: records.py parses the folder once into typed records (fields.py names the file
and key when one is missing); goals.json holds the targets the report judges against, each
with its reason; one module per section (header, headline, model_only, end_to_end, throughput,
cold_start, size, peers, precision, whole_slide) turns records into Markdown with text.py's
helpers; document.py puts them in order; plots.py draws; readme.py copies the headline block
into README.md between README_BEGIN and README_END (benchmarks/test_report.py checks that
they agree).
"""

from benchmarks.report.document import generate, render
from benchmarks.report.readme import (
                                      LATEST,
                                      README_BEGIN,
                                      README_END,
                                      extract_block,
                                      readme_block_for,
                                      sync_readme,
)
from benchmarks.report.records import Results, load, parse

__all__ = ["LATEST", "README_BEGIN", "README_END", "Results", "extract_block", "generate",
           "load", "parse", "readme_block_for", "render", "sync_readme"]
