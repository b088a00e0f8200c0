"""Postprocess decoders: each kind against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from replaybench.bundle import Decoder
from replaybench.errors import CorruptInputError
from replaybench.replay.decoders import decode_outputs, output_columns


def test_scale_and_softmax_argmax_on_probabilities():
    outs = {"age": np.array([[0.25], [0.5]], np.float32), "g": np.array([[0.9, 0.1], [0.3, 0.7]], np.float32)}
    decs = [
        Decoder(output="age", field="age_pred", kind="scale", factor=116.0),
        Decoder(output="g", field="gender_pred", kind="softmax_argmax", labels=["male", "female"]),
    ]
    cols = decode_outputs(outs, decs, None)
    assert cols["age_pred"] == pytest.approx([29.0, 58.0])
    assert cols["gender_pred"] == ["male", "female"]
    assert cols["p_female"][1] == pytest.approx(0.7, abs=1e-6)  # already probabilities: no softmax
    assert cols["raw__g"][0] == pytest.approx([0.9, 0.1])
    kinds = {c.name: c.kind for c in output_columns("b", decs, {"age": 1, "g": 2}, None)}
    assert set(cols) == set(kinds)  # the schema names them all
    assert kinds == {
        "raw__age": "float_list",
        "raw__g": "float_list",
        "age_pred": "float",
        "gender_pred": "str",
        "p_male": "float",
        "p_female": "float",
    }


def test_softmax_applied_to_logits_and_expectation_over_bins():
    logits = np.array([[0.0, np.log(3.0)]], np.float32)  # softmax -> 0.25, 0.75
    cols = decode_outputs(
        {"x": logits},
        [
            Decoder(output="x", field="label", kind="softmax_argmax", labels=["A b", "C-d"]),
            Decoder(output="x", field="age_pred", kind="expectation", bin_values=[10.0, 50.0]),
        ],
        None,
    )
    assert cols["label"][0] == "C-d"
    assert cols["p_a_b"][0] == pytest.approx(0.25, abs=1e-6)
    assert cols["age_pred"][0] == pytest.approx(0.25 * 10 + 0.75 * 50, abs=1e-5)


def test_sigmoid_and_topk():
    x = np.array([[0.0, 2.0, -2.0]], np.float32)
    labels = ["beach", "dog", "food"]
    cols = decode_outputs(
        {"c": x},
        [
            Decoder(output="c", field="concepts", kind="topk", k=2),
            Decoder(output="c", field="present", kind="sigmoid", threshold=0.6),
        ],
        labels,
    )
    s = 1 / (1 + np.exp(-x[0].astype(np.float64)))
    assert [c["label"] for c in cols["concepts"][0]] == ["dog", "beach"]
    assert cols["concepts"][0][0]["score"] == pytest.approx(s[1])
    assert cols["present"][0] == ["dog"]
    assert cols["p_food"][0] == pytest.approx(s[2])


def test_label_count_mismatch_and_missing_output_are_errors():
    with pytest.raises(CorruptInputError, match="3 labels"):
        decode_outputs(
            {"g": np.zeros((1, 2), np.float32)},
            [Decoder(output="g", field="f", kind="softmax_argmax", labels=["a", "b", "c"])],
            None,
        )
    with pytest.raises(CorruptInputError, match="lacks"):
        output_columns("b", [Decoder(output="nope", field="f", kind="scale")], {"g": 2}, None)
