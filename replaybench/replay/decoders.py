"""Model outputs -> prediction columns, as a bundle's ``postprocess.decoders`` say.

Column naming (the predictions contract):

- every output: ``raw__<output>`` (list[float], the output row flattened);
- ``scale``: ``<field>`` = output[index] * factor + offset (e.g. ``age_pred = out[0] * 116``);
- ``softmax_argmax``: ``<field>`` = the label of the largest probability, plus ``p_<label>`` per class
  (softmax applied when ``apply_softmax`` is true, or, when it is None, when the row is not already a
  probability vector);
- ``sigmoid``: ``p_<label>`` per label (sigmoid applied unless the values are already in [0, 1]) and
  ``<field>`` = the labels with p >= threshold (default 0.5);
- ``expectation``: ``<field>`` = sum_i p_i * bin_value_i (age as an expectation over age bins);
- ``topk``: ``<field>`` = list of {label, score}, the k best (score >= threshold when set);
- ``raw``: nothing beyond the ``raw__`` column.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from replaybench.bundle import Decoder
from replaybench.errors import CorruptInputError
from replaybench.predictions import Column, ColumnKind, Producer, Task, decoder_task


def column_slug(label: str) -> str:
    """A label as a column-name suffix: lower case, runs of other characters -> ``_``."""
    return re.sub(r"[^0-9a-z]+", "_", str(label).lower()).strip("_") or "x"


def raw_column(output: str) -> str:
    return f"raw__{output}"


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _is_prob(x: np.ndarray) -> bool:
    return bool(np.all(x >= -1e-6) and np.all(x <= 1 + 1e-6) and np.allclose(x.sum(axis=1), 1.0, atol=1e-3))


def _probabilities(x: np.ndarray, apply: bool | None) -> np.ndarray:
    if apply is True or (apply is None and not _is_prob(x)):
        return _softmax(x)
    return x


def _sigmoid(x: np.ndarray, apply: bool | None) -> np.ndarray:
    if apply is True or (apply is None and not (np.all(x >= 0) and np.all(x <= 1))):
        return 1.0 / (1.0 + np.exp(-x))
    return x


def _labels_for(dec: Decoder, n: int, bundle_labels: Sequence[str] | None) -> list[str]:
    labels = dec.labels or (list(bundle_labels) if bundle_labels else None)
    if labels is None:
        return [str(i) for i in range(n)]
    if len(labels) != n:
        raise CorruptInputError(
            f"decoder {dec.field!r}: {len(labels)} labels for output {dec.output!r} with {n} values"
        )
    return list(labels)


def output_columns(
    bundle: str,
    decoders: Sequence[Decoder],
    output_sizes: Mapping[str, int],
    labels: Sequence[str] | None,
) -> list[Column]:
    """The predictions columns one bundle fills: a raw column per output and each decoder's field (with
    the task it feeds, see ``replaybench.predictions.decoder_task``) and ``p_<label>`` columns."""
    cols: dict[str, Column] = {
        raw_column(name): Column(
            name=raw_column(name),
            kind="float_list",
            role="raw",
            producers=(Producer(bundle=bundle, decoder="raw", output=name),),
        )
        for name in output_sizes
    }

    def add(name: str, kind: ColumnKind, dec: Decoder, task: Task | None = None) -> None:
        made = Producer(bundle=bundle, decoder=dec.kind, field=dec.field, output=dec.output)
        have = cols.get(name)
        if have is not None and have.kind == kind and have.task == task:  # p_<label> of two decoders
            cols[name] = have.model_copy(update={"producers": (*have.producers, made)})
        else:
            cols[name] = Column(name=name, kind=kind, role="decoded", task=task, producers=(made,))

    for dec in decoders:
        n = output_sizes.get(dec.output)
        if n is None:
            raise CorruptInputError(
                f"decoder {dec.field!r} reads output {dec.output!r}, which the model lacks"
            )
        task = decoder_task(dec.field, dec.kind)
        if dec.kind in ("scale", "expectation"):
            add(dec.field, "float", dec, task)
        elif dec.kind in ("softmax_argmax", "sigmoid"):
            add(dec.field, "str" if dec.kind == "softmax_argmax" else "str_list", dec, task)
            for lab in _labels_for(dec, n, labels):
                add(f"p_{column_slug(lab)}", "float", dec)
        elif dec.kind == "topk":
            add(dec.field, "topk", dec, task)
    return list(cols.values())


def decode_outputs(
    outputs: Mapping[str, np.ndarray], decoders: Sequence[Decoder], labels: Sequence[str] | None
) -> dict[str, Any]:
    """Decode a batch: ``outputs`` maps output name -> array with a leading batch axis. Returns column
    name -> one value per row: a list, or for the raw outputs a 2-D float32 array (columns, not row
    dicts: the runner's main thread builds them for every item, and per-row dicts were its largest
    serial cost)."""
    flat = {name: np.asarray(a).reshape(a.shape[0], -1) for name, a in outputs.items()}
    n = next(iter(flat.values())).shape[0] if flat else 0
    cols: dict[str, Any] = {raw_column(name): a.astype(np.float32) for name, a in flat.items()}
    for dec in decoders:
        x = flat[dec.output].astype(np.float64)
        if dec.kind == "scale":
            cols[dec.field] = (x[:, dec.index or 0] * dec.factor + dec.offset).tolist()
        elif dec.kind in ("softmax_argmax", "sigmoid"):
            labs = _labels_for(dec, x.shape[1], labels)
            if dec.kind == "softmax_argmax":
                p = _probabilities(x, dec.apply_softmax)
                cols[dec.field] = [labs[j] for j in p.argmax(axis=1).tolist()]
            else:
                p = _sigmoid(x, dec.apply_softmax)
                above = p >= (0.5 if dec.threshold is None else dec.threshold)
                cols[dec.field] = [[labs[j] for j in np.flatnonzero(row)] for row in above]
            for j, lab in enumerate(labs):
                cols[f"p_{column_slug(lab)}"] = p[:, j].tolist()
        elif dec.kind == "expectation":
            p = _probabilities(x, dec.apply_softmax)
            bins = np.asarray(
                dec.bin_values if dec.bin_values is not None else np.arange(x.shape[1]), np.float64
            )
            if bins.shape[0] != x.shape[1]:
                raise CorruptInputError(
                    f"decoder {dec.field!r}: {bins.shape[0]} bin values for {x.shape[1]} outputs"
                )
            cols[dec.field] = (p @ bins * dec.factor + dec.offset).tolist()
        elif dec.kind == "topk":
            labs = _labels_for(dec, x.shape[1], labels)
            p = _sigmoid(x, dec.apply_softmax)
            order = np.argsort(-p, axis=1, kind="stable")[:, : dec.k]
            cols[dec.field] = [
                [
                    {"label": labs[j], "score": float(p[i, j])}
                    for j in order[i]
                    if dec.threshold is None or p[i, j] >= dec.threshold
                ]
                for i in range(n)
            ]
    return cols
