"""The CLIP object (what a CLIP socket carries) and the loaders that find text encoders in model files.

A `CLIP` holds one or two `TextEncoder`s ("l" = OpenAI CLIP-L, "h" = OpenCLIP ViT-H, "g" = OpenCLIP ViT-bigG), each a
transformer (`clip_text.py`) plus its prompt tokenizer and the options ComfyUI runs it with:

| family        | encoders | context layer (default)            | pooled output                      |
|---------------|----------|------------------------------------|------------------------------------|
| sd1           | l        | last, final LN                     | l: final-LN EOS state (unprojected) |
| sd2           | h        | penultimate, final LN applied      | h: EOS state @ text_projection     |
| sdxl          | l + g    | penultimate, no final LN; concat   | g: EOS state @ text_projection     |
| sdxl_refiner  | g        | penultimate, no final LN           | g: EOS state @ text_projection     |

`clip_layer(n)` (CLIPSetLastLayer) taps layer n of every encoder (|n| > layers means the last layer), keeping each
encoder's final-LN rule. Prompt weights follow ComfyUI: each chunk is encoded together with an empty prompt and every
token whose weight w != 1 becomes z_empty + w·(z − z_empty).
"""
from __future__ import annotations

import copy
import logging
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .. import context
from ..errors import ModelLoadError
from ..tokenizer import END_TOKEN, START_TOKEN, PromptTokenizer, Token
from .clip_text import (
    Activation,
    TextTransformer,
    build_text_model,
    detect_config,
    detect_layout,
    load_weights,
)
from .embeddings import EmbeddingLookup

log = logging.getLogger(__name__)

Family = Literal["sd1", "sd2", "sdxl", "sdxl_refiner"]
Role = Literal["l", "h", "g"]


@dataclass(frozen=True)
class RoleSpec:
    """How ComfyUI runs one kind of text encoder."""

    activation: Activation
    pad_token: int
    embedding_key: str


ROLES: dict[str, RoleSpec] = {
    "l": RoleSpec("quick_gelu", END_TOKEN, "clip_l"),
    "h": RoleSpec("gelu", 0, "clip_h"),
    "g": RoleSpec("gelu", 0, "clip_g"),
}

# family -> ({role: (default layer, final LN on the tapped layer, pooled uses text_projection)}, role giving pooled)
FAMILIES: dict[str, tuple[dict[str, tuple[int | None, bool, bool]], str]] = {
    "sd1": ({"l": (None, True, False)}, "l"),
    "sd2": ({"h": (-2, True, True)}, "h"),
    "sdxl": ({"l": (-2, False, True), "g": (-2, False, True)}, "g"),
    "sdxl_refiner": ({"g": (-2, False, True)}, "g"),
}

# Where full checkpoints keep their text encoders: family -> [(role, key prefix)].
CHECKPOINT_PREFIXES: dict[str, list[tuple[str, str]]] = {
    "sdxl": [("l", "conditioner.embedders.0.transformer."), ("g", "conditioner.embedders.1.model.")],
    "sdxl_refiner": [("g", "conditioner.embedders.0.model.")],
    "sd2": [("h", "cond_stage_model.model.")],
    "sd1": [("l", "cond_stage_model.transformer.")],
}


class _SubDict(Mapping):
    """Keys of `base` under `prefix`, prefix removed (lazy: tensors are read only when looked up)."""

    def __init__(self, base: Mapping[str, torch.Tensor], prefix: str, keys: Iterable[str], rename: str = ""):
        self.base, self.prefix, self.rename = base, prefix, rename
        self._keys = {rename + k[len(prefix):]: k for k in keys if k.startswith(prefix)}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.base[self._keys[key]]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        getter = getattr(self.base, "shape", None)
        return tuple(getter(self._keys[key])) if callable(getter) else tuple(self.base[self._keys[key]].shape)


