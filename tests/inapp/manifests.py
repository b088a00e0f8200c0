"""Hook manifests for the stand-in app (tests/inapp/standin.c), one per feed/read pairing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.inapp.standin import FORMAT_RGB888, VERSION, Standin

AGE_FACTOR, AGE_OFFSET = 10.0, 20.0  # the stand-in's own message says age = 20 + 10 * output 0
SIGNATURE = {
    "args": ["buffer", "width", "height", "format", "output"],
    "returns": "int",
    "format_value": FORMAT_RGB888,
}
TENSOR_READ = {
    "kind": "output_tensor",
    "outputs": [{"name": "age", "count": 1}, {"name": "gender", "count": 2}],
}
TENSOR_DECODERS = [
    {"output": "age", "field": "age_pred", "kind": "scale", "factor": AGE_FACTOR, "offset": AGE_OFFSET},
    {
        "output": "gender",
        "field": "gender_pred",
        "kind": "softmax_argmax",
        "labels": ["male", "female"],
        "apply_softmax": True,
    },
]
MESSAGE_READ = {
    "kind": "json_message",
    "hook": {"module": "standin", "symbol": "post_message"},
    "arg": 0,
    "fields": {"age": "base_infos.0.age", "boy_prob": "base_infos.0.boy_prob"},
    "skip_unless": {"face_count": 1},
}
MESSAGE_DECODERS = [
    {"output": "age", "field": "age_pred", "kind": "scale"},
    {"output": "boy_prob", "field": "p_male_pred", "kind": "scale"},
]


def manifest(standin: Standin, kind: str, **changes: Any) -> dict[str, Any]:
    """``kind``: native_export, native_offset (output tensor read), frame_substitution (JSON message read),
    message (native export + JSON message read), return_value (the age export)."""
    feeds = {
        "native_export": {
            "kind": "native_export",
            "module": "standin",
            "symbol": "standin_run",
            "signature": SIGNATURE,
        },
        "native_offset": {
            "kind": "native_offset",
            "module": "standin",
            "offset": hex(standin.run_internal_offset),
            "signature": SIGNATURE,
        },
        "frame_substitution": {
            "kind": "frame_substitution",
            "call_site": {"module": "standin", "symbol": "standin_on_frame"},
            "buffer_arg": 0,
            "width_arg": 1,
            "height_arg": 2,
        },
        "return_value": {
            "kind": "native_export",
            "module": "standin",
            "symbol": "standin_age",
            "signature": {
                "args": ["buffer", "width", "height", "format"],
                "returns": "float",
                "format_value": FORMAT_RGB888,
            },
        },
    }
    feeds["message"] = feeds["native_export"]
    if kind in ("native_export", "native_offset"):
        read, decoders = TENSOR_READ, TENSOR_DECODERS
    elif kind == "return_value":
        read, decoders = {"kind": "return_value", "name": "age"}, TENSOR_DECODERS[:1]
    else:
        read, decoders = MESSAGE_READ, MESSAGE_DECODERS
    doc: dict[str, Any] = {
        "schema_version": 1,
        "name": f"standin-{kind}",
        "app": {
            "package": "standin",
            "version": VERSION,
            "version_from": {"kind": "native_export", "module": "standin", "symbol": "standin_version"},
        },
        "input": {
            "pixel_format": "RGB888",
            "resize": {"width": standin.width, "height": standin.height, "method": "bilinear_pil"},
        },
        "feed": feeds[kind],
        "read": read,
        "postprocess": {"decoders": decoders},
    }
    for key, value in changes.items():
        doc[key] = value
    return doc


def write_manifest(folder: Path, doc: dict[str, Any]) -> Path:
    path = folder / f"{doc['name']}.json"
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path
