"""The predictions contract: the typed, versioned schema of a predictions table, shared by the writer
(``replay``, in-app replay) and the reader (``evaluate``).

A predictions folder holds Parquet parts, one row per (item, bundle). Every part written since schema
version 2 carries its ``PredictionsSchema`` as JSON under the Parquet key/value metadata key
``replaybench.predictions``: every column with its name, kind and role, and for a decoded column the
task it feeds and the bundle decoder(s) that fill it. Parts written before that carry no schema: they
are version 1, read by the column-name rules ``evaluate`` always had.

Roles:

- ``fixed``: ``item_id``, ``source_path``, ``bundle``, ``route`` (offline | in_app), ``status``
  (``ok`` | ``error`` | ``skipped``), ``error`` (the reason of an error or a skip);
- ``label``: a label the dataset reader found, in one kind per column; a label whose key collides with
  another column is renamed ``label__<key>`` and keeps its key in ``label_key``;
- ``post``: ``post_id``, ``caption`` (datasets of posts);
- ``face``: ``face_count``, ``face_box``, ``face_score`` (``--faces``);
- ``decoded``: a bundle decoder's field (``age_pred``, ``gender_pred``, ``p_<label>``, ``concepts``, the
  student's ``score``), with the task it feeds, if any;
- ``raw``: a model output as it came (``raw__<output>``), or the app's raw result in-app (``raw_result``).

Example::

    schema = read_schema(sorted(Path("preds").glob("part-*.parquet")))
    schema.tasks_of("gender-model") if schema else "version 1: tasks from column names"
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from replaybench.errors import CorruptInputError, UsageError

#: Version 2: the first with schema metadata (a part without it is version 1).
PREDICTIONS_SCHEMA_VERSION = 2
#: The Parquet key/value metadata key holding the schema (JSON).
METADATA_KEY = "replaybench.predictions"

ColumnKind = Literal["float", "int", "str", "bool", "str_list", "float_list", "topk"]
Role = Literal["fixed", "label", "post", "face", "decoded", "raw"]
Task = Literal["age", "gender", "classification", "concepts", "score"]
Status = Literal["ok", "error", "skipped"]
Route = Literal["offline", "in_app"]
STATUSES: tuple[str, ...] = get_args(Status)
TASKS: tuple[str, ...] = get_args(Task)

FIXED_HEAD: dict[str, ColumnKind] = {"item_id": "str", "source_path": "str", "bundle": "str"}
FIXED_TAIL: dict[str, ColumnKind] = {"status": "str", "error": "str"}
ROUTE: dict[str, ColumnKind] = {"route": "str"}
POST_COLUMNS: dict[str, ColumnKind] = {"post_id": "str", "caption": "str"}
FACE_COLUMNS: dict[str, ColumnKind] = {"face_count": "int", "face_box": "float_list", "face_score": "float"}

#: The decoded field each task reads and the decoder kinds whose values it can use. A decoder feeds a
#: task when its field and kind match here: ``gender_pred`` as a class label does, a ``gender_pred`` made
#: by ``scale`` (a number) does not, and evaluate would misread it.
TASK_FIELDS: dict[str, tuple[str, frozenset[str]]] = {
    "age": ("age_pred", frozenset({"scale", "expectation", "softmax_argmax"})),  # years, or an age bin
    "gender": ("gender_pred", frozenset({"softmax_argmax"})),
    "classification": ("label_pred", frozenset({"softmax_argmax"})),
    "concepts": ("concepts", frozenset({"topk"})),
    "score": ("score", frozenset({"scale", "expectation"})),  # the student: a 0-10 score per post
}

_UPGRADE_HINT = "upgrade replaybench (pip install -U replaybench) to read these predictions"


def decoder_task(field: str, kind: str) -> Task | None:
    """The task a decoder's field feeds, from its field name and decoder kind (None: no task)."""
    for task, (name, kinds) in TASK_FIELDS.items():
        if field == name and kind in kinds:
            return task  # type: ignore[return-value]
    return None


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Producer(_Frozen):
    """Where a decoded or raw column's values come from: one bundle's decoder over one model output."""

    bundle: str
    decoder: str  # the decoder kind (scale, softmax_argmax, ...); "raw" for an output as it came
    field: str | None = None  # the decoder's field (a p_<label> column names the field it goes with)
    output: str


