"""The training side of token-level matching (ConTeXT-match, Decorte et al., IEEE Access 2025): the in-batch
contrastive loss over the token-attention score, the torch twin of `_scoring.token_attention` (a test holds the two
to the same numbers). Imported by `finetune` only: it needs torch.

For a sentence's token states x_t (special and padding tokens excluded) and a skill label's pooled unit vector s:

    b(x, s) = sum over t of softmax_t(<x_t, s> / T) * cos(x_t, s)

Each skill attends over the sentence's tokens, so a skill named in one clause is matched by that clause and the
rest of the sentence does not dilute it. The loss is cross-entropy over the batch's labels of `scale` * b (the other
pairs' labels are the negatives), plus `pooled_weight` times the same loss on the pooled cosine: the pooled vector
still finds the candidates and the memory's neighbours, so it must stay as good as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def token_attention(tokens: Tensor, mask: Tensor, skills: Tensor, temperature: float) -> Tensor:
    """(sentences, skills) scores from token states (B, L, d), a boolean mask (B, L) and unit skill vectors (C, d)."""
    dots = torch.einsum("bld,cd->blc", tokens, skills)
    cos = dots / tokens.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    logits = (dots / temperature).masked_fill(~mask[..., None], float("-inf"))
    return (torch.softmax(logits, dim=1) * cos).sum(dim=1)


def content_mask(input_ids: Tensor, attention_mask: Tensor, special_ids: Tensor) -> Tensor:
    """Real tokens that are not [CLS]/[SEP]-like; a text with none keeps its special tokens (never an empty row)."""
    mask = attention_mask.bool() & ~torch.isin(input_ids, special_ids)
    empty = ~mask.any(dim=1)
    return torch.where(empty[:, None], attention_mask.bool(), mask)


class TokenAttentionLoss(nn.Module):
    def __init__(self, model: Any, temperature: float, scale: float = 20.0, pooled_weight: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.scale = scale
        self.pooled_weight = pooled_weight
        self.register_buffer("special_ids", torch.tensor(sorted(set(model.tokenizer.all_special_ids))))

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        features = list(sentence_features)
        anchor = self.model(features[0])
        skills = F.normalize(torch.cat([self.model(f)["sentence_embedding"] for f in features[1:]]), dim=-1)
        mask = content_mask(features[0]["input_ids"], features[0]["attention_mask"], self.special_ids)
        target = torch.arange(mask.shape[0], device=mask.device)
        scores = token_attention(anchor["token_embeddings"], mask, skills, self.temperature)
        loss = F.cross_entropy(self.scale * scores, target)
        if self.pooled_weight:
            pooled = F.normalize(anchor["sentence_embedding"], dim=-1) @ skills.T
            loss = loss + self.pooled_weight * F.cross_entropy(self.scale * pooled, target)
        return loss

    def get_config_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "scale": self.scale, "pooled_weight": self.pooled_weight}
