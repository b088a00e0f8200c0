"""``replaybench demo``: the whole pipeline on the embedded sample, nothing downloaded.

scan the sample app -> extract with its trace (the obfuscated model recovered from memory, its
preprocessing solved from the captured bitmaps) -> convert with parity -> replay a generated labelled
face set with a planted disparity -> evaluate (the report must find it) -> distill: train a small student
on generated posts, export it, and score posts with it.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from replaybench._console import NullProgress, Progress
from replaybench.bundle import Decoder, PostprocessSpec, Provenance, load_bundle
from replaybench.errors import ReplaybenchError, UsageError

log = logging.getLogger(__name__)
SAMPLE = Path(__file__).parent / "sample"
GROUPS = ["skin_tone", "gender"]
PATTERN = "{skin_tone}/{gender}/*.jpg"
# Written first into every demo output: only a folder holding it is ever cleared by a later demo run.
MARKER = ".replaybench-demo"
# What a demo run writes at the top of its output (all of it, and only it, is replaced by a re-run).
DEMO_ENTRIES = (
    "sample",
    "inventory.json",
    "extract",
    "faces",
    "predictions",
    "report",
    "distill",
    "demo.json",
)


class DemoStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    seconds: float
    artefact: str
    detail: str


class DemoResult(BaseModel):
    """What the demo did, where each artefact is, and the disparity its evaluation found."""

    model_config = ConfigDict(extra="forbid")

    output: str
    steps: list[DemoStep] = Field(default_factory=list)
    gender_accuracy: float | None = None
    worst_group: str | None = None
    worst_group_accuracy: float | None = None
    best_group: str | None = None
    accuracy_gap: float | None = None
    disparity_found: bool = False
    seconds: float = 0.0


def _set_app_postprocess(bundle_dir: Path) -> None:
    """What the sample app's code does with the output: ``["male", "female"][argmax]``."""
    lb = load_bundle(bundle_dir)
    out = lb.bundle.io.outputs[0].name
    post = PostprocessSpec(
        task="classification",
        labels=["male", "female"],
        decoders=[Decoder(output=out, field="gender_pred", kind="softmax_argmax", labels=["male", "female"])],
        provenance=Provenance.APP_CODE,
        notes=["label order from the sample app's code: index 0 male, 1 female"],
    )
    lb.bundle.model_copy(update={"postprocess": post}).write(bundle_dir)


def prepare_demo_output(out: Path) -> None:
    """Make ``out`` ready for a demo run without ever deleting what replaybench did not write.

    A missing or empty folder is used (and marked with ``MARKER``). A folder holding the marker is a
    previous demo output: the entries a demo writes (``DEMO_ENTRIES``) are removed, anything else in it is
    left alone, and a symlink among them is unlinked, never followed. Any other existing path (a
    non-empty folder without the marker, a file) raises ``UsageError``.
    """
    if (out.exists() and not out.is_dir()) or (out.is_symlink() and not out.exists()):
        raise UsageError(
            f"the demo output {out} exists and is not a folder",
            hint="name a new or empty folder with -o",
        )
    if out.is_dir() and any(out.iterdir()):
        marker = out / MARKER
        if marker.is_symlink() or not marker.is_file():
            raise UsageError(
                f"refusing to write the demo into {out}: it is not empty and is not a previous demo output "
                f"(no {MARKER} file); nothing was changed",
                hint="name a new or empty folder with -o",
            )
        for name in DEMO_ENTRIES:
            entry = out / name
            if entry.is_symlink() or entry.is_file():
                entry.unlink()
            elif entry.is_dir():
                shutil.rmtree(entry)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(
        "written by 'replaybench demo': a later demo run may replace this folder's demo artefacts\n",
        encoding="utf-8",
    )


