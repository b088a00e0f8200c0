"""Models that take a caption as well as the image (the distilled student): two graphs and a tokenizer.

A student bundle (``replaybench distill export``) holds ``image.onnx`` (uint8 NCHW image -> embedding)
and ``text_head.onnx`` (input_ids, attention_mask, image embedding -> score), each optionally with an
int8 variant, plus ``tokenizer/``. Replay feeds it a chunk of images and their captions: images go
through the image graph in batches, captions are tokenised, sorted by length and cut into batches by a
token budget, padded only to the longest caption of their batch (padding everything to 128 tokens costs
~4x on real caption lengths).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from replaybench.bundle import LoadedBundle
from replaybench.errors import CorruptInputError, UsageError
from replaybench.replay.items import DatasetItem

TOKENS_PER_ROW = 8  # text batch budget: batch_size x this many padded tokens (swept 8-64: 8 best)
MAX_ROWS_FACTOR = 4  # at most this many x batch_size short captions in one text batch
IMAGE_ROLE, TEXT_ROLE = "image_encoder", "text_head"


class TextBatcher:
    """Tokenises captions with the bundle's tokenizer and yields length-sorted, dynamically padded batches."""

    def __init__(self, tokenizer_json: Path, max_length: int, pad_id: int) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(tokenizer_json))
        self.tok.enable_truncation(max_length)
        self.tok.no_padding()
        self.pad_id = pad_id

    def encode(self, captions: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(captions))]

    def batches(
        self, ids: list[list[int]], batch_size: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(positions, input_ids, attention_mask) per batch, shortest captions first.

        Batches are cut by a token budget (``batch_size`` x ``TOKENS_PER_ROW`` padded tokens), not a row
        count: real caption lengths are heavy-tailed (Instagram: median 8 tokens, a few at 128), and a
        fixed 32 rows pads the tail batch's short captions to the longest one. Short captions go in
        wider batches (up to ``MAX_ROWS_FACTOR`` x ``batch_size`` rows), long ones in narrower ones.
        """
        lengths = np.array([max(1, len(x)) for x in ids], dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        budget = batch_size * TOKENS_PER_ROW
        max_rows = batch_size * MAX_ROWS_FACTOR
        s = 0
        while s < len(order):
            e = s + 1
            # sorted ascending: the width of [s, e] is the length of its last row
            while e < len(order) and e - s < max_rows and (e + 1 - s) * lengths[order[e]] <= budget:
                e += 1
            pos = order[s:e]
            width = int(lengths[order[e - 1]])
            input_ids = np.full((len(pos), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(pos), width), dtype=np.int64)
            for r, i in enumerate(pos):
                input_ids[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = 1
            yield pos, input_ids, mask
            s = e


CAPTION_SORT_WINDOW = 2048  # items reordered together: chunks of similar caption lengths, bounded memory


def by_caption_length(items: Sequence[DatasetItem], window: int = CAPTION_SORT_WINDOW) -> list[DatasetItem]:
    """``items`` with each run of ``window`` items sorted by caption length, so that every chunk of a
    replay holds captions of similar lengths and its text batches pad little (sorting only within a
    chunk of 32 ran the text graph ~30% slower than sorting 600 captions at once, DistilBERT int8). Rows
    are written in this order; ``--resume`` goes by item id, so nothing depends on it."""
    out: list[DatasetItem] = []
    for s in range(0, len(items), window):
        out += sorted(items[s : s + window], key=lambda it: len(it.caption or ""))
    return out


def check_variant(lb: LoadedBundle, variant: str | None) -> None:
    """Refuse a ``variant`` the bundle does not hold (only image+text bundles have int8 graphs)."""
    if variant is None:
        return
    if variant != "int8":
        raise UsageError(f"unknown model variant {variant!r}; known: int8")
    if not is_image_text(lb) or any(p.file_int8 is None for p in lb.bundle.parts):
        raise UsageError(
            f"bundle {lb.bundle.name} has no {variant} variant", hint="replay it without --variant"
        )


def is_image_text(lb: LoadedBundle) -> bool:
    """Whether a bundle takes captions (it has a text preprocessing block)."""
    return lb.bundle.text is not None


class ImageTextModel:
    """The student's two graphs in onnxruntime plus its tokenizer: images + captions -> score.

    Quacks like ``sessions.ModelSession`` for the model stage (``input_dtype``, ``output_sizes``,
    ``batch_mode``, ``notes``), with ``run(images, captions, batch_size)``."""

    batch_mode = "dynamic"
    input_dtype = np.uint8

    def __init__(
        self,
        lb: LoadedBundle,
        *,
        variant: str | None = None,
        providers: Sequence[str] = (),
        threads: int | None = None,
        spinning: bool = True,
    ) -> None:
        import onnxruntime as ort

        from replaybench.replay.sessions import resolve_providers, session_options

        b, folder = lb.bundle, lb.folder
        parts = {p.role: p for p in b.parts}
        if b.text is None or IMAGE_ROLE not in parts or TEXT_ROLE not in parts:
            raise CorruptInputError(
                f"bundle {folder} takes captions but lacks its split graphs ({IMAGE_ROLE}, {TEXT_ROLE})",
                hint="make student bundles with: replaybench distill export STUDENT -o BUNDLE",
            )
        check_variant(lb, variant)
        so = session_options(threads, spinning=spinning)
        prov = resolve_providers(list(providers))
        sessions = []
        for role in (IMAGE_ROLE, TEXT_ROLE):
            name = parts[role].file_int8 if variant == "int8" else parts[role].file
            assert name is not None  # check_variant refused a variant the bundle lacks
            if Path(name).is_absolute() or ".." in Path(name).parts or not (folder / name).is_file():
                raise CorruptInputError(f"student bundle {folder} lacks {name}")
            try:
                sessions.append(ort.InferenceSession(str(folder / name), so, providers=prov))
            except Exception as e:
                raise CorruptInputError(f"onnxruntime cannot load {folder / name}: {e}") from e
        self.image, self.text = sessions
        self.image_input = parts[IMAGE_ROLE].inputs[0]
        self.image_output = parts[IMAGE_ROLE].outputs[0]
        self.output_names = list(parts[TEXT_ROLE].outputs)
        self.output_sizes = {name: 1 for name in self.output_names}
        tok = folder / b.text.tokenizer / "tokenizer.json"
        if not tok.is_file():
            raise CorruptInputError(f"student bundle {folder} lacks {tok.relative_to(folder)}")
        self.text_spec = b.text
        self.batcher = TextBatcher(tok, b.text.max_length, b.text.pad_id)
        self.notes = [f"image + caption model; {variant} graphs"] if variant else ["image + caption model"]

    def image_embeddings(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        out = [
            self.image.run([self.image_output], {self.image_input: images[s : s + batch_size]})[0]
            for s in range(0, len(images), batch_size)
        ]
        return np.concatenate(out)

    def scores(
        self, embeddings: np.ndarray, captions: Sequence[str | None], batch_size: int = 32
    ) -> dict[str, np.ndarray]:
        """The text graph's outputs for image embeddings and their captions (None: empty)."""
        ids = self.batcher.encode([c or "" for c in captions])
        outs = {name: np.zeros(len(captions), np.float32) for name in self.output_names}
        t = self.text_spec
        for pos, input_ids, mask in self.batcher.batches(ids, batch_size):
            feed = {t.input_ids: input_ids, t.attention_mask: mask, self.image_output: embeddings[pos]}
            for name, v in zip(self.output_names, self.text.run(self.output_names, feed), strict=True):
                outs[name][pos] = v.reshape(len(pos))
        return outs

    def run(
        self, images: np.ndarray, captions: Sequence[str | None], batch_size: int = 32
    ) -> dict[str, np.ndarray]:
        """Outputs (leading axis = items) for uint8 NCHW images and their captions (None: empty)."""
        return self.scores(self.image_embeddings(images, batch_size), captions, batch_size)
