"""The bundle contract: spec files, decoder binding."""

from __future__ import annotations

import json

import pytest

from replaybench.bundle import Decoder, PostprocessSpec, PreprocessSpec, ResizeSpec, read_spec
from replaybench.errors import InputNotFoundError, UsageError
from replaybench.extract.convert.writer import _bind_decoders

POST = PostprocessSpec(task="classification", decoders=[Decoder(field="gender_pred", kind="softmax_argmax")])


def test_read_spec_from_its_own_file_and_from_a_bundle(tmp_path):
    pre = PreprocessSpec(resize=ResizeSpec(width=8, height=8, method="area"))
    (tmp_path / "pre.json").write_text(pre.model_dump_json())
    assert read_spec(tmp_path / "pre.json", PreprocessSpec) == pre
    bundle = {
        "schema_version": 1,
        "io": {},
        "preprocess": pre.model_dump(mode="json"),
        "postprocess": POST.model_dump(mode="json"),
    }
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    assert read_spec(tmp_path, PreprocessSpec) == pre  # a bundle folder
    assert read_spec(tmp_path / "bundle.json", PostprocessSpec) == POST


def test_read_spec_errors(tmp_path):
    with pytest.raises(InputNotFoundError):
        read_spec(tmp_path / "missing.json", PreprocessSpec)
    (tmp_path / "bad.json").write_text('{"resize": 3}')
    with pytest.raises(UsageError, match="holds no valid PreprocessSpec"):
        read_spec(tmp_path / "bad.json", PreprocessSpec)


def test_decoders_bind_to_the_only_output_or_say_which_exist():
    bound = _bind_decoders(POST, ["StatefulPartitionedCall:0"])
    assert bound.decoders[0].output == "StatefulPartitionedCall:0"
    with pytest.raises(UsageError, match="the model's outputs are: scores, boxes"):
        _bind_decoders(POST, ["scores", "boxes"])
    named = POST.model_copy(update={"decoders": [Decoder(output="boxes", field="b", kind="raw")]})
    assert _bind_decoders(named, ["scores", "boxes"]).decoders[0].output == "boxes"


def test_schema_1_bundle_without_parity_reference_still_loads(tmp_path):
    """Schema 2 adds parity.reference / reference_reason; a version-1 bundle reads with them unset."""
    from replaybench.bundle import BUNDLE_SCHEMA_VERSION, load_bundle
    from replaybench.errors import CorruptInputError

    doc = {
        "schema_version": 1,
        "name": "old",
        "source": {"format": "tflite", "sha256": "0" * 64},
        "io": {"inputs": [], "outputs": []},
        "parity": {"reference_runtime": "tflite", "inputs_tried": 3, "passed": True},
    }
    (tmp_path / "bundle.json").write_text(json.dumps(doc))
    (tmp_path / "model.onnx").write_bytes(b"")
    parity = load_bundle(tmp_path).bundle.parity
    assert parity is not None and parity.reference is None and parity.reference_reason is None
    assert BUNDLE_SCHEMA_VERSION == 2
    (tmp_path / "bundle.json").write_text(json.dumps({**doc, "schema_version": 3}))
    with pytest.raises(CorruptInputError, match="schema version 3"):
        load_bundle(tmp_path)
