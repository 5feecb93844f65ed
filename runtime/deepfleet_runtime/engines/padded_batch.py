"""The running batch of the transformers engine: one left-padded KV cache shared by all rows.

Rows of different lengths share one DynamicCache: each row's tokens are right-aligned and the
attention mask marks its padding, while position ids count only the row's own tokens, so a row
computes what it would compute alone. Rows join by merging caches (the shorter side is padded on
the left) and leave by selecting the remaining rows; columns that became padding for every row are
trimmed, so the footprint is rows x longest live row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class PaddedBatch:
    """KV cache, attention mask, lengths and pending tokens of the rows decoded together."""

    def __init__(self, cache, mask: torch.Tensor, lengths: torch.Tensor, next_tokens: torch.Tensor):
        self.cache = cache  # transformers DynamicCache: per layer keys/values [rows, heads, columns, dim]
        self.mask = mask  # [rows, columns] long: 1 = the row's own token, 0 = padding
        self.lengths = lengths  # [rows] tokens of each row in the cache
        self.next_tokens = next_tokens  # [rows] sampled, not yet fed to the model

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def columns(self) -> int:
        return self.mask.shape[1]

    @classmethod
    def left_padded_inputs(cls, prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
        """(input_ids, mask, position_ids) for prefilling `prompts` together."""
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids, mask, positions

    def zero_padding(self) -> None:
        """Clear cache entries at padded positions (computed from pad tokens; never attended)."""
        keep = self.mask[:, None, :, None].to(torch.bool)
        for layer in self.cache.layers:
            layer.keys.masked_fill_(~keep, 0)
            layer.values.masked_fill_(~keep, 0)

    def decode_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, mask, position_ids) for one decode step of every row; extends the mask."""
        ones = torch.ones((self.rows, 1), dtype=self.mask.dtype, device=self.mask.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        positions = self.lengths[:, None]
        self.lengths = self.lengths + 1
        return self.next_tokens[:, None], self.mask, positions

    def merge(self, other: "PaddedBatch") -> None:
        """Append `other`'s rows (same model, same dtype); both are left-padded to one width."""
        width = max(self.columns, other.columns)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)], dim=0)
            mine.values = torch.cat([_left_pad(mine.values, width), _left_pad(theirs.values, width)], dim=0)
        self.mask = torch.cat([F.pad(self.mask, (width - self.columns, 0)),
                               F.pad(other.mask, (width - other.columns, 0))], dim=0)
        self.lengths = torch.cat([self.lengths, other.lengths])
        self.next_tokens = torch.cat([self.next_tokens, other.next_tokens])

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order) and trim columns that are padding for all of them."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        live = mask.any(dim=0).nonzero()
        start = int(live[0]) if len(live) else mask.shape[1]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        self.mask = mask[:, start:]
        self.lengths = self.lengths.index_select(0, index)
        self.next_tokens = self.next_tokens.index_select(0, index)


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - tensor.shape[-2]
    return F.pad(tensor, (0, 0, missing, 0)) if missing else tensor
