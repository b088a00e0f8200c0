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
