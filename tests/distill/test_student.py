"""The student's parts: torchvision-compatible ResNet18, offline text encoders, tokenizer lengths."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from replaybench.distill.student import (
    build_wordpiece_tokenizer,
    load_resnet18,
    load_text_encoder,
    modules,
)
from replaybench.errors import CorruptInputError, InputNotFoundError, MissingDependencyError


def test_resnet18_matches_torchvision_layout(tmp_path):
    net = modules()["ResNet18"]()
    sd = net.state_dict()
    # torchvision.models.resnet18().state_dict(): 122 entries, 11,689,512 parameters.
    assert len(sd) == 122
    assert sum(p.numel() for p in net.parameters()) == 11_689_512
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight",
                "layer4.1.bn2.num_batches_tracked", "fc.bias"):  # fmt: skip
        assert key in sd
    assert tuple(sd["layer3.0.downsample.0.weight"].shape) == (256, 128, 1, 1)
    # A checkpoint saved as torchvision does loads through weights_only torch.load and gives the same net.
    torch.manual_seed(1)
    src = modules()["ResNet18"]().eval()
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    loaded = load_resnet18(path, random_init=False).eval()
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(src(x), loaded(x))


def test_resnet18_weights_required_or_rejected(tmp_path):
    with pytest.raises(MissingDependencyError, match="--image-encoder-weights"):
        load_resnet18(None, random_init=False)
    with pytest.raises(InputNotFoundError, match="nope.pth"):
        load_resnet18(tmp_path / "nope.pth", random_init=False)
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(CorruptInputError, match="not a torchvision resnet18"):
        load_resnet18(bad, random_init=False)


def test_image_encoder_normalises_inside():
    m = modules()
    enc = m["ImageEncoder"](m["ResNet18"]()).eval()
    img = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)  # any size: adaptive pooling
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = enc.resnet.features((img.float() / 255 - mean) / std)
    got = enc(img)
    assert got.shape == (2, 512)
    assert torch.allclose(got, expected, atol=1e-4)


def test_text_encoder_is_offline_only(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputNotFoundError, match="missing-folder"):
        load_text_encoder(str(tmp_path / "missing-folder"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with pytest.raises(MissingDependencyError, match="not available offline"):
        load_text_encoder("distilbert-base-uncased")


def _instagram_captions(realdata: Path) -> list[str]:
    path = realdata / "instagram_captions_text_only" / "captions_csv.csv"
    with path.open(encoding="utf-8") as fh:
        return [row["Caption"] or "" for row in csv.DictReader(fh)]


def test_tokenizer_lengths_on_real_instagram_captions(realdata, tmp_path):
    captions = _instagram_captions(realdata)
    assert len(captions) > 1000
    tok = build_wordpiece_tokenizer(captions[:4000], tmp_path / "tok", vocab_size=3000)
    enc = tok(captions, truncation=True, max_length=128)
    lengths = np.array([len(x) for x in enc["input_ids"]])
    assert lengths.max() == 128  # long captions are truncated, special tokens included
    assert lengths.min() == 2  # an empty caption is [CLS] [SEP]
    assert np.median(lengths) < 40  # real captions are short: why length-sorted batches pay off
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