class Column(_Frozen):
    """One column of a predictions table."""

    name: str
    kind: ColumnKind
    role: Role
    label_key: str | None = None  # label: the dataset's own key (differs from name when renamed)
    task: Task | None = None  # decoded: the task this column feeds
    producers: tuple[Producer, ...] = ()  # decoded and raw: the bundles and decoders that fill it


class PredictionsSchema(_Frozen):
    """The typed schema of a predictions table (see the module docstring)."""

    version: int = PREDICTIONS_SCHEMA_VERSION
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    def with_role(self, role: Role) -> list[Column]:
        return [c for c in self.columns if c.role == role]

    def label_column(self, key: str) -> Column | None:
        """The label column holding the dataset's label ``key`` (renamed or not)."""
        return next((c for c in self.with_role("label") if c.label_key == key), None)

    def tasks_of(self, bundle: str) -> list[Task]:
        """The tasks ``bundle``'s decoders feed, in ``TASKS`` order."""
        found = {
            c.task
            for c in self.with_role("decoded")
            if c.task is not None and any(p.bundle == bundle for p in c.producers)
        }
        return [t for t in get_args(Task) if t in found]

    def polars_schema(self) -> dict[str, Any]:
        """Column name -> polars type, in column order."""
        return {c.name: column_dtype(c.kind) for c in self.columns}

    def to_metadata(self) -> dict[str, str]:
        """The Parquet key/value metadata that records this schema in a part."""
        return {METADATA_KEY: self.model_dump_json(exclude_defaults=False)}

    @classmethod
    def from_metadata(
        cls, metadata: Mapping[str, str], source: object = "a part"
    ) -> PredictionsSchema | None:
        """The schema recorded in a part's key/value metadata; None for a part without one (version 1).

        Raises ``CorruptInputError`` for unreadable JSON, a schema that does not validate, or a version
        newer than this replaybench reads (with a hint to upgrade)."""
        text = metadata.get(METADATA_KEY)
        if text is None:
            return None
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise CorruptInputError(f"{source}: the predictions schema metadata is not JSON ({e})") from e
        version = doc.get("version") if isinstance(doc, dict) else None
        if not isinstance(version, int) or isinstance(version, bool):
            raise CorruptInputError(f"{source}: the predictions schema metadata has no integer version")
        if version > PREDICTIONS_SCHEMA_VERSION:
            raise CorruptInputError(
                f"{source} holds predictions schema version {version}; this replaybench reads versions up "
                f"to {PREDICTIONS_SCHEMA_VERSION}",
                hint=_UPGRADE_HINT,
            )
        try:
            return cls.model_validate(doc)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise CorruptInputError(
                f"{source}: the predictions schema metadata does not validate ({where}: {first['msg']})"
            ) from e


def column_dtype(kind: str) -> Any:
    """The polars type of a column kind (written by polars' own Parquet writer: no pyarrow, and so no
    pandas import, which pyarrow makes on its first array and costs ~0.25 s of every replay's start)."""
    import polars as pl

    return {
        "float": pl.Float64,
        "int": pl.Int64,
        "str": pl.String,
        "bool": pl.Boolean,
        "str_list": pl.List(pl.String),
        "float_list": pl.List(pl.Float32),
        "topk": pl.List(pl.Struct({"label": pl.String, "score": pl.Float64})),
    }[kind]


