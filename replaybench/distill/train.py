"""Training the student on teacher labels.

Fast path (the default): the encoders are frozen, each post is encoded once (image embedding = mean over a
carousel's images, text embedding of the caption) and the embeddings are cached on disk keyed by the post's
content and the encoders, then only the MLP head is trained: seconds to minutes on a CPU. With
``finetune_last_blocks=N`` the last N ResNet stages and the last N transformer blocks are trained too (every
epoch then runs the encoders). Early stopping on validation MAE keeps the best epoch; the figures reported
as the student's are measured on a separate held-out test split that neither training nor early stopping
sees.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from replaybench._console import NullProgress, Progress
from replaybench.distill.student import TextArch
from replaybench.errors import CorruptInputError, DatasetError, InputNotFoundError, UsageError
from replaybench.replay.items import DatasetItem

REPORT_JSON = "training_report.json"
CURVE_PNG = "learning_curve.png"
CALIBRATION_NPZ = "calibration.npz"
SPLIT_JSON = "split.json"
CALIBRATION_SIZE = 32  # training posts export calibrates int8 on
HOLDOUT_SIZE = 32  # held-out posts (test, then validation) export measures int8 against fp32 on
FEW_TEST_POSTS = 30  # fewer test posts than this: the report says its figures are rough


class TrainResult(BaseModel):
    """The training report (also written as training_report.json).

    ``test`` is the headline: agreement with the teacher on posts that neither training nor early stopping
    saw. ``validation`` picked the best epoch, so its error is optimistic; it is kept, labelled as such.
    """

    model_config = ConfigDict(extra="forbid")

    output: str
    posts_labelled: int
    posts_used: int
    skipped: dict[str, str]  # post id -> why it could not be used (no decodable image)
    split: str  # how the posts were split: seeded (seed, fractions) or the split file
    train_posts: int
    val_posts: int
    test_posts: int
    epochs_run: int
    best_epoch: int
    test: dict[str, Any]  # the headline: held-out test posts
    baseline_test_mae: float  # predicting the training-set mean, on the test posts
    validation: dict[str, Any]  # the early-stopping posts (optimistic: they chose the epoch)
    baseline_val_mae: float
    train: dict[str, Any]
    curve: list[dict[str, float]]
    embedding_cache: str | None
    embeddings_computed: int
    embeddings_cached: int
    finetune_last_blocks: int
    warnings: list[str]
    seconds: float


MIN_TRAIN_POSTS = 3
MIN_POSTS = MIN_TRAIN_POSTS + 2  # three to train on, one to stop early on, one held out for the test


class Split(BaseModel):
    """Which posts train the student, which stop its training early, and which measure it."""

    model_config = ConfigDict(extra="forbid")

    train: list[str]
    val: list[str]  # early stopping picks the epoch on these: their error is optimistic
    test: list[str]  # never seen by training or early stopping: the reported figures
    source: str  # "seeded (seed N, val F, test F)" or the split file


def split_posts(
    post_ids: Sequence[str],
    *,
    seed: int,
    split_file: Path | None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> Split:
    """Train / validation / test post ids, whole posts each (a carousel never straddles two splits).

    From ``split_file`` (JSON ``{"train": [...], "val": [...], "test": [...]}`` or CSV ``post_id,split`` with
    split train/val/test), else a seeded random split of the sorted ids: the same ids and seed give the
    same split whatever order the dataset lists them in. Validation and test get at least one post each
    and training at least MIN_TRAIN_POSTS; fewer posts than that is a DatasetError.
    """
    ids = list(dict.fromkeys(str(i) for i in post_ids))
    if split_file is None:
        for name, frac in (("val", val_fraction), ("test", test_fraction)):
            if not 0.0 < frac < 1.0:
                raise UsageError(f"the {name} fraction must be between 0 and 1 (exclusive), not {frac}")
        if val_fraction + test_fraction >= 1.0:
            raise UsageError("the validation and test fractions leave no posts to train on")
        n = len(ids)
        n_val = max(1, int(math.floor(n * val_fraction + 0.5)))
        n_test = max(1, int(math.floor(n * test_fraction + 0.5)))
        if n - n_val - n_test < MIN_TRAIN_POSTS:
            raise DatasetError(
                f"{n} usable posts are too few to split into train, validation and test: need at least "
                f"{MIN_TRAIN_POSTS} to train on besides {n_val} validation and {n_test} test posts",
                hint="label more posts, or give --split with explicit train/val/test lists",
            )
        ordered = sorted(ids)
        order = np.random.default_rng(seed).permutation(n)
        test_set = {ordered[i] for i in order[:n_test]}
        val_set = {ordered[i] for i in order[n_test : n_test + n_val]}
        return Split(
            train=[i for i in ids if i not in test_set and i not in val_set],
            val=[i for i in ids if i in val_set],
            test=[i for i in ids if i in test_set],
            source=f"seeded (seed {seed}, validation {val_fraction:g}, test {test_fraction:g})",
        )
    named = _read_split_file(split_file)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = named[a] & named[b]
        if both:
            raise DatasetError(
                f"split {split_file} puts {len(both)} post(s) in both {a} and {b} (e.g. {sorted(both)[0]!r}): "
                "a post in two splits leaks into the held-out figures"
            )
    train = [i for i in ids if i in named["train"]]
    val = [i for i in ids if i in named["val"]]
    test = [i for i in ids if i in named["test"]]
    if len(train) < MIN_TRAIN_POSTS or not val or not test:
        raise DatasetError(
            f"split {split_file} leaves {len(train)} train, {len(val)} validation and {len(test)} test posts "
            f"among the usable labelled ones; need at least {MIN_TRAIN_POSTS} train and one of each other",
            hint='name held-out posts under "test" (JSON) or with split=test (CSV)',
        )
    return Split(train=train, val=val, test=test, source=str(split_file))


def _read_split_file(split_file: Path) -> dict[str, set[str]]:
    if not split_file.is_file():
        raise InputNotFoundError(f"split file not found: {split_file}")
    if split_file.suffix.lower() == ".json":
        try:
            doc = json.loads(split_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptInputError(f"split file {split_file} is not JSON: {e}") from e
        if not isinstance(doc, dict):
            raise CorruptInputError(
                f"split file {split_file} must be a JSON object with train/val/test lists"
            )

        def ids(*keys: str) -> set[str]:
            for k in keys:
                if k in doc:
                    if not isinstance(doc[k], list):
                        raise CorruptInputError(f"split file {split_file}: {k!r} must be a list of post ids")
                    return {str(x) for x in doc[k]}
            return set()

        return {"train": ids("train"), "val": ids("val", "validation"), "test": ids("test")}
    from replaybench.distill.label import read_label_table

    rows = read_label_table(split_file)
    if rows and not {"post_id", "split"} <= set(rows[0]):
        raise CorruptInputError(f"split table {split_file} needs the columns post_id and split")
    by: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    for r in rows:
        s = str(r.get("split")).strip().lower()
        s = "val" if s == "validation" else s
        if s in by:
            by[s].add(str(r["post_id"]))
    return by


def _post_key(items: Sequence[DatasetItem]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.post_id}|{it.item_id}|{it.caption}|".encode())
        if it.path is not None and it.path.is_file():
            st = it.path.stat()
            h.update(f"{it.path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


class EmbeddingCache:
    """Post embeddings on disk: one .npz per encoder key, entries keyed by the post's content hash."""

    def __init__(self, folder: Path, encoder_key: str) -> None:
        self.path = folder / f"embeddings-{encoder_key}.npz"
        self.entries: dict[str, np.ndarray] = {}
        if self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    self.entries = {k: z[k] for k in z.files}
            except Exception:  # a torn cache file is only a cache: rebuild it
                self.entries = {}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, **self.entries)  # type: ignore[arg-type]
        tmp.replace(self.path)


