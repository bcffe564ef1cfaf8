"""Human labels for the DSPO rank stage: import them into `human_labels`, export labelling tasks.

    from pipeline.labels import import_labels, export_tasks
    report = import_labels(store, "labels.csv", annotator="alice")   # -> ImportReport
    report.ref, report.accepted, report.rejected, report.duplicates     # "human_labels@v3", 40, [Rejection], [Duplicate]
    export_tasks(store, "tasks/", format="label-studio", limit=50)     # crops + tasks.json

Formats read: CSV and Parquet (pipeline.labels.readers), Label Studio JSON exports
(pipeline.labels.label_studio, including brush masks: pipeline.labels.lsrle). The rules a
label must pass are in pipeline.labels.importer, those it shares with make_pairs (one judgement
per annotator and instance; duplicates and conflicts) in dspo_core.label_rules; the dataset
schema is pipeline.schemas.HUMAN_LABELS.
"""
from pipeline.labels.export import EXPORT_FORMATS, ExportReport, export_tasks, label_config
from pipeline.labels.importer import (
    Duplicate, ImportReport, KnownIds, Rejection, import_labels, import_labels_checked, import_rows, label_id,
)
from pipeline.labels.lsrle import brush_mask, decode_rle
from pipeline.labels.readers import FORMATS, TEMPLATE_COLUMNS, read_labels
from pipeline.labels.records import LabelFileError, RawLabel

__all__ = [
    "EXPORT_FORMATS",
    "FORMATS",
    "TEMPLATE_COLUMNS",
    "Duplicate",
    "ExportReport",
    "ImportReport",
    "KnownIds",
    "LabelFileError",
    "RawLabel",
    "Rejection",
    "brush_mask",
    "decode_rle",
    "export_tasks",
    "import_labels",
    "import_labels_checked",
    "import_rows",
    "label_config",
    "label_id",
    "read_labels",
]
