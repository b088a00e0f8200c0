"""evaluate's report says what each replayed bundle's parity was measured against (replay -> run.json)."""

from __future__ import annotations

import json

from replaybench.bundle import OutputParity, ParityReport, load_bundle
from replaybench.evaluate.evaluation import evaluate_predictions
from replaybench.replay.runner import ReplayOptions, replay
from tests.replay.helpers import tiny_bundle, utk_images


def _with_parity(folder, parity: ParityReport) -> None:
    b = load_bundle(folder).bundle.model_copy(update={"parity": parity})
    b.write(folder)


def test_report_shows_parity_reference_per_bundle(tmp_path):
    out = OutputParity(
        name="probs",
        shape_match=True,
        dtype_match=True,
        max_abs_diff=0.0,
        max_rel_diff=0.0,
        tolerance=1e-4,
        passed=True,
    )
    orig = tiny_bundle(tmp_path / "orig", name="orig")
    _with_parity(
        orig,
        ParityReport(
            reference_runtime="ai-edge-litert 2.3.0",
            reference="original",
            inputs_tried=3,
            outputs=[out],
            passed=True,
        ),
    )
    rewr = tiny_bundle(tmp_path / "rewr", name="rewr")
    reason = "ai-edge-litert 2.3.0 cannot run the original model (custom op X); parity is measured against the model after: rewrote X"
    _with_parity(
        rewr,
        ParityReport(
            reference_runtime="ai-edge-litert 2.3.0",
            reference="rewritten",
            reference_reason=reason,
            inputs_tried=3,
            outputs=[out],
            passed=True,
        ),
    )
    ds = tmp_path / "ds"
    utk_images(ds, 24)
    replay([orig, rewr], ds, tmp_path / "p", ReplayOptions(workers=0, batch_size=8))
    run = json.loads((tmp_path / "p" / "run.json").read_text())
    assert run["bundle_parity"]["rewr"]["reference"] == "rewritten"

    s = evaluate_predictions(tmp_path / "p", tmp_path / "r", task="gender", by=["gender"], n_boot=20, seed=0)
    assert s.bundle_parity["orig"].reference == "original" and s.bundle_parity["orig"].passed is True
    assert (
        s.bundle_parity["rewr"].reference == "rewritten"
        and s.bundle_parity["rewr"].reference_reason == reason
    )
    assert any("bundle rewr: parity was measured against a rewritten model" in w for w in s.warnings)
    assert not any("bundle orig" in w for w in s.warnings)
    html = (tmp_path / "r" / "index.html").read_text()
    assert "Bundles: parity with the app" in html and "rewritten" in html and "custom op X" in html
    doc = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert doc["bundle_parity"]["rewr"]["reference"] == "rewritten"
