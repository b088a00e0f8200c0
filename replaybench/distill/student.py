"""The student: ResNet18 image encoder + Hugging Face text encoder + MLP head -> a 0-10 score.

The ResNet18 is written here with torchvision's exact module names, so a torchvision ``resnet18``
state dict (``resnet18-f37072fd.pth``) loads into it with ``torch.load(weights_only=True)`` and no
torchvision install. The image encoder takes uint8 (or 0..255 float) NCHW 224x224 and normalises inside,
so the exported ONNX graph carries the normalisation. The text encoder is any local Hugging Face model
folder (DistilBERT, MiniLM, BERT), loaded with ``local_files_only``: nothing is fetched at run time.

A student folder::

    student.json        StudentConfig + the training report summary
    image_encoder.pt    ResNet18 state dict (torchvision names)
    head.pt             MLP head state dict
    text_encoder/       the text model + tokenizer (save_pretrained), so the folder is self-contained
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from replaybench.errors import CorruptInputError, InputNotFoundError, MissingDependencyError, UsageError

if TYPE_CHECKING:
    import torch

IMAGE_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_DIM = 512
STUDENT_JSON = "student.json"
TEXT_DIR = "text_encoder"
IMAGE_PT = "image_encoder.pt"
HEAD_PT = "head.pt"

# Random-init text encoder shapes (for tests and speed measurement; no pretrained weights offline).
TextArch = Literal["tiny", "distilbert-base", "minilm-l6"]


class StudentConfig(BaseModel):
    """How the student is built; stored in student.json."""

    model_config = ConfigDict(extra="forbid")

    image_encoder: Literal["resnet18"] = "resnet18"
    image_weights: str | None = None  # the torchvision checkpoint it was initialised from
    text_encoder: str  # the folder or cached model name it was initialised from
    text_hidden: int
    text_pooling: Literal["cls", "mean"] = "mean"
    head_hidden: int = 256
    dropout: float = 0.1
    max_length: int = 128
    random_init: bool = False
    seed: int = 0


# ------------------------------------------------------------------------------------------ modules


def _build_modules() -> dict[str, Any]:
    """torch.nn classes, defined lazily so importing this module does not import torch."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample
            self.stride = stride

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            return self.relu(out + identity)

    class ResNet18(nn.Module):
        """torchvision.models.resnet18, same parameter and buffer names (conv1, bn1, layer1..4, fc)."""

        def __init__(self, num_classes: int = 1000) -> None:
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = self._make_layer(64, 2)
            self.layer2 = self._make_layer(128, 2, stride=2)
            self.layer3 = self._make_layer(256, 2, stride=2)
            self.layer4 = self._make_layer(512, 2, stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

        def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
            downsample = None
            if stride != 1 or self.inplanes != planes:
                downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )
            layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes
            layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return torch.flatten(self.avgpool(x), 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.features(x))

    class ImageEncoder(nn.Module):
        """uint8 / 0..255 NCHW 224x224 -> 512-d; ImageNet normalisation inside the graph."""

        def __init__(self, resnet: ResNet18) -> None:
            super().__init__()
            self.resnet = resnet
            # scale/offset so that x*scale+offset == (x/255 - mean)/std
            std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
            mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
            self.register_buffer("offset", -mean / std, persistent=False)

        scale: torch.Tensor
        offset: torch.Tensor

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = image.to(torch.float32) * self.scale + self.offset
            return self.resnet.features(x)

    class TextEncoder(nn.Module):
        """input_ids + attention_mask -> pooled hidden state (masked mean or CLS)."""

        def __init__(self, model: nn.Module, pooling: str) -> None:
            super().__init__()
            self.model = model
            self.pooling = pooling

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            if self.pooling == "cls":
                return hidden[:, 0]
            m = attention_mask.to(hidden.dtype).unsqueeze(-1)
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)

    class Head(nn.Module):
        """MLP over [image 512 | text hidden] -> sigmoid * 10."""

        def __init__(self, in_dim: int, hidden: int, dropout: float) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
            )

        def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.net(torch.cat([image_emb, text_emb], dim=1)).squeeze(1)) * 10.0

    class TextHead(nn.Module):
        """The text encoder and the head as one graph (input_ids, attention_mask, image_embedding)."""

        def __init__(self, text: TextEncoder, head: Head) -> None:
            super().__init__()
            self.text = text
            self.head = head

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embedding: torch.Tensor
        ) -> torch.Tensor:
            return self.head(image_embedding, self.text(input_ids, attention_mask))

    class Student(nn.Module):
        def __init__(self, image: ImageEncoder, text: TextEncoder, head: Head) -> None:
            super().__init__()
            self.image = image
            self.text = text
            self.head = head

        def forward(
            self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
        ) -> torch.Tensor:
            return self.head(self.image(image), self.text(input_ids, attention_mask))

    return {
        "ResNet18": ResNet18,
        "ImageEncoder": ImageEncoder,
        "TextEncoder": TextEncoder,
        "Head": Head,
        "TextHead": TextHead,
        "Student": Student,
    }


