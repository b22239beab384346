"""The run report: ``<run_dir>/report.html``, one self-contained page with the scores of every
stage, the background-threshold curve, per-class IoU, training curves and a gallery of the best
and worst images (``plda report RUN_DIR``)."""

from plda.report.page import REPORT_NAME, render_report, write_report
from plda.report.rundata import RunData, load_run

__all__ = ["REPORT_NAME", "RunData", "load_run", "render_report", "write_report"]