def tokenize(tokenizer: Any, captions: Sequence[str | None], max_length: int) -> tuple[Any, Any]:
    """Padded (input_ids, attention_mask) int64 torch tensors; an empty caption is fine."""
    enc = tokenizer(
        [c or "" for c in captions],
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return enc["input_ids"].long(), enc["attention_mask"].long()


def encode_posts(
    student: Any,
    tokenizer: Any,
    posts: dict[str, list[DatasetItem]],
    *,
    max_length: int,
    cache: EmbeddingCache | None,
    progress: Progress,
    chunk: int = 128,
) -> tuple[dict[str, np.ndarray], dict[str, str], int, int]:
    """Frozen-encoder embeddings [image 512 | text] per post; (embeddings, skipped, computed, cached).

    Posts are encoded in chunks (images batched across posts, a carousel's embedding is the mean of its
    images), so memory stays bounded on large datasets.
    """
    import torch

    from replaybench.distill.images import try_decode

    out: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    todo: list[tuple[str, str]] = []  # (post id, content key) not in the cache
    n_cached = 0
    for pid, items in posts.items():
        key = _post_key(items)
        if cache is not None and key in cache.entries:
            out[pid] = cache.entries[key]
            n_cached += 1
        else:
            todo.append((pid, key))
    progress.start(len(todo), "encoding posts")
    with torch.no_grad():
        for s in range(0, len(todo), chunk):
            arrays: list[np.ndarray] = []
            owner: list[int] = []
            kept: list[tuple[str, str]] = []
            for pid, key in todo[s : s + chunk]:
                reasons, mine = [], []
                for it in posts[pid]:
                    arr, why = try_decode(it.path)
                    if arr is None:
                        reasons.append(why or "unreadable")
                    else:
                        mine.append(arr)
                if not mine:
                    skipped[pid] = "; ".join(reasons)
                    continue
                arrays += mine
                owner += [len(kept)] * len(mine)
                kept.append((pid, key))
            if kept:
                batch = torch.from_numpy(np.stack(arrays))
                img = torch.cat([student.image(batch[i : i + 32]) for i in range(0, len(batch), 32)]).numpy()
                idx = np.asarray(owner)
                img_emb = np.stack([img[idx == k].mean(0) for k in range(len(kept))])
                ids, mask = tokenize(tokenizer, [posts[pid][0].caption for pid, _ in kept], max_length)
                txt = torch.cat(
                    [student.text(ids[i : i + 32], mask[i : i + 32]) for i in range(0, len(kept), 32)]
                ).numpy()
                for k, (pid, key) in enumerate(kept):
                    vec = np.concatenate([img_emb[k], txt[k]]).astype(np.float32)
                    out[pid] = vec
                    if cache is not None:
                        cache.entries[key] = vec
            progress.advance(len(todo[s : s + chunk]))
    progress.close()
    computed = len(out) - n_cached
    if cache is not None and computed:
        cache.save()
    return out, skipped, computed, n_cached


def _prepare_text_encoder(
    text_encoder: str | None, random_init: bool, text_arch: TextArch, captions: list[str], workdir: Path
) -> tuple[Any, Any, str]:
    from replaybench.distill.student import build_wordpiece_tokenizer, load_text_encoder, random_text_config

    if text_encoder is not None:
        model, tok = load_text_encoder(text_encoder)
        return model, tok, text_encoder
    if not random_init:
        raise UsageError(
            "give --text-encoder (a local Hugging Face model folder or cached name) or --random-init"
        )
    from transformers import AutoModel

    # No pretrained weights offline: a WordPiece vocabulary learned from the captions themselves.
    vocab = 30522 if text_arch != "tiny" else 1000
    tok = build_wordpiece_tokenizer(captions, workdir / "tokenizer-build", vocab_size=vocab)
    model = AutoModel.from_config(random_text_config(text_arch, len(tok)), attn_implementation="eager")
    return model, tok, f"random-init:{text_arch}"


def train_student(
    posts_path: Path,
    labels_path: Path,
    output: Path,
    *,
    image_weights: Path | None = None,
    text_encoder: str | None = None,
    random_init: bool = False,
    text_arch: TextArch = "tiny",
    text_pooling: str = "mean",
    epochs: int = 200,
    patience: int = 20,
    seed: int = 0,
    split: Path | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    finetune_last_blocks: int = 0,
    batch_size: int = 64,
    lr: float = 1e-3,
    head_hidden: int = 256,
    max_length: int = 128,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train the student on (posts, teacher labels) and write the student folder ``output``.

    The labelled posts are split (by post id) into train, validation (early stopping) and test (the
    reported figures); ``split.json`` in ``output`` names them. Example: ``train_student(Path("posts"),
    Path("labels.parquet"), Path("student"), image_weights=Path("resnet18.pth"),
    text_encoder="distilbert-base-uncased")``.
    """
    import time

    import torch

    from replaybench.distill.label import group_posts, read_labels
    from replaybench.distill.student import (
        StudentConfig,
        build_student,
        check_finetune,
        encoder_key,
        save_student,
        text_hidden_size,
    )
    from replaybench.replay.posts import read_posts

    t0 = time.perf_counter()
    check_finetune(finetune_last_blocks)
    progress = progress or NullProgress()
    labels = read_labels(labels_path)
    posts = {pid: its for pid, its in group_posts(read_posts(posts_path)).items() if pid in labels}
    if len(posts) < MIN_POSTS:
        raise DatasetError(
            f"only {len(posts)} posts of {posts_path} have a teacher label in {labels_path}; need at least "
            f"{MIN_POSTS} ({MIN_TRAIN_POSTS} to train on, one for validation, one held out for the test)",
            hint="check that the post ids of the labels match the dataset's",
        )
    # Split before anything is learned from the posts (the random-init tokenizer's vocabulary included),
    # so that nothing of the validation and test posts reaches training.
    parts = split_posts(
        list(posts), seed=seed, split_file=split, val_fraction=val_fraction, test_fraction=test_fraction
    )
    warnings: list[str] = []
    unassigned = len(posts) - len(parts.train) - len(parts.val) - len(parts.test)
    if unassigned:
        warnings.append(f"{unassigned} labelled posts are in no split of {split}: not used")
    posts = {pid: posts[pid] for pid in parts.train + parts.val + parts.test}
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    text_model, tokenizer, text_name = _prepare_text_encoder(
        text_encoder, random_init, text_arch, [posts[pid][0].caption or "" for pid in parts.train], output
    )
    config = StudentConfig(
        image_weights=str(image_weights) if image_weights else None,
        text_encoder=text_name,
        text_hidden=text_hidden_size(text_model),
        text_pooling="cls" if text_pooling == "cls" else "mean",
        head_hidden=head_hidden,
        max_length=max_length,
        random_init=random_init,
        seed=seed,
    )
    student = build_student(config, image_weights=image_weights, text_model=text_model)
    student.eval()
    for p in student.parameters():
        p.requires_grad_(False)

    cache = None
    cache_path: str | None = None
    if finetune_last_blocks == 0:
        cache = EmbeddingCache(
            cache_dir or output / "embedding-cache", encoder_key(config, image_weights, text_model)
        )
        cache_path = str(cache.path)
    embeddings, skipped, computed, cached = encode_posts(
        student, tokenizer, posts, max_length=max_length, cache=cache, progress=progress
    )
    train_ids, val_ids, test_ids = (
        [i for i in ids if i in embeddings] for ids in (parts.train, parts.val, parts.test)
    )
    if len(train_ids) < MIN_TRAIN_POSTS or not val_ids or not test_ids:
        raise DatasetError(
            f"{len(skipped)} posts have no readable image; the rest leave {len(train_ids)} train, "
            f"{len(val_ids)} validation and {len(test_ids)} test posts: need at least {MIN_TRAIN_POSTS} "
            "train and one of each other"
        )
    if len(test_ids) < FEW_TEST_POSTS:
        warnings.append(f"the test figures rest on only {len(test_ids)} posts: treat them as rough")
    y_train, y_val, y_test = (
        np.array([labels[i] for i in ids], dtype=np.float32) for ids in (train_ids, val_ids, test_ids)
    )
    baseline_val = float(np.abs(y_val - y_train.mean()).mean())
    baseline_test = float(np.abs(y_test - y_train.mean()).mean())

    if finetune_last_blocks:
        curve, best_epoch, pred_train, pred_val, pred_test = _finetune(
            student, tokenizer, posts, train_ids, val_ids, test_ids, y_train, y_val, finetune_last_blocks,
            epochs=epochs, patience=patience, batch_size=batch_size, lr=lr, seed=seed, max_length=max_length,
            progress=progress,
        )  # fmt: skip
    else:
        x_train, x_val, x_test = (
            np.stack([embeddings[i] for i in ids]) for ids in (train_ids, val_ids, test_ids)
        )
        curve, best_epoch, pred_train, pred_val, pred_test = _train_head(
            student.head, x_train, y_train, x_val, y_val, x_test,
            epochs=epochs, patience=patience, batch_size=batch_size, lr=lr, seed=seed, progress=progress,
        )  # fmt: skip

    from replaybench.distill.metrics import agreement

    result = TrainResult(
        output=str(output),
        posts_labelled=len(labels),
        posts_used=len(train_ids) + len(val_ids) + len(test_ids),
        skipped=skipped,
        split=parts.source,
        train_posts=len(train_ids),
        val_posts=len(val_ids),
        test_posts=len(test_ids),
        epochs_run=len(curve),
        best_epoch=best_epoch,
        test=agreement(y_test, pred_test),
        baseline_test_mae=baseline_test,
        validation=agreement(y_val, pred_val),
        baseline_val_mae=baseline_val,
        train=agreement(y_train, pred_train),
        curve=curve,
        embedding_cache=cache_path,
        embeddings_computed=computed,
        embeddings_cached=cached,
        finetune_last_blocks=finetune_last_blocks,
        warnings=warnings,
        seconds=time.perf_counter() - t0,
    )
    save_student(student, tokenizer, config, output, result.model_dump(exclude={"curve"}))
    (output / REPORT_JSON).write_text(result.model_dump_json(indent=2) + "\n", encoding="utf-8")
    used = Split(train=train_ids, val=val_ids, test=test_ids, source=parts.source)
    (output / SPLIT_JSON).write_text(used.model_dump_json(indent=2) + "\n", encoding="utf-8")
    _plot_curve(curve, baseline_val, output / CURVE_PNG)
    _save_calibration(posts, train_ids, test_ids, val_ids, output / CALIBRATION_NPZ)
    return result


def _train_head(
    head: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_test: np.ndarray,
    *,
    epochs: int,
    patience: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: Progress,
) -> tuple[list[dict[str, float]], int, np.ndarray, np.ndarray, np.ndarray]:
    """Train the head on frozen embeddings; early stopping on the validation posts only.

    Returns (curve, best epoch, train, validation and test predictions of the best epoch)."""
    import copy

    import torch

    for p in head.parameters():
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    xv = torch.from_numpy(x_val)
    # Standardise the frozen features (stats from the training split, folded into the first layer at
    # the end) so one learning rate suits any encoder's embedding scale.
    mu, sd = xt.mean(0), xt.std(0).clamp(min=1e-6)
    n_img = 512
    first = head.net[0]
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = torch.nn.SmoothL1Loss()
    best = (math.inf, 0, copy.deepcopy(head.state_dict()))
    curve: list[dict[str, float]] = []
    progress.start(epochs, "training head")

    def run(x: torch.Tensor) -> torch.Tensor:
        z = (x - mu) / sd
        return head(z[:, :n_img], z[:, n_img:])

    for epoch in range(1, epochs + 1):
        head.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for s in range(0, len(xt), batch_size):
            idx = perm[s : s + batch_size]
            opt.zero_grad()
            loss = loss_fn(run(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        head.eval()
        with torch.no_grad():
            train_mae = float((run(xt) - yt).abs().mean())
            val_mae = float(np.abs(run(xv).numpy() - y_val).mean())
        curve.append({"epoch": epoch, "train_mae": train_mae, "val_mae": val_mae, "loss": total / len(xt)})
        progress.advance()
        if val_mae < best[0] - 1e-6:
            best = (val_mae, epoch, copy.deepcopy(head.state_dict()))
        elif epoch - best[1] >= patience:
            break
    progress.close()
    head.load_state_dict(best[2])
    head.eval()
    with torch.no_grad():
        pred_train, pred_val = run(xt).numpy(), run(xv).numpy()
        pred_test = run(torch.from_numpy(x_test)).numpy()
        # Fold the standardisation into the first linear layer: W' = W/sd, b' = b - W'@mu.
        w = first.weight / sd
        first.bias.copy_(first.bias - w @ mu)
        first.weight.copy_(w)
    for p in head.parameters():
        p.requires_grad_(False)
    return curve, best[1], pred_train, pred_val, pred_test


def _finetune(
    student: Any,
    tokenizer: Any,
    posts: dict[str, list[DatasetItem]],
    train_ids: list[str],
    val_ids: list[str],
    test_ids: list[str],
    y_train: np.ndarray,
    y_val: np.ndarray,
    n_blocks: int,
    *,
    epochs: int,
    patience: int,
    batch_size: int,
    lr: float,
    seed: int,
    max_length: int,
    progress: Progress,
) -> tuple[list[dict[str, float]], int, np.ndarray, np.ndarray, np.ndarray]:
    """Train the head and the last ``n_blocks`` ResNet stages / transformer blocks end to end.

    The frozen rest stays in eval mode throughout: BatchNorm in training mode would update its running
    statistics from these batches even though no gradient reaches it (and dropout would add noise)."""
    import copy

    import torch

    from replaybench.distill.images import try_decode

    def first_image(pid: str) -> np.ndarray:
        for it in posts[pid]:
            arr, _ = try_decode(it.path)
            if arr is not None:
                return arr
        raise CorruptInputError(f"post {pid} lost its image during training")

    imgs = {pid: torch.from_numpy(first_image(pid)) for pid in train_ids + val_ids + test_ids}
    layers = _transformer_layers(student.text.model)
    unfrozen = [getattr(student.image.resnet, s) for s in ("layer4", "layer3", "layer2", "layer1")[:n_blocks]]
    unfrozen += layers[len(layers) - n_blocks :]
    trainable = list(student.head.parameters())
    for block in unfrozen:
        trainable += list(block.parameters())
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(
        [
            {"params": list(student.head.parameters()), "lr": lr},
            {"params": trainable[len(list(student.head.parameters())) :], "lr": lr * 0.1},
        ],
        weight_decay=1e-4,
    )
    loss_fn = torch.nn.SmoothL1Loss()
    gen = torch.Generator().manual_seed(seed)

    def predict(ids: list[str]) -> np.ndarray:
        student.eval()
        outs = []
        with torch.no_grad():
            for s in range(0, len(ids), batch_size):
                chunk = ids[s : s + batch_size]
                tid, mask = tokenize(tokenizer, [posts[i][0].caption for i in chunk], max_length)
                outs.append(student(torch.stack([imgs[i] for i in chunk]), tid, mask).numpy())
        return np.concatenate(outs)

    best = (math.inf, 0, copy.deepcopy(student.state_dict()))
    curve: list[dict[str, float]] = []
    yt = torch.from_numpy(y_train)
    progress.start(epochs, "fine-tuning")
    for epoch in range(1, epochs + 1):
        _train_mode(student, unfrozen)
        perm = torch.randperm(len(train_ids), generator=gen).tolist()
        total = 0.0
        for s in range(0, len(perm), batch_size):
            idx = perm[s : s + batch_size]
            chunk = [train_ids[i] for i in idx]
            tid, mask = tokenize(tokenizer, [posts[i][0].caption for i in chunk], max_length)
            opt.zero_grad()
            loss = loss_fn(student(torch.stack([imgs[i] for i in chunk]), tid, mask), yt[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        p_train, p_val = predict(train_ids), predict(val_ids)
        val_mae = float(np.abs(p_val - y_val).mean())
        curve.append(
            {
                "epoch": epoch,
                "train_mae": float(np.abs(p_train - y_train).mean()),
                "val_mae": val_mae,
                "loss": total / len(train_ids),
            }
        )
        progress.advance()
        if val_mae < best[0] - 1e-6:
            best = (val_mae, epoch, copy.deepcopy(student.state_dict()))
        elif epoch - best[1] >= patience:
            break
    progress.close()
    student.load_state_dict(best[2])
    student.eval()
    for p in student.parameters():
        p.requires_grad_(False)
    return curve, best[1], predict(train_ids), predict(val_ids), predict(test_ids)


def _train_mode(student: Any, unfrozen: list[Any]) -> None:
    """Training mode for the head and the unfrozen blocks only; every frozen module stays in eval mode."""
    student.eval()
    student.head.train()
    for block in unfrozen:
        block.train()


def _transformer_layers(model: Any) -> list[Any]:
    for path in ("transformer.layer", "encoder.layer", "layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return list(obj)
        except AttributeError:
            continue
    return []


def _plot_curve(curve: list[dict[str, float]], baseline: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ep = [c["epoch"] for c in curve]
    ax.plot(ep, [c["train_mae"] for c in curve], label="train MAE")
    ax.plot(ep, [c["val_mae"] for c in curve], label="validation MAE (early stopping)")
    ax.axhline(baseline, color="grey", linestyle="--", label="predict-the-mean (val)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MAE (score points)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _save_calibration(
    posts: dict[str, list[DatasetItem]],
    train_ids: list[str],
    test_ids: list[str],
    val_ids: list[str],
    path: Path,
) -> None:
    """Decoded images + captions kept with the student for export: int8 is calibrated on training posts
    (``images``) and measured against fp32 on held-out ones (``eval_images``: test, then validation posts),
    so the reported int8 error is not measured on the posts that set the quantisation ranges."""
    from replaybench.distill.images import try_decode

    def pick(ids: list[str], limit: int) -> tuple[list[np.ndarray], list[str], list[str]]:
        images: list[np.ndarray] = []
        captions: list[str] = []
        kept: list[str] = []
        for pid in ids:
            if len(images) >= limit:
                break
            arr, _ = try_decode(posts[pid][0].path)
            if arr is not None:
                images.append(arr)
                captions.append(posts[pid][0].caption or "")
                kept.append(pid)
        return images, captions, kept

    images, captions, ids = pick(train_ids, CALIBRATION_SIZE)
    eval_images, eval_captions, eval_ids = pick(test_ids + val_ids, HOLDOUT_SIZE)
    test_set = set(test_ids)
    empty = np.zeros((0, 3, 224, 224), np.uint8)
    np.savez_compressed(
        path,
        images=np.stack(images) if images else empty,
        captions=np.array(captions, dtype=np.str_),
        post_ids=np.array(ids, dtype=np.str_),
        eval_images=np.stack(eval_images) if eval_images else empty,
        eval_captions=np.array(eval_captions, dtype=np.str_),
        eval_post_ids=np.array(eval_ids, dtype=np.str_),
        eval_splits=np.array(["test" if i in test_set else "val" for i in eval_ids], dtype=np.str_),
    )