_MODULES: dict[str, Any] = {}


def modules() -> dict[str, Any]:
    """The student's torch module classes (ResNet18, ImageEncoder, TextEncoder, Head, TextHead, Student)."""
    if not _MODULES:
        _MODULES.update(_build_modules())
    return _MODULES


# ------------------------------------------------------------------------------------------ loading


def load_resnet18(weights: Path | None, *, random_init: bool) -> Any:
    """A ResNet18 with torchvision's names, from a torchvision checkpoint or random (explicitly)."""
    import torch

    net = modules()["ResNet18"]()
    if weights is None:
        if not random_init:
            raise MissingDependencyError(
                "the ResNet18 image encoder needs pretrained weights: pass --image-encoder-weights "
                "resnet18-f37072fd.pth (torchvision's resnet18 checkpoint), or --random-init for a test run"
            )
        return net
    if not weights.is_file():
        raise InputNotFoundError(f"image encoder weights not found: {weights}")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CorruptInputError(f"{weights} is not a loadable torch state dict: {e}") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except (RuntimeError, TypeError, AttributeError) as e:  # shape mismatches, not a dict
        raise CorruptInputError(f"{weights} is not a torchvision resnet18 state dict: {e}") from e
    if missing or unexpected:
        raise CorruptInputError(
            f"{weights} is not a torchvision resnet18 state dict (missing {list(missing)[:5]}, unexpected "
            f"{list(unexpected)[:5]})"
        )
    return net


def random_text_config(arch: TextArch, vocab_size: int) -> Any:
    """A randomly initialised text model config with a published (or tiny) shape."""
    from transformers import BertConfig, DistilBertConfig

    if arch == "distilbert-base":  # the published DistilBERT-base-uncased shape (66M parameters)
        return DistilBertConfig(vocab_size=vocab_size, dim=768, n_layers=6, n_heads=12, hidden_dim=3072)
    if arch == "minilm-l6":  # all-MiniLM-L6-v2 shape
        return BertConfig(
            vocab_size=vocab_size,
            hidden_size=384,
            num_hidden_layers=6,
            num_attention_heads=12,
            intermediate_size=1536,
        )
    return DistilBertConfig(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64)


