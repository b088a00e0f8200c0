"""Training the student on teacher labels.

Fast path (the default): the encoders are frozen, each post is encoded once (image embedding = mean over a
carousel's images, text embedding of the caption) and the embeddings are cached on disk keyed by the post's
content and the encoders, then only the MLP head is trained: seconds to minutes on a CPU. With
``finetune_last_blocks=N`` the last N ResNet stages and the last N transformer blocks are trained too (every
epoch then runs the encoders). Early stopping on validation MAE keeps the best epoch.
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
CALIBRATION_SIZE = 32


class TrainResult(BaseModel):
    """The training report (also written as training_report.json)."""

    model_config = ConfigDict(extra="forbid")

    output: str
    posts_labelled: int
    posts_used: int
    skipped: dict[str, str]  # post id -> why it could not be used (no decodable image)
    train_posts: int
    val_posts: int
    epochs_run: int
    best_epoch: int
    baseline_val_mae: float  # predicting the training-set mean
    validation: dict[str, Any]
    train: dict[str, Any]
    curve: list[dict[str, float]]
    embedding_cache: str | None
    embeddings_computed: int
    embeddings_cached: int
    finetune_last_blocks: int
    seconds: float


def split_posts(
    post_ids: Sequence[str], *, seed: int, split_file: Path | None, val_fraction: float = 0.2
) -> tuple[list[str], list[str]]:
    """(train ids, val ids): from ``split_file`` (JSON {"train": [...], "val": [...]} or CSV post_id,split)
    or a seeded random 80/20 split."""
    ids = list(post_ids)
    if split_file is None:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(ids))
        n_val = max(1, int(round(len(ids) * val_fraction)))
        val_ids = {ids[i] for i in order[:n_val]}
        return [i for i in ids if i not in val_ids], [i for i in ids if i in val_ids]
    if not split_file.is_file():
        raise InputNotFoundError(f"split file not found: {split_file}")
    if split_file.suffix.lower() == ".json":
        doc = json.loads(split_file.read_text(encoding="utf-8"))
        train_set = {str(x) for x in doc.get("train", [])}
        val_set = {str(x) for x in doc.get("val", doc.get("validation", []))}
    else:
        from replaybench.distill.label import read_label_table

        rows = read_label_table(split_file)
        train_set = {str(r["post_id"]) for r in rows if str(r.get("split")) == "train"}
        val_set = {str(r["post_id"]) for r in rows if str(r.get("split")) in ("val", "validation")}
    train = [i for i in ids if i in train_set]
    val = [i for i in ids if i in val_set]
    if not train or not val:
        raise DatasetError(
            f"split {split_file} leaves {len(train)} train and {len(val)} validation posts among the labelled "
            "ones; both must be non-empty"
        )
    return train, val


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
    finetune_last_blocks: int = 0,
    batch_size: int = 64,
    lr: float = 1e-3,
    head_hidden: int = 256,
    max_length: int = 128,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train the student on (posts, teacher labels) and write the student folder ``output``.

    Example: ``train_student(Path("posts"), Path("labels.parquet"), Path("student"),
    image_weights=Path("resnet18.pth"), text_encoder="distilbert-base-uncased")``.
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
    if len(posts) < 5:
        raise DatasetError(
            f"only {len(posts)} posts of {posts_path} have a teacher label in {labels_path}; need at least 5",
            hint="check that the post ids of the labels match the dataset's",
        )
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    text_model, tokenizer, text_name = _prepare_text_encoder(
        text_encoder, random_init, text_arch, [its[0].caption or "" for its in posts.values()], output
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
    usable = [pid for pid in posts if pid in embeddings]
    if len(usable) < 5:
        raise DatasetError(f"only {len(usable)} labelled posts have a readable image; need at least 5")
    train_ids, val_ids = split_posts(usable, seed=seed, split_file=split)
    y_train = np.array([labels[i] for i in train_ids], dtype=np.float32)
    y_val = np.array([labels[i] for i in val_ids], dtype=np.float32)
    baseline = float(np.abs(y_val - y_train.mean()).mean())

    if finetune_last_blocks:
        curve, best_epoch, pred_train, pred_val = _finetune(
            student, tokenizer, posts, train_ids, val_ids, y_train, y_val, finetune_last_blocks,
            epochs=epochs, patience=patience, batch_size=batch_size, lr=lr, seed=seed, max_length=max_length,
            progress=progress,
        )  # fmt: skip
    else:
        x_train = np.stack([embeddings[i] for i in train_ids])
        x_val = np.stack([embeddings[i] for i in val_ids])
        curve, best_epoch, pred_train, pred_val = _train_head(
            student.head, x_train, y_train, x_val, y_val,
            epochs=epochs, patience=patience, batch_size=batch_size, lr=lr, seed=seed, progress=progress,
        )  # fmt: skip

    from replaybench.distill.metrics import agreement

    result = TrainResult(
        output=str(output),
        posts_labelled=len(labels),
        posts_used=len(usable),
        skipped=skipped,
        train_posts=len(train_ids),
        val_posts=len(val_ids),
        epochs_run=len(curve),
        best_epoch=best_epoch,
        baseline_val_mae=baseline,
        validation=agreement(y_val, pred_val),
        train=agreement(y_train, pred_train),
        curve=curve,
        embedding_cache=cache_path,
        embeddings_computed=computed,
        embeddings_cached=cached,
        finetune_last_blocks=finetune_last_blocks,
        seconds=time.perf_counter() - t0,
    )
    save_student(student, tokenizer, config, output, result.model_dump(exclude={"curve"}))
    (output / REPORT_JSON).write_text(result.model_dump_json(indent=2) + "\n", encoding="utf-8")
    _plot_curve(curve, baseline, output / CURVE_PNG)
    _save_calibration(posts, val_ids + train_ids, output / CALIBRATION_NPZ)
    return result


def _train_head(
    head: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    epochs: int,
    patience: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: Progress,
) -> tuple[list[dict[str, float]], int, np.ndarray, np.ndarray]:
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
        # Fold the standardisation into the first linear layer: W' = W/sd, b' = b - W'@mu.
        w = first.weight / sd
        first.bias.copy_(first.bias - w @ mu)
        first.weight.copy_(w)
    for p in head.parameters():
        p.requires_grad_(False)
    return curve, best[1], pred_train, pred_val


def _finetune(
    student: Any,
    tokenizer: Any,
    posts: dict[str, list[DatasetItem]],
    train_ids: list[str],
    val_ids: list[str],
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
) -> tuple[list[dict[str, float]], int, np.ndarray, np.ndarray]:
    """Train the head and the last ``n_blocks`` ResNet stages / transformer blocks end to end."""
    import copy

    import torch

    from replaybench.distill.images import try_decode

    def first_image(pid: str) -> np.ndarray:
        for it in posts[pid]:
            arr, _ = try_decode(it.path)
            if arr is not None:
                return arr
        raise CorruptInputError(f"post {pid} lost its image during training")

    imgs = {pid: torch.from_numpy(first_image(pid)) for pid in train_ids + val_ids}
    trainable = list(student.head.parameters())
    for stage in ("layer4", "layer3", "layer2", "layer1")[:n_blocks]:
        trainable += list(getattr(student.image.resnet, stage).parameters())
    layers = _transformer_layers(student.text.model)
    for layer in layers[len(layers) - n_blocks :]:
        trainable += list(layer.parameters())
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
        student.train()
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
    return curve, best[1], predict(train_ids), predict(val_ids)


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
    ax.plot(ep, [c["val_mae"] for c in curve], label="validation MAE")
    ax.axhline(baseline, color="grey", linestyle="--", label="predict-the-mean (val)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MAE (score points)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _save_calibration(posts: dict[str, list[DatasetItem]], order: list[str], path: Path) -> None:
    """A few decoded images + captions kept with the student: export calibrates int8 on them."""
    from replaybench.distill.images import try_decode

    images, captions = [], []
    for pid in order:
        arr, _ = try_decode(posts[pid][0].path)
        if arr is not None:
            images.append(arr)
            captions.append(posts[pid][0].caption or "")
        if len(images) >= CALIBRATION_SIZE:
            break
    np.savez_compressed(path, images=np.stack(images), captions=np.array(captions, dtype=np.str_))
