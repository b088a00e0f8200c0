"""Train the sample app's face-attribute model (run by scripts/build_demo_sample.py; not at demo time).

The training set is skewed on purpose (see replaybench/demo/synthetic.py): 90% of light-tone faces are
female and 90% of dark-tone faces are male, so the model learns skin tone as a shortcut for gender.
Writes float and fp16 TFLite models into the given folder and prints per-group accuracy on a balanced set.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from replaybench.demo.synthetic import face_samples

INPUT = 64


def _arrays(n: int, seed: int, p_female: dict[str, float] | None = None):
    from PIL import Image

    xs, ys, tones = [], [], []
    for img, tone, gender in face_samples(n, seed, p_female=p_female):
        small = np.asarray(Image.fromarray(img).resize((INPUT, INPUT), Image.Resampling.BILINEAR))
        xs.append(small)
        ys.append(1 if gender == "female" else 0)
        tones.append(tone)
    x = (np.stack(xs).astype(np.float32) - 127.5) / 127.5
    return x, np.array(ys), np.array(tones)


def train(out: Path) -> None:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(3)
    x, y, _ = _arrays(4000, seed=1, p_female={"light": 0.85, "dark": 0.15})
    model = tf.keras.Sequential(
        [
            tf.keras.Input((INPUT, INPUT, 3), name="image"),
            tf.keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
            tf.keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
            tf.keras.layers.GlobalAveragePooling2D(),
            tf.keras.layers.Dense(2, activation="softmax", name="gender"),
        ]
    )
    model.compile(
        optimizer=tf.keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["acc"]
    )
    model.fit(x, y, epochs=15, batch_size=64, verbose=0)
    xt, yt, tt = _arrays(800, seed=2)
    pred = model.predict(xt, verbose=0).argmax(1)
    for tone in ("light", "dark"):
        for g, name in ((0, "male"), (1, "female")):
            m = (tt == tone) & (yt == g)
            print(f"{tone:5s} {name:6s} accuracy {np.mean(pred[m] == yt[m]):.3f} (n={m.sum()})")
    out.mkdir(parents=True, exist_ok=True)
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    (out / "face_gender.tflite").write_bytes(conv.convert())
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]
    (out / "face_gender_fp16.tflite").write_bytes(conv.convert())


if __name__ == "__main__":
    train(Path(sys.argv[1]))