def build_wordpiece_tokenizer(texts: Sequence[str], folder: Path, *, vocab_size: int = 2000) -> Any:
    """Train an uncased WordPiece tokenizer on ``texts`` offline and save it (HF fast tokenizer files)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    tok.train_from_iterator(list(texts) or ["empty"], trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return fast


def load_text_encoder(name_or_path: str) -> tuple[Any, Any]:
    """(model, tokenizer) from a local folder or the local Hugging Face cache; never the network."""
    from transformers import AutoModel, AutoTokenizer

    path = Path(name_or_path)
    looks_like_path = path.is_absolute() or name_or_path.startswith((".", "~")) or path.exists()
    if looks_like_path and not (path / "config.json").is_file():
        raise InputNotFoundError(
            f"text encoder folder {path} not found (or has no config.json)",
            hint="give a local Hugging Face model folder, e.g. one made with save_pretrained",
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
        model = AutoModel.from_pretrained(name_or_path, local_files_only=True, attn_implementation="eager")
    except OSError as e:
        raise MissingDependencyError(
            f"text encoder {name_or_path!r} is not available offline: {e}",
            hint=f"download it once elsewhere (huggingface-cli download {name_or_path}) into the local "
            "Hugging Face cache, or pass --text-encoder /path/to/model-folder, or --random-init",
        ) from e
    return model, tokenizer


def build_student(
    config: StudentConfig,
    *,
    image_weights: Path | None,
    text_model: Any,
) -> Any:
    """Assemble the Student module from its parts (head freshly initialised)."""
    import torch

    torch.manual_seed(config.seed)
    m = modules()
    resnet = load_resnet18(image_weights, random_init=config.random_init)
    image = m["ImageEncoder"](resnet)
    text = m["TextEncoder"](text_model, config.text_pooling)
    head = m["Head"](IMAGE_DIM + config.text_hidden, config.head_hidden, config.dropout)
    return m["Student"](image, text, head)


def text_hidden_size(model: Any) -> int:
    cfg = model.config
    return int(getattr(cfg, "hidden_size", None) or cfg.dim)


def save_student(
    student: Any, tokenizer: Any, config: StudentConfig, folder: Path, report: dict[str, Any]
) -> None:
    """Write a self-contained student folder."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.save(student.image.resnet.state_dict(), folder / IMAGE_PT)
    torch.save(student.head.state_dict(), folder / HEAD_PT)
    student.text.model.save_pretrained(folder / TEXT_DIR)
    tokenizer.save_pretrained(folder / TEXT_DIR)
    doc = {"config": config.model_dump(), "report": report}
    (folder / STUDENT_JSON).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def load_student(folder: Path) -> tuple[Any, Any, StudentConfig]:
    """(Student module in eval mode, tokenizer, config) from a student folder."""
    import torch

    doc_path = folder / STUDENT_JSON
    if not doc_path.is_file():
        raise InputNotFoundError(
            f"not a student folder: {folder} has no {STUDENT_JSON}",
            hint="make one with: replaybench distill train POSTS LABELS -o STUDENT",
        )
    try:
        config = StudentConfig.model_validate(json.loads(doc_path.read_text(encoding="utf-8"))["config"])
    except Exception as e:
        raise CorruptInputError(f"{doc_path} is not a valid student document: {e}") from e
    text_model, tokenizer = load_text_encoder(str(folder / TEXT_DIR))
    m = modules()
    resnet = load_resnet18(folder / IMAGE_PT, random_init=False)
    head = m["Head"](IMAGE_DIM + config.text_hidden, config.head_hidden, config.dropout)
    head.load_state_dict(torch.load(folder / HEAD_PT, map_location="cpu", weights_only=True))
    student = m["Student"](m["ImageEncoder"](resnet), m["TextEncoder"](text_model, config.text_pooling), head)
    student.eval()
    return student, tokenizer, config


def encoder_key(config: StudentConfig, image_weights: Path | None, text_model: Any) -> str:
    """A key naming the frozen encoders, for the embedding cache (changes when weights change)."""
    import torch

    h = hashlib.sha256()
    h.update(config.model_dump_json(exclude={"head_hidden", "dropout"}).encode())
    if image_weights is not None and image_weights.is_file():
        st = image_weights.stat()
        h.update(f"{image_weights.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    # A fingerprint of the text weights: a few tensors' sums (cheap, changes with the weights).
    with torch.no_grad():
        for i, p in enumerate(text_model.parameters()):
            if i % 8 == 0:
                h.update(f"{float(p.double().sum()):.6e}".encode())
    return h.hexdigest()[:16]


def check_finetune(n: int) -> None:
    if n < 0 or n > 4:
        raise UsageError("--finetune-last-blocks must be between 0 and 4")
