"""Token merging for SD (ToMe SD, Bolya & Hoffman 2023) as ComfyUI's TomePatchModel applies it.

At the UNet's full-resolution transformer blocks only, the self-attention *queries* are reduced: tokens are split
into destinations (one per 2x2 cell of the latent grid, picked at random) and sources (the rest); the `r` sources
most cosine-similar to some destination are averaged into it. Attention runs for the remaining N − r queries against
all N keys/values, and its output is spread back: a merged source takes its destination's result.

Installed as an "attn1_patch" (merge the queries, build the matching) plus an "attn1_output_patch" (unmerge).
The destination pick uses torch's global RNG, as ComfyUI's does.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

Merge = Callable[[torch.Tensor], torch.Tensor]
STRIDE = 2  # one destination per STRIDE x STRIDE cell


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _dst_first_order(h: int, w: int, device: torch.device, no_rand: bool) -> tuple[torch.Tensor, int]:
    """Token indices [1, N, 1] with the destinations first, and their count."""
    hs, ws = h // STRIDE, w // STRIDE
    pick = (torch.zeros(hs, ws, 1, device=device, dtype=torch.int64) if no_rand
            else torch.randint(STRIDE * STRIDE, size=(hs, ws, 1), device=device))
    cells = torch.zeros(hs, ws, STRIDE * STRIDE, device=device, dtype=torch.int64)
    cells.scatter_(2, pick, -torch.ones_like(pick))  # -1 marks the destination of each cell
    grid = cells.view(hs, ws, STRIDE, STRIDE).transpose(1, 2).reshape(hs * STRIDE, ws * STRIDE)
    if grid.shape != (h, w):  # rows/columns beyond the last whole cell are all sources
        full = torch.zeros(h, w, device=device, dtype=torch.int64)
        full[: grid.shape[0], : grid.shape[1]] = grid
        grid = full
    return grid.reshape(1, -1, 1).argsort(dim=1), hs * ws


def bipartite_merge(metric: torch.Tensor, w: int, h: int, r: int, no_rand: bool = False) -> tuple[Merge, Merge]:
    """(merge [B,N,C] -> [B,N-r,C], unmerge [B,N-r,C] -> [B,N,C]) for tokens on an h x w grid."""
    batch, n, _ = metric.shape
    if r <= 0 or w == 1 or h == 1:
        return _identity, _identity
    with torch.no_grad():
        order, n_dst = _dst_first_order(h, w, metric.device, no_rand)
        src_pos, dst_pos = order[:, n_dst:, :], order[:, :n_dst, :]  # [1, N_src, 1], [1, N_dst, 1]

        def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            c = x.shape[-1]
            return (torch.gather(x, 1, src_pos.expand(batch, n - n_dst, c)),
                    torch.gather(x, 1, dst_pos.expand(batch, n_dst, c)))

        unit = metric / metric.norm(dim=-1, keepdim=True)
        a, b = split(unit)
        r = min(a.shape[1], r)
        best, best_dst = (a @ b.transpose(-1, -2)).max(dim=-1)  # per source: its most similar destination
        ranked = best.argsort(dim=-1, descending=True)[..., None]  # [B, N_src, 1]
        kept, merged = ranked[..., r:, :], ranked[..., :r, :]
        target = torch.gather(best_dst[..., None], -2, merged)  # [B, r, 1] destination of each merged source

    def merge(x: torch.Tensor) -> torch.Tensor:
        src, dst = split(x)
        c = x.shape[-1]
        unmerged = torch.gather(src, -2, kept.expand(batch, kept.shape[1], c))
        moving = torch.gather(src, -2, merged.expand(batch, r, c))
        dst = dst.scatter_reduce(-2, target.expand(batch, r, c), moving, reduce="mean")
        return torch.cat([unmerged, dst], dim=1)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        n_kept, c = kept.shape[1], x.shape[-1]
        unmerged, dst = x[..., :n_kept, :], x[..., n_kept:, :]
        out = torch.zeros(batch, n, c, device=x.device, dtype=x.dtype)
        src_all = src_pos.expand(batch, src_pos.shape[1], 1)
        out.scatter_(-2, dst_pos.expand(batch, n_dst, c), dst)
        out.scatter_(-2, torch.gather(src_all, 1, kept).expand(batch, n_kept, c), unmerged)
        out.scatter_(-2, torch.gather(src_all, 1, merged).expand(batch, r, c),
                     torch.gather(dst, -2, target.expand(batch, r, c)))
        return out

    return merge, unmerge


def merge_functions(x: torch.Tensor, ratio: float, original_shape: list[int]) -> tuple[Merge, Merge]:
    """Merging for the tokens x [B,N,C] of a block, only where N is the latent's full resolution."""
    _, _, height, width = original_shape
    downsample = math.ceil(math.sqrt((height * width) // x.shape[1]))
    if downsample > 1:
        return _identity, _identity
    return bipartite_merge(x, width, height, int(x.shape[1] * ratio))


class TomePatch:
    """The attn1_patch / attn1_output_patch pair; the merge built for a block's queries unmerges its output."""

    def __init__(self, ratio: float):
        self.ratio = float(ratio)
        self._unmerge: Merge = _identity

    def merge(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict[str, Any]):
        merge, self._unmerge = merge_functions(q, self.ratio, extra["original_shape"])
        return merge(q), k, v

    def unmerge(self, out: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
        return self._unmerge(out)
