"""Summary and plots from a results folder's raw JSON — rerunnable at any time:

    python -m benchmarks.report benchmarks/results/<timestamp>
    python -m benchmarks.report benchmarks/results/<timestamp> --publish --readme README.md
    python -m benchmarks.report --readme README.md      # README's block from the reports alone

writes <folder>/summary.md (Markdown tables with ratios, the machine, what was skipped and
why) and <folder>/plots/*.png. Nothing here measures anything, and every sentence that states
a result is computed from the measurements: a ratio, a comparison, a flag. What is fixed text
says how something was measured, never what came out.

The floor plan: records.py parses the folder once into typed records (fields.py names the file
and key when one is missing); goals.json holds the targets the report judges against, each
with its reason; one module per section (header, headline, model_only, end_to_end, throughput,
cold_start, size, peers, precision, whole_slide) turns records into Markdown with text.py's
helpers; document.py puts them in order; plots.py draws; classes.py publishes a run as
its CPU class's benchmarks/LATEST.<class>.md (raw JSON in benchmarks/latest-run/<class>/) and
writes README.md's block from every class's headline between readme.py's markers
(benchmarks/test_report.py checks that they agree).
"""

from benchmarks.report.classes import cpu_class, publish, readme_block, sync_readme
from benchmarks.report.document import generate, render, write_latest
from benchmarks.report.readme import README_BEGIN, README_END, extract_block
from benchmarks.report.records import Results, load, parse

__all__ = ["README_BEGIN", "README_END", "Results", "cpu_class", "extract_block", "generate",
           "load", "parse", "publish", "readme_block", "render", "sync_readme", "write_latest"]