def run_demo(out: Path, *, faces: int = 600, posts: int = 48, progress: Progress | None = None) -> DemoResult:
    """Run every stage on the sample; write all artefacts under ``out`` and return where they are.

    ``out`` must be missing, empty, or a previous demo output (see ``prepare_demo_output``); anything
    else raises ``UsageError`` before a file is touched.
    """
    from replaybench.demo.synthetic import write_face_dataset
    from replaybench.evaluate.evaluation import evaluate_predictions
    from replaybench.extract.pipeline import extract_app
    from replaybench.extract.scan import scan_app
    from replaybench.replay.runner import ReplayOptions, replay

    progress = progress or NullProgress()
    out = Path(out)
    prepare_demo_output(out)
    result = DemoResult(output=str(out))
    t_start = time.perf_counter()

    def step(name: str, t0: float, artefact: Path, detail: str) -> None:
        result.steps.append(
            DemoStep(
                name=name, seconds=round(time.perf_counter() - t0, 2), artefact=str(artefact), detail=detail
            )
        )
        log.info("%s: %s (%s)", name, detail, artefact)

    t = time.perf_counter()
    apk = out / "sample" / "sample.apk"
    shutil.copytree(SAMPLE, out / "sample")
    inv = scan_app([apk])
    (out / "inventory.json").write_text(inv.model_dump_json(indent=2) + "\n", encoding="utf-8")
    encrypted = sum(b.encrypted for b in inv.model_blobs)
    step(
        "scan",
        t,
        out / "inventory.json",
        f"{len(inv.model_blobs)} model blobs ({encrypted} likely encrypted), runtimes: {', '.join(inv.runtimes) or 'none'}",
    )

    t = time.perf_counter()
    extracted = extract_app([apk], out / "extract", trace=out / "sample" / "trace", progress=progress)
    ran = [m for m in extracted.models if m.ran_in_trace and m.bundle]
    if not ran:
        raise ReplaybenchError("the demo's trace matched no convertible model (the sample is damaged)")
    model = ran[0]
    bundle_dir = out / "extract" / str(model.bundle)
    _set_app_postprocess(bundle_dir)
    step(
        "extract",
        t,
        out / "extract" / "extract.json",
        f"{len(extracted.models)} models; the app ran {model.file} ({model.location}); preprocessing from {model.preprocess_from}; parity max abs diff {model.parity_max_abs_diff:.2g}",
    )

    t = time.perf_counter()
    dataset = write_face_dataset(out / "faces", faces)
    preds = out / "predictions"
    run = replay(
        [bundle_dir], dataset, preds, ReplayOptions(format="folders", pattern=PATTERN), progress=progress
    )
    step(
        "replay",
        t,
        preds,
        f"{run.items_ok} faces ok, {run.items_error} errors, {run.items_per_second:.0f} items/s overall "
        f"({run.steady_items_per_second:.0f} after {run.setup_seconds:.1f} s set-up)",
    )

    t = time.perf_counter()
    summary = evaluate_predictions(
        preds, out / "report", by=GROUPS, task="gender", n_boot=300, min_group_size=20
    )
    _read_disparity(summary, result)
    step(
        "evaluate",
        t,
        out / "report" / "index.html",
        f"gender accuracy {result.gender_accuracy:.3f}; worst group {result.worst_group} ({result.worst_group_accuracy:.3f}) vs best {result.best_group}: gap {result.accuracy_gap:.3f}",
    )

    t = time.perf_counter()
    detail, artefact = _distill(out, posts, progress)
    step("distill", t, artefact, detail)
    result.seconds = round(time.perf_counter() - t_start, 1)
    (out / "demo.json").write_text(result.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return result


def _read_disparity(summary: object, result: DemoResult) -> None:
    from replaybench.evaluate.summary import EvaluationSummary

    assert isinstance(summary, EvaluationSummary)
    task = next(t for t in summary.tasks if t.task == "gender")
    acc = next(m for m in task.headline if m.name == "accuracy")
    result.gender_accuracy = acc.value
    gaps = [
        d
        for d in task.disparities
        if d.metric == "accuracy" and "&" in d.grouping or d.grouping == " x ".join(GROUPS)
    ]
    gaps = gaps or [d for d in task.disparities if d.metric == "accuracy"]
    worst = max(gaps, key=lambda d: d.difference or 0.0)
    result.worst_group, result.worst_group_accuracy = worst.worst_group, worst.worst_value
    result.best_group, result.accuracy_gap = worst.best_group, worst.difference
    lo = worst.difference_ci[0]
    result.disparity_found = bool(worst.difference and worst.difference > 0.1 and (lo is None or lo > 0))


def _distill(out: Path, posts: int, progress: Progress) -> tuple[str, Path]:
    """Teacher labels -> student -> bundle -> scores, on generated posts.

    No VLM teacher runs offline, so the demo imports stand-in teacher labels (what a teacher would say of
    each generated caption's theme); ``distill label --endpoint`` is how real labels are made. The
    student is random-init (no pretrained weights ship with replaybench) with the tiny text config.
    """
    import json

    from replaybench.demo.synthetic import teacher_labels, write_posts
    from replaybench.distill.export import export_student
    from replaybench.distill.label import import_labels
    from replaybench.distill.metrics import score_summary
    from replaybench.distill.train import train_student
    from replaybench.replay.runner import ReplayOptions, replay

    folder = out / "distill"
    post_dir = write_posts(folder / "posts", posts)
    raw = folder / "teacher.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in teacher_labels(post_dir)), encoding="utf-8")
    labels = folder / "labels.parquet"
    import_labels(raw, labels, model="demo-teacher")
    trained = train_student(
        post_dir, labels, folder / "student", random_init=True, epochs=60, patience=15, progress=progress
    )
    export_student(folder / "student", folder / "student-bundle", progress=progress)
    # the student is replayed like any bundle: predictions with a score column and the posts' labels
    replay(
        [folder / "student-bundle"],
        post_dir,
        folder / "scores",
        ReplayOptions(format="posts", variant="int8", workers=1),
        progress,
    )
    summary = score_summary(folder / "scores")
    shares = ", ".join(f"{b}: {v['count']}" for b, v in summary["buckets"].items())
    test = trained.test
    return (
        f"student test MAE {test.get('mae', float('nan')):.2f} on {trained.test_posts} held-out posts "
        f"(mean baseline {trained.baseline_test_mae:.2f}); "
        f"{summary['ok']} posts scored int8 [{shares}]",
        folder / "scores",
    )