class TextEncoder:
    """One text transformer + its tokenizer + the layer/pooling options of the family it serves."""

    def __init__(self, role: str, model: TextTransformer, *, default_layer: int | None, norm_hidden: bool,
                 projected_pooled: bool, prefix: str = ""):
        spec = ROLES[role]
        self.role, self.model, self.prefix = role, model, prefix
        self.default_layer, self.norm_hidden, self.projected_pooled = default_layer, norm_hidden, projected_pooled
        self.tokenizer = PromptTokenizer(pad_token=spec.pad_token, embedding_size=model.cfg.width,
                                         embedding_key=spec.embedding_key)

    @property
    def num_layers(self) -> int:
        return self.model.cfg.layers

    def lookup(self, dirs: Sequence[str | Path]) -> EmbeddingLookup:
        return EmbeddingLookup(dirs, self.model.cfg.width, ROLES[self.role].embedding_key)

    def _layer(self, clip_layer: int | None) -> int | None:
        """ComfyUI's set_clip_options: a layer beyond the stack (or none) means the last layer."""
        layer = self.default_layer if clip_layer is None else clip_layer
        if layer is None or abs(layer) > self.num_layers:
            return None
        return layer

    def _embed(self, batch: list[list[Token]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Token rows (ids or embedding vectors) -> ([B, T, C] float32 embeddings, [B] index of the first EOS)."""
        width = self.model.cfg.width
        rows, eos = [], []
        for row in batch:
            kept = [int(t) if isinstance(t, numbers.Integral) else t for t in row
                    if isinstance(t, numbers.Integral) or _fits(t, width)]
            kept += [self.tokenizer.pad_token] * (len(row) - len(kept))  # dropped vectors: pad at the end
            ids = torch.tensor([t if isinstance(t, int) else 0 for t in kept], device=device)
            x = self.model.embed_tokens(ids[None])[0]
            for i, t in enumerate(kept):
                if not isinstance(t, int):
                    x[i] = t.to(device=device, dtype=x.dtype)
            rows.append(x)
            eos.append(next((i for i, t in enumerate(kept) if isinstance(t, int) and t == END_TOKEN), len(kept) - 1))
        return torch.stack(rows), torch.tensor(eos, device=device)

    @torch.no_grad()
    def encode_batch(self, batch: list[list[Token]], clip_layer: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of tokens -> (context [B, T, C], pooled [B, P]) with this encoder's layer and pooling rules."""
        device = self.model.token_weight().device
        x, eos = self._embed(batch, device)
        layer = self._layer(clip_layer)
        last, hidden, pooled, projected = self.model(x, eos, layer, self.norm_hidden)
        z = last if layer is None else hidden
        if self.projected_pooled and projected is not None:
            pooled = projected
        return z.float(), pooled.float()

    def encode_chunks(self, chunks: list[list[tuple]], clip_layer: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """ComfyUI's encode_token_weights: chunks of (token, weight) -> ([1, 77·n, C], pooled of chunk 0 [1, P])."""
        batch = [[t for t, *_ in chunk] for chunk in chunks]
        weights = [[float(w) for _, w, *_ in chunk] for chunk in chunks]
        weighted = any(w != 1.0 for row in weights for w in row)
        if weighted or not batch:
            width = max((len(r) for r in batch), default=0)
            batch.append(_empty_tokens(self.tokenizer.pad_token, width))
        z, pooled = self.encode_batch(batch, clip_layer)
        out = []
        for k, w in enumerate(weights):
            zk = z[k : k + 1]
            if weighted:
                wk = torch.tensor(w, dtype=z.dtype, device=z.device)[None, :, None]  # [1, T, 1]
                z_empty = z[-1:]
                zk = torch.where(wk != 1.0, (zk - z_empty) * wk + z_empty, zk)
            out.append(zk)
        cond = torch.cat(out, dim=-2) if out else z[-1:]
        return cond.cpu(), pooled[0:1].cpu()  # conditioning lives on the CPU between nodes, as in ComfyUI


def _fits(vector: torch.Tensor, width: int) -> bool:
    if vector.shape[-1] == width:
        return True
    log.warning("WARNING: shape mismatch when trying to apply embedding, embedding will be ignored %s != %s",
                vector.shape[-1], width)
    return False


def _empty_tokens(pad_token: int, length: int) -> list[int]:
    out = [START_TOKEN, END_TOKEN]
    return out + [pad_token] * (length - len(out))


class CLIP:
    """The text side of a model: tokenizers + encoders, a clip-skip setting, and the embedding folders."""

    def __init__(self, family: str, encoders: Mapping[str, TextEncoder], *, embedding_dirs: Sequence[str | Path] = ()):
        if family not in FAMILIES:
            raise ValueError(f"unknown CLIP family {family!r}")
        self.family = family
        self.encoders = dict(encoders)
        self.embedding_dirs = [str(d) for d in embedding_dirs]
        self.layer_idx: int | None = None
        self.patches: tuple = ()  # LoRA patches (applied by the model cache's patcher), carried with clones

    def clone(self) -> CLIP:
        """A new CLIP sharing the encoder modules; settings changed on the clone do not affect this one."""
        other = copy.copy(self)
        other.encoders = dict(self.encoders)
        other.embedding_dirs = list(self.embedding_dirs)
        return other

    def clip_layer(self, layer_idx: int | None) -> None:
        self.layer_idx = layer_idx

    def _embedding_dirs(self) -> list[str]:
        if self.embedding_dirs:
            return self.embedding_dirs
        ctx = context.current_or_none()
        if ctx is None or ctx.folders is None:
            return []
        try:
            return [str(d) for d in ctx.folders.dirs("embeddings")]
        except Exception:  # noqa: BLE001 - an engine without an embeddings folder just has no embeddings
            return []

    def tokenize(self, text: str, return_word_ids: bool = False) -> dict[str, list[list[tuple]]]:
        """Per-encoder chunks of (token, weight[, word_id]); keys are the encoder roles ("l", "g", "h")."""
        dirs = self._embedding_dirs()
        return {role: enc.tokenizer.tokenize_with_weights(text, enc.lookup(dirs), return_word_ids)
                for role, enc in self.encoders.items()}

    def encode_from_tokens(self, tokens: Mapping[str, list[list[tuple]]], return_pooled: bool = False,
                           return_dict: bool = False) -> Any:
        """Encode tokenized text: cond [1, 77·chunks, C] (SDXL: CLIP-L ‖ bigG = 2048 wide) and pooled [1, P]."""
        missing = [role for role in self.encoders if role not in tokens]
        if missing:
            raise ValueError(f"tokens for text encoder(s) {missing} are missing (got {sorted(tokens)})")
        outputs = {role: enc.encode_chunks(list(tokens[role]), self.layer_idx) for role, enc in self.encoders.items()}
        conds = [outputs[role][0] for role in self.encoders]
        cut = min(c.shape[1] for c in conds)
        cond = torch.cat([c[:, :cut] for c in conds], dim=-1) if len(conds) > 1 else conds[0]
        pooled = outputs[FAMILIES[self.family][1]][1]
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        return (cond, pooled) if return_pooled else cond

    def encode(self, text: str) -> torch.Tensor:
        return self.encode_from_tokens(self.tokenize(text))

    def encode_conditioning(self, tokens: Mapping[str, list[list[tuple]]], extras: Mapping[str, Any] | None = None
                            ) -> list[list[Any]]:
        """A CONDITIONING value as CLIPTextEncode returns it: [[cond, {"pooled_output": pooled, **extras}]]."""
        out = self.encode_from_tokens(tokens, return_dict=True)
        cond = out.pop("cond")
        out.update(extras or {})
        return [[cond, out]]

    # --- model cache / LoRA hooks ---------------------------------------------------------------------------------

    def modules(self) -> dict[str, TextTransformer]:
        """role -> nn.Module (parameter names = checkpoint keys minus `encoders[role].prefix`)."""
        return {role: enc.model for role, enc in self.encoders.items()}

    def checkpoint_prefixes(self) -> dict[str, str]:
        return {role: enc.prefix for role, enc in self.encoders.items()}


# --- loading ----------------------------------------------------------------------------------------------------


def _weight_dtype(weight_dtype: torch.dtype | None) -> torch.dtype:
    """ComfyUI keeps text-encoder weights in float16 on every device and computes in float32 (manual cast), so the
    engine's model dtype does not apply here; pass `weight_dtype` to store them otherwise (e.g. float32: faster on
    CPU, but fp32-trained weights then differ from ComfyUI by their fp16 rounding)."""
    return torch.float16 if weight_dtype is None else weight_dtype


def _build_encoder(role: str, family: str, sd: Mapping[str, torch.Tensor], prefix: str, *,
                   device: torch.device | str, dtype: torch.dtype) -> TextEncoder:
    keys = set(sd.keys())
    cfg = detect_config(sd, ROLES[role].activation, keys)
    model = load_weights(build_text_model(cfg), sd, device=device, dtype=dtype)
    default_layer, norm_hidden, projected = FAMILIES[family][0][role]
    if default_layer is not None and abs(default_layer) > cfg.layers:
        raise ModelLoadError(f"text encoder at '{prefix}' has {cfg.layers} layer(s); {family} needs at least 2")
    return TextEncoder(role, model, default_layer=default_layer, norm_hidden=norm_hidden,
                       projected_pooled=projected, prefix=prefix)


def _checkpoint_family(keys: set[str]) -> str | None:
    for family, parts in CHECKPOINT_PREFIXES.items():
        if all(any(k.startswith(prefix) for k in keys) for _, prefix in parts):
            return family
    return None


def load_clip_from_state_dict(sd: Mapping[str, torch.Tensor], *, device: torch.device | str = "cpu",
                              dtype: torch.dtype | None = None, embedding_dirs: Sequence[str | Path] = (),
                              weight_dtype: torch.dtype | None = None) -> CLIP | None:
    """The text encoders of a whole checkpoint (SD1 / SD2 / SDXL / SDXL refiner), or None if it has none.

    `dtype` (the engine's model dtype) is accepted for symmetry with the other loaders; CLIP always computes in
    float32 with `weight_dtype` storage (default float16), exactly as ComfyUI runs it.
    Only tensors under the text-encoder prefixes are read. Damaged encoders raise `ModelLoadError`.
    """
    keys = set(sd.keys())
    family = _checkpoint_family(keys)
    if family is None:
        return None
    encoders = {}
    for role, prefix in CHECKPOINT_PREFIXES[family]:
        sub = _SubDict(sd, prefix, keys)
        if role == "l" and detect_layout(sub) is None and "embeddings.token_embedding.weight" in sub:
            sub = _SubDict(sd, prefix, keys, rename="text_model.")  # old SD1 files without "text_model."
        try:
            encoders[role] = _build_encoder(role, family, sub, prefix, device=device, dtype=_weight_dtype(weight_dtype))
        except ModelLoadError as e:
            raise ModelLoadError(f"{family} text encoder at '{prefix}': {e}") from None
    return CLIP(family, encoders, embedding_dirs=embedding_dirs)


def _file_role(sd: Mapping[str, torch.Tensor], keys: set[str]) -> str:
    """Which encoder a standalone file holds, by size as ComfyUI's detection does (tiny files: "l" for HF layout)."""
    layout = detect_layout(keys)
    if layout is None:
        raise ModelLoadError("not a CLIP text encoder file: neither 'text_model.embeddings.token_embedding.weight' "
                             "nor OpenCLIP 'token_embedding.weight' + 'positional_embedding' found")
    if layout == "hf":
        layers = {k.split(".")[3] for k in keys if k.startswith("text_model.encoder.layers.")}
        if "30" in layers:
            return "g"
        return "h" if "22" in layers else "l"
    width = detect_config(sd, "gelu", keys).width
    return "h" if width == 1024 else "g"


def _strip_file_prefix(sd: Mapping[str, torch.Tensor]) -> tuple[Mapping[str, torch.Tensor], str]:
    """Standalone files sometimes keep a wrapper prefix (e.g. "transformer." or a checkpoint prefix)."""
    keys = set(sd.keys())
    if detect_layout(keys) is not None:
        return sd, ""
    for marker in ("text_model.embeddings.token_embedding.weight", "positional_embedding"):
        hits = [k[: -len(marker)] for k in keys if k.endswith(marker)]
        if len(hits) == 1:
            return _SubDict(sd, hits[0], keys), hits[0]
    return sd, ""


FILE_FAMILIES = {("stable_diffusion", ("l",)): "sd1", ("stable_diffusion", ("h",)): "sd2",
                 ("stable_diffusion", ("g",)): "sdxl_refiner", ("sdxl", ("g", "l")): "sdxl"}


def load_clip_files(state_dicts: Sequence[Mapping[str, torch.Tensor]], clip_type: str, *,
                    device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                    embedding_dirs: Sequence[str | Path] = (), weight_dtype: torch.dtype | None = None) -> CLIP:
    """CLIPLoader / DualCLIPLoader: standalone text-encoder files (HF `text_model.*` or OpenCLIP layout).

    `clip_type` is the loader's `type` input: "stable_diffusion" (one file: CLIP-L -> SD1, ViT-H -> SD2, bigG ->
    refiner-style) or "sdxl" (CLIP-L + bigG, any order). Other ComfyUI types are not supported.
    """
    found: list[tuple[str, Mapping[str, torch.Tensor], str]] = []
    for sd in state_dicts:
        sub, prefix = _strip_file_prefix(sd)
        found.append((_file_role(sub, set(sub.keys())), sub, prefix))
    roles = tuple(sorted(r for r, _, _ in found))
    if clip_type == "sdxl" and roles == ("l", "l"):  # tiny files: the wider one plays bigG
        widths = [detect_config(sub, "gelu").width for _, sub, _ in found]
        found[widths.index(max(widths))] = ("g",) + found[widths.index(max(widths))][1:]
        roles = ("g", "l")
    family = FILE_FAMILIES.get((clip_type, roles))
    if family is None:
        raise ModelLoadError(f"CLIP type {clip_type!r} with text encoder(s) {list(roles)} is not supported "
                             "(supported: stable_diffusion with one CLIP-L/ViT-H/bigG file, sdxl with CLIP-L + bigG)")
    encoders = {}
    for role, sub, prefix in sorted(found, key=lambda f: "lhg".index(f[0])):
        encoders[role] = _build_encoder(role, family, sub, prefix, device=device, dtype=_weight_dtype(weight_dtype))
    return CLIP(family, encoders, embedding_dirs=embedding_dirs)
