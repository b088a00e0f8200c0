"""Every user-facing message of the evaluate stage, as constants (the fairlearn habit: tests assert them).

Templates use ``str.format`` fields; the tests format them the same way and compare whole strings.
"""

from __future__ import annotations

# -- metric frames
METRICS_EMPTY = "no metrics were given: pass a callable or a dict of name -> metric"
LENGTH_MISMATCH = "y_true has {n_true} rows but {what} has {n_other}: they must describe the same items"
NO_SENSITIVE_FEATURES = "no sensitive features were given: pass at least one group column"
UNKNOWN_METHOD = "unknown aggregation method {method!r}: use one of {allowed}"
UNKNOWN_GROUPING = "unknown grouping {grouping!r}: this frame has {allowed}"
BAD_CI = "confidence level must lie strictly between 0 and 1, got {ci}"
NOT_ENOUGH_ROWS = "no rows left to evaluate: all {n} rows lack a label or a prediction"

# -- predictions
PREDICTIONS_NOT_FOUND = "predictions not found: {path}"
NO_PARQUET_PARTS = "no part-*.parquet files in {path}: is this a folder written by 'replaybench replay'?"
UNREADABLE_PARQUET = "cannot read predictions file {path}: {reason}"
MISSING_REQUIRED_COLUMN = "predictions lack the required column {column!r} (the predictions contract)"
NO_OK_ROWS = (
    "no row of the predictions has status 'ok' ({n_error} error rows, {n_skipped} skipped rows): "
    "nothing to evaluate"
)
UNKNOWN_STATUS = "predictions hold status values {values} outside the contract's {allowed}"
MISSING_LABEL_COLUMN = "the {task} task needs the label column {column!r}, which the predictions lack"
MISSING_PREDICTION_COLUMN = (
    "the {task} task needs the prediction column {column!r}, which the predictions lack"
)
LABELS_DISJOINT = (
    "the labels in {label!r} ({true}) and the predictions in {prediction!r} ({pred}) share no value: "
    "map them to one vocabulary before evaluating"
)
GROUP_COLUMN_ABSENT = "group column {column!r} is not in the predictions (columns with labels: {available})"
NO_TASK_DETECTED = (
    "no task could be detected from the prediction columns: expected age_pred, gender_pred, label_pred, "
    "a 'concepts' list, concept__<name> columns or a student's score"
)
RESERVED_GROUP_NAME = "group column {column!r} clashes with a column of the metrics table: rename it first"
REPORT_PATH_IS_FILE = "the report folder {path} exists and is a file: give -o a folder"
UNKNOWN_TASK = "unknown task {task!r}: use one of {allowed}"
UNPARSEABLE_AGE = (
    "cannot read age {value!r} in column {column!r}: use a number or a bin such as '20-29' or '70+'"
)

# -- concepts
NO_CONCEPTS = "the concepts task needs a 'concepts' list column or concept__<name> score columns"
SPURIOUS_FILE_NOT_FOUND = "spurious-concepts file not found: {path}"

# -- comparison
COMPARE_NO_OVERLAP = "the two prediction sets share no item_id: nothing to compare"
COMPARE_NO_FIELDS = "the two prediction sets share no decoded field to compare (e.g. age_pred, gender_pred)"