def build_schema(
    labels: Mapping[str, ColumnKind],
    outputs: Iterable[Column],
    *,
    posts: bool = False,
    faces: bool = False,
) -> PredictionsSchema:
    """The schema of one run: fixed columns, ``labels`` (dataset key -> kind; a key that collides with
    another column becomes ``label__<key>``), post and face columns where the run has them, and the
    bundles' decoded and raw ``outputs`` (one ``Column`` per bundle and name: columns of the same name
    from several bundles are merged; they must agree on kind and task).

    Column order: item_id, source_path, bundle, labels, route, post, face, decoded/raw, status, error.
    """
    merged: dict[str, Column] = {}
    for col in outputs:
        if col.role not in ("decoded", "raw"):
            raise ValueError(f"column {col.name!r}: a bundle output has role decoded or raw, not {col.role}")
        have = merged.get(col.name)
        if have is None:
            merged[col.name] = col
        elif (have.kind, have.role, have.task) != (col.kind, col.role, col.task):
            raise UsageError(
                f"bundles disagree on column {col.name!r}: {have.kind}/{have.task} vs {col.kind}/{col.task}",
                hint="give the bundles' decoders different fields, or replay them into separate folders",
            )
        else:
            merged[col.name] = have.model_copy(update={"producers": (*have.producers, *col.producers)})
    others: dict[str, Column] = {}

    def add(group: Mapping[str, ColumnKind], role: Role) -> None:
        for name, kind in group.items():
            others[name] = Column(name=name, kind=kind, role=role)

    add(FIXED_HEAD, "fixed")
    add(ROUTE, "fixed")
    if posts:
        add(POST_COLUMNS, "post")
    if faces:
        add(FACE_COLUMNS, "face")
    add(FIXED_TAIL, "fixed")
    taken = set(others) | set(merged)
    clash = taken & {f"label__{k}" for k in labels}
    if clash:
        raise UsageError(f"a bundle output is named like a renamed label: {sorted(clash)}")
    label_cols = [
        Column(name=f"label__{key}" if key in taken else key, kind=kind, role="label", label_key=key)
        for key, kind in labels.items()
    ]
    head = [others[n] for n in FIXED_HEAD]
    middle = [c for n, c in others.items() if n not in FIXED_HEAD and n not in FIXED_TAIL]
    tail = [others[n] for n in FIXED_TAIL]
    return PredictionsSchema(columns=(*head, *label_cols, *middle, *merged.values(), *tail))


def read_schema(parts: Sequence[Path]) -> PredictionsSchema | None:
    """The schema of a set of parts (a predictions folder's ``part-*.parquet``, or one file): None when
    they are version 1 (no schema metadata).

    Every part must agree: parts of different schema versions, or of different schemas, are refused
    with ``CorruptInputError`` (a folder written by two replaybench versions, or two runs' parts copied
    together, would otherwise be read by the wrong rules)."""
    import polars as pl

    found: list[tuple[Path, PredictionsSchema | None]] = []
    for p in parts:
        try:
            meta = pl.read_parquet_metadata(p)
        except Exception as e:  # polars raises several types for truncated or non-Parquet files
            raise CorruptInputError(
                f"cannot read predictions file {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from e
        found.append((p, PredictionsSchema.from_metadata(meta, source=p)))
    if not found:
        return None
    first_path, first = found[0]
    for p, schema in found[1:]:
        if (schema is None) != (first is None):
            old, new = (p, first_path) if schema is None else (first_path, p)
            raise CorruptInputError(
                f"predictions parts of different schema versions: {old.name} has no schema (version 1), "
                f"{new.name} has version {PREDICTIONS_SCHEMA_VERSION}",
                hint="a folder holds one run: replay the dataset again into a new folder",
            )
        if schema is not None and schema != first:
            assert first is not None
            diff = _first_difference(first, schema)
            raise CorruptInputError(
                f"predictions parts disagree on their schema: {first_path.name} and {p.name} differ ({diff})",
                hint="a folder holds one run: replay the dataset again into a new folder",
            )
    return first


def _first_difference(a: PredictionsSchema, b: PredictionsSchema) -> str:
    if a.version != b.version:
        return f"version {a.version} vs {b.version}"
    ca, cb = {c.name: c for c in a.columns}, {c.name: c for c in b.columns}
    for name in [*ca, *(n for n in cb if n not in ca)]:
        if ca.get(name) != cb.get(name):
            return f"column {name!r}"
    return "column order"
