"""The model stage: one session per bundle, batched calls, and the outputs decoded into columns.

The same ``ModelStage`` runs in the local engine's stream threads and in each of Ray's inference actors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from replaybench.bundle import LoadedBundle, PreprocessSpec
from replaybench.errors import UsageError
from replaybench.predictions import Column
from replaybench.replay.items import DatasetItem

if TYPE_CHECKING:
    from replaybench.replay.sessions import ModelSession
    from replaybench.replay.text_models import ImageTextModel


def inference_threads(threads: int | None, n_workers: int) -> tuple[int | None, int]:
    """(onnxruntime intra-op threads, concurrent streams) for the model stage.

    With decode workers on the same cores (the default), one intra-op thread per session call and one
    stream (a chunk in inference) per core: intra-op threads synchronise at every operator, and with more
    runnable threads than cores a descheduled one stalls the rest (measured on 2 loaded cores, MobileNetV2
    128: 2 intra-op threads ~1000 img/s, 1 thread ~1100, 2 one-thread streams more). An explicit
    ``--threads`` keeps one stream with that many threads; ``--workers 0`` (decode in the main process)
    keeps onnxruntime's own threading.
    """
    if threads is not None or n_workers == 0:
        return threads, 1
    return 1, os.cpu_count() or 1


class ModelStage:
    """Every bundle's model, opened in its own runtime and checked against its preprocess dtype, and the
    predictions columns they fill. ``spinning``: off when decode workers share the
    cores (idle onnxruntime threads would busy-wait on them)."""

    def __init__(
        self,
        bundles: Sequence[LoadedBundle],
        specs: Sequence[PreprocessSpec],
        groups: Sequence[int],
        *,
        providers: Sequence[str] = (),
        threads: int | None = None,
        spinning: bool = True,
        batch_size: int = 32,
        variant: str | None = None,
    ) -> None:
        from replaybench.replay.decoders import output_columns
        from replaybench.replay.runtimes import open_bundle_model
        from replaybench.replay.text_models import ImageTextModel, check_variant, is_image_text

        self.bundles, self.groups, self.batch_size = list(bundles), list(groups), batch_size
        self.sessions: list[ModelSession | ImageTextModel] = []
        self.columns: list[Column] = []  # the predictions columns the bundles fill (raw and decoded)
        for lb, g in zip(bundles, groups, strict=True):
            ms: ModelSession | ImageTextModel
            if is_image_text(lb):
                ms = ImageTextModel(
                    lb, variant=variant, providers=providers, threads=threads, spinning=spinning
                )
            else:
                check_variant(lb, variant)  # only image+text bundles hold variants
                ms = open_bundle_model(lb, providers=providers, threads=threads, spinning=spinning)
            want = np.dtype(specs[g].dtype)
            if np.dtype(ms.input_dtype) != want:
                raise UsageError(
                    f"bundle {lb.bundle.name}: preprocess makes {want} but the model takes "
                    f"{np.dtype(ms.input_dtype)}"
                )
            self.columns += output_columns(
                lb.bundle.name, lb.bundle.postprocess.decoders, ms.output_sizes, lb.labels
            )
            self.sessions.append(ms)

    def infer(self, chunk: Sequence[DatasetItem], res: dict[str, Any]) -> list[dict[str, Any] | None]:
        """Model outputs decoded per bundle for a chunk's ok items (thread-safe: the local engine runs
        several chunks at once)."""
        from replaybench.replay.decoders import decode_outputs
        from replaybench.replay.text_models import ImageTextModel

        per_bundle: list[dict[str, Any] | None] = []
        for lb, ms, g in zip(self.bundles, self.sessions, self.groups, strict=True):
            batch = res["tensors"][g]
            if batch is None:
                per_bundle.append(None)
                continue
            if isinstance(ms, ImageTextModel):  # the whole chunk: it batches images and captions itself
                captions = [it.caption for it, st in zip(chunk, res["status"], strict=True) if st == "ok"]
                merged = ms.run(batch, captions, self.batch_size)
            else:
                outs: dict[str, list[np.ndarray]] = {}
                for s in range(0, len(batch), self.batch_size):
                    for k, v in ms.run(batch[s : s + self.batch_size]).items():
                        outs.setdefault(k, []).append(v)
                merged = {k: np.concatenate(v) for k, v in outs.items()}
            per_bundle.append(decode_outputs(merged, lb.bundle.postprocess.decoders, lb.labels))
        return per_bundle
