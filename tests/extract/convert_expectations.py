"""The one expectations table for converting the real models in ../shared/realdata.

Used by tests/extract/test_convert_realdata.py and benchmarks/convert_realdata.py. Each entry:
``verdict``: "pass" (converts, parity within tolerance), "cut" (converts up to a custom op, parity
within tolerance on the cut outputs), "native" (no faithful ONNX route: the bundle keeps the original for
the app's own engine ``runtime``, the reason matching ``match``), or "error" (a typed error whose message
matches ``match``);
optional ``tolerance`` (overrides the per-kind default), ``cut_at``, ``input_shape`` (TorchScript),
``reference`` (what parity ran: "original" unless given; "rewritten" only where the source runtime
cannot run the original), ``disabled: reason``.
"""

from __future__ import annotations

from typing import Any

AGEGENDER = "agegender_tflite_shubham0204"
MEDIAPIPE = "mediapipe_0.10.14_face_tflite"
ULTRAFACE = "ultraface_rfb320_multiformat_linzaer"
FRUIT = "pytorch_mobile_ptl_fruitcamera"

EXPECTATIONS: dict[str, dict[str, Any]] = {
    **{
        f"{AGEGENDER}/{n}.tflite": {"verdict": "pass"}
        for n in (
            "model_age_q",
            "model_gender_nonq",
            "model_gender_q",
            "model_lite_age_nonq",
            "model_lite_age_q",
            "model_lite_gender_nonq",
            "model_lite_gender_q",
        )
    },
    # full uint8: TFLite integer kernels vs ONNX QDQ in float differ by a few steps (measured <= 4)
    "age_classifier_quant_radualexandrub/AndroidAge_quant.tflite": {"verdict": "pass", "labels": 9},
    f"{MEDIAPIPE}/face_detection_short_range.tflite": {"verdict": "pass"},
    f"{MEDIAPIPE}/face_landmark.tflite": {"verdict": "pass"},
    f"{MEDIAPIPE}/iris_landmark.tflite": {"verdict": "pass"},
    f"{MEDIAPIPE}/face_detection_full_range_sparse.tflite": {"verdict": "pass", "note": "densified"},
    # LiteRT's XNNPACK delegate runs MediaPipe's Convolution2DTransposeBias: parity against the original
    f"{MEDIAPIPE}/selfie_segmentation.tflite": {"verdict": "pass", "note": "Convolution2DTransposeBias"},
    f"{MEDIAPIPE}/selfie_segmentation_landscape.tflite": {
        "verdict": "pass",
        "note": "Convolution2DTransposeBias",
    },
    # MediaPipe ops stock TFLite cannot run: no reference runtime, so no validated conversion
    f"{MEDIAPIPE}/face_landmark_with_attention.tflite": {
        "verdict": "error",
        "error": "ConversionError",
        "match": "TransformTensorBilinear",
    },
    # ONNX would stop before the detection post-processing op; ai-edge-litert runs the whole model
    "quant_ssd_detect_aamba/detect.tflite": {
        "verdict": "native",
        "runtime": "tflite",
        "match": "cut before custom op(s) TFLite_Detection_PostProcess",
    },
    f"{ULTRAFACE}/tflite/pretrained/version-RFB-320_without_postprocessing.tflite": {"verdict": "pass"},
    f"{ULTRAFACE}/models/onnx/version-RFB-320.onnx": {"verdict": "pass"},
    f"{ULTRAFACE}/models/onnx/version-RFB-320_simplified.onnx": {"verdict": "pass"},
    f"{ULTRAFACE}/models/onnx/version-RFB-320_without_postprocessing.onnx": {"verdict": "pass"},
    # XNNPACK prepacked ops (optimize_for_mobile); this torch build has no XNNPACK op classes, so neither
    # the ONNX export nor the lite interpreter can run them here
    f"{FRUIT}/model.ptl": {
        "verdict": "error",
        "error": "ConversionError",
        "match": "has no XNNPACK",
        "input_shape": [1, 3, 100, 100],
    },
    f"{FRUIT}/model_cpu.ptl": {
        "verdict": "error",
        "error": "ConversionError",
        "match": "prepacked.linear_clamp_run",
        "input_shape": [1, 3, 100, 100],
    },
    f"{ULTRAFACE}/ncnn/data/version-RFB/RFB-320.param": {
        "verdict": "native",
        "runtime": "ncnn",
        "match": "no converter from ncnn_param",
        "input_shape": [1, 3, 240, 320],
    },
    f"{ULTRAFACE}/MNN/model/version-RFB/RFB-320.mnn": {
        "verdict": "native",
        "runtime": "mnn",
        "match": "no converter from mnn",
    },
    # KL-calibrated int8 with EltwiseInt8, an op MNN 3.x dropped: the engine refuses it, nothing is written
    f"{ULTRAFACE}/MNN/model/version-RFB/RFB-320-quant-KL-5792.mnn": {
        "verdict": "error",
        "error": "CorruptInputError",
        "match": "cannot run RFB-320-quant-KL-5792.mnn",
    },
}
