"""A prompt learner for open_clip text encoders: learnable context tokens in front of class names (CoOp-style).

FLPT (DFZSL), SHIP and CoOp all build on it. A prompt is

    [SOT] [ctx_1 + b] ... [ctx_n + b] [class-name tokens] [suffix tokens, e.g. "."] [EOT] [pad ...]

where ``ctx`` are learnable token embeddings (initialized from a phrase such as "a photo of a" through the frozen
token embedding, or from N(0, std²)), ``b`` is an optional per-sample bias (SHIP's generator output), and everything
else comes from the frozen token embedding. The embeddings go through the **frozen** text tower exactly as
open_clip's ``CLIP.encode_text`` does (positional embedding, transformer with its causal mask, ln_final, pooling at
the EOT token, i.e. the argmax token id, and the text projection), so with ``ctx`` equal to the phrase's embedding
and no bias the output equals ``model.encode_text(tokenizer("<phrase> <class>."))``.

The text tower is *not* registered as a submodule: ``parameters()`` and ``state_dict()`` hold only the learnable
context, so optimizers and checkpoints see nothing else, and the CLIP weights cannot change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.transformer import TextTransformer, Transformer, text_global_pool
from torch import nn

__all__ = ["DEFAULT_CTX_INIT", "PromptLearner", "TextTower", "check_fits", "check_prompts_fit", "text_tower"]

DEFAULT_CTX_INIT = "a photo of a"
Tokenizer = Callable[[list[str]], torch.Tensor]


@dataclass(frozen=True)
class TextTower:
    """References to the parts of an open_clip text encoder that a prompt goes through (not copies)."""

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor  # [L, W]
    transformer: Transformer
    ln_final: nn.Module
    text_projection: torch.Tensor | nn.Linear | None
    attn_mask: torch.Tensor | None
    pool_type: str
    eos_id: int | None
    # A causal attention mask: the pooled token never sees later positions, so they can be dropped (see encode).
    causal: bool = False

    @property
    def width(self) -> int:
        """Token embedding width W."""
        return int(self.token_embedding.weight.shape[1])

    @property
    def context_length(self) -> int:
        return int(self.positional_embedding.shape[0])

    @property
    def output_dim(self) -> int:
        """Dimension D of the (projected) text features."""
        proj = self.text_projection
        if proj is None:
            return self.width
        return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])

    def modules(self) -> list[nn.Module]:
        return [self.token_embedding, self.transformer, self.ln_final] + (
            [self.text_projection] if isinstance(self.text_projection, nn.Linear) else []
        )

    def parameters(self) -> list[torch.Tensor]:
        params: list[torch.Tensor] = [p for m in self.modules() for p in m.parameters()]
        params.append(self.positional_embedding)
        if isinstance(self.text_projection, torch.Tensor):
            params.append(self.text_projection)
        return params

    def pooled_length(self, token_ids: torch.Tensor) -> int | None:
        """Positions the pooled tokens of ``token_ids`` [B, L] depend on (1 + the last pooled position), or None
        when every position may matter (no causal mask, or pooling that is not at the EOT token)."""
        if not self.causal or token_ids.numel() == 0:
            return None
        if self.pool_type == "argmax":
            return int(token_ids.argmax(dim=-1).max()) + 1
        if self.pool_type == "eos" and self.eos_id is not None:
            return int((token_ids == self.eos_id).int().argmax(dim=-1).max()) + 1
        return None

    def encode_embeddings(self, embeddings: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Unnormalized text features [B, D] of token embeddings [B, L, W] whose token ids are ``token_ids``.

        Mirrors ``CLIP.encode_text`` from the embedding lookup on; ``token_ids`` only locate the pooled token.
        Under a causal mask the pooled (EOT) token attends only to positions up to itself, and every other layer
        acts per position, so the padding after the longest prompt's EOT is cut before the transformer: the same
        features (up to float rounding) for a fraction of the work (prompts are ~10 of 77 tokens).
        """
        length = self.pooled_length(token_ids)
        positional, mask = self.positional_embedding, self.attn_mask
        if length is not None and length < embeddings.shape[1]:
            embeddings, token_ids = embeddings[:, :length], token_ids[:, :length]
            positional = positional[:length]
            mask = mask[:length, :length] if mask is not None else None
        cast_dtype = self.transformer.get_cast_dtype()
        x = embeddings.to(cast_dtype) + positional.to(cast_dtype)
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        x = text_global_pool(x, token_ids, self.pool_type, eos_token_id=self.eos_id)
        if self.text_projection is not None:
            x = self.text_projection(x) if isinstance(self.text_projection, nn.Linear) else x @ self.text_projection
        return x


def _is_causal(mask: torch.Tensor | None) -> bool:
    """True for an additive [L, L] mask that blocks exactly the positions above the diagonal (open_clip's)."""
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
        return False
    above = torch.ones_like(mask, dtype=torch.bool).triu(1)
    return bool(torch.isneginf(mask[above]).all() and torch.isfinite(mask[~above]).all())


def _tower_of(source: CLIP | TextTransformer, pool_type: str, eos_id: int | None) -> TextTower:
    """The TextTower over ``source``'s text modules (a CLIP or its TextTransformer: the same attribute names)."""
    return TextTower(
        token_embedding=source.token_embedding,
        positional_embedding=source.positional_embedding,
        transformer=source.transformer,
        ln_final=source.ln_final,
        text_projection=source.text_projection,
        attn_mask=source.attn_mask,
        pool_type=pool_type,
        eos_id=eos_id,
        causal=_is_causal(source.attn_mask),
    )


def text_tower(model: nn.Module) -> TextTower:
    """The text tower of an open_clip ``CLIP`` or of a ``CustomTextCLIP`` with a plain ``TextTransformer``.

    Hugging Face text towers and CoCa-style towers (appended CLS token, padding masks) pool and mask differently, so
    they are refused with a ValueError rather than encoded wrongly.
    """
    if isinstance(model, CLIP):  # the tower's modules are the model's own, two of them under text_* names
        return _tower_of(model, model.text_pool_type, getattr(model, "text_eos_id", None))
    text = getattr(model, "text", None) if isinstance(model, CustomTextCLIP) else None
    if isinstance(text, TextTransformer):
        if text.cls_emb is not None or text.use_pad_mask:
            raise ValueError("prompt learning does not support text towers with a CLS token or a padding mask")
        return _tower_of(text, text.pool_type, getattr(text, "eos_id", None))
    raise ValueError(
        f"prompt learning needs an open_clip CLIP or CustomTextCLIP with a TextTransformer, got {type(model).__name__}"
    )


def check_fits(token_ids: torch.Tensor, class_names: Sequence[str]) -> None:
    """ValueError naming the first class whose tokenized prompt (a row of ``token_ids``) was cut to fit.

    open_clip's tokenizer truncates silently, ending a cut prompt in EOT at the last position; an uncut one ends in
    padding (id 0) there.
    """
    cut = (token_ids[:, -1] != 0).nonzero()
    if cut.numel():
        name = class_names[int(cut[0, 0])]
        raise ValueError(
            f"the prompt of class {name[:60]!r} does not fit in the text encoder's {token_ids.shape[1]} tokens"
        )


def check_prompts_fit(tokenizer: Tokenizer, prompts: Sequence[str], class_names: Sequence[str]) -> None:
    """:func:`check_fits` for prompts not yet tokenized (one per class), e.g. before a job starts."""
    for i in range(0, len(prompts), 4096):
        check_fits(tokenizer(list(prompts[i : i + 4096])), class_names[i : i + 4096])


@dataclass(frozen=True)
class _Prompts:
    """Tokenized prompts of one class list and the frozen embeddings around the context slots."""

    token_ids: torch.Tensor  # [C, L]
    prefix: torch.Tensor  # [C, 1, W]: SOT
    suffix: torch.Tensor  # [C, L - 1 - n_ctx, W]: class name, suffix text, EOT, padding


class PromptLearner(nn.Module):
    """Learnable context tokens + class names through a frozen open_clip text encoder -> normalized text features.

    Args:
        model: an open_clip CLIP (or CustomTextCLIP with a TextTransformer). Its text tower is frozen in place
            (``requires_grad_(False)``) and only referenced, never copied or registered.
        tokenizer: the model's open_clip tokenizer.
        n_ctx: number of context tokens. With ``ctx_init`` it defaults to (and must equal) the phrase's token count;
            without it, 4.
        ctx_init: phrase whose token embeddings initialize the context ("a photo of a"); None draws N(0, init_std²).
        init_std: standard deviation of the random init (CoOp and SHIP use 0.02).
        suffix: text after the class name ("." as in "a photo of a cat.").
        generator: torch.Generator on the model's device for a reproducible random init.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        *,
        n_ctx: int | None = None,
        ctx_init: str | None = DEFAULT_CTX_INIT,
        init_std: float = 0.02,
        suffix: str = ".",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        tower = text_tower(model)
        for p in tower.parameters():
            p.requires_grad_(False)
        # A plain attribute, not a submodule: see the module docstring.
        self._tower = tower
        self._tokenizer = tokenizer
        self.suffix = suffix
        device = tower.token_embedding.weight.device
        if ctx_init is not None:
            phrase = " ".join(ctx_init.split())
            if not phrase:
                raise ValueError("ctx_init is empty; pass None for a random init")
            phrase_ids = self._phrase_ids(phrase)
            if n_ctx is not None and n_ctx != phrase_ids.numel():
                raise ValueError(f"ctx_init {phrase!r} is {phrase_ids.numel()} tokens, but n_ctx={n_ctx}")
            n_ctx = phrase_ids.numel()
            with torch.no_grad():
                ctx = tower.token_embedding(phrase_ids.to(device)).float()
            self.prompt_prefix = phrase
        else:
            n_ctx = 4 if n_ctx is None else n_ctx
            if int(n_ctx) != n_ctx or n_ctx < 1:
                raise ValueError(f"n_ctx must be a positive integer, got {n_ctx}")
            if not (math.isfinite(init_std) and init_std > 0):
                raise ValueError(f"init_std must be finite and > 0, got {init_std}")
            ctx = torch.empty(int(n_ctx), tower.width, device=device)
            nn.init.normal_(ctx, std=init_std, generator=generator)
            # "X" is one token, so the class name starts right after the n_ctx slots (CoOp's placeholder).
            self.prompt_prefix = " ".join(["X"] * int(n_ctx))
        self.n_ctx = int(n_ctx)
        if self.n_ctx + 2 >= tower.context_length:
            raise ValueError(f"n_ctx={self.n_ctx} leaves no room in a context of {tower.context_length} tokens")
        self.ctx = nn.Parameter(ctx)  # [n_ctx, W], float32 whatever the encoder's dtype
        self._cache: dict[tuple[str, ...], _Prompts] = {}

    # ---------------------------------------------------------------------------------------------------------------
    @property
    def tower(self) -> TextTower:
        return self._tower

    @property
    def width(self) -> int:
        """Token embedding width W (the width of ``ctx`` and of a bias)."""
        return self._tower.width

    @property
    def output_dim(self) -> int:
        """Dimension D of the text features."""
        return self._tower.output_dim

    def _phrase_ids(self, phrase: str) -> torch.Tensor:
        ids = self._tokenizer([phrase])[0]
        eot = int(ids.argmax())  # open_clip's EOT id is the largest token id
        return ids[1:eot]

    def prompts(self, class_names: Sequence[str]) -> _Prompts:
        """Tokenize (once per class list) and embed the frozen parts of the prompts."""
        key = tuple(class_names)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        if not key:
            raise ValueError("class_names is empty")
        if not all(isinstance(n, str) and n.strip() for n in key):
            raise ValueError("class names must be non-empty strings")
        device = self._tower.token_embedding.weight.device
        ids = self._tokenizer([f"{self.prompt_prefix} {name}{self.suffix}" for name in key]).to(device)
        if ids.shape[1] != self._tower.context_length:
            raise ValueError(
                f"the tokenizer gives {ids.shape[1]} tokens, the encoder needs {self._tower.context_length}"
            )
        check_fits(ids, key)
        # The context must occupy exactly positions 1..n_ctx for every class, whatever the BPE merges did.
        slots = self._tokenizer([self.prompt_prefix])[0, 1 : 1 + self.n_ctx].to(device)
        if not bool((ids[:, 1 : 1 + self.n_ctx] == slots).all()):
            raise ValueError(f"the prompt prefix {self.prompt_prefix!r} does not tokenize to {self.n_ctx} fixed slots")
        with torch.no_grad():
            emb = self._tower.token_embedding(ids)
        prompts = _Prompts(token_ids=ids, prefix=emb[:, :1], suffix=emb[:, 1 + self.n_ctx :])
        if len(self._cache) >= 8:  # a handful of class lists (base, base + novel) is the normal working set
            self._cache.pop(next(iter(self._cache)), None)
        self._cache[key] = prompts
        return prompts

    def forward(
        self,
        class_names: Sequence[str],
        bias: torch.Tensor | None = None,
        class_index: torch.Tensor | None = None,
        normalize: bool = True,
    ) -> torch.Tensor:
        """Text features of prompts built from the current context.

        Args:
            class_names: the C classes.
            bias: optional per-sample bias added to every context token: [B, W], or [B, n_ctx, W] per token.
            class_index: optional [B] indices into ``class_names``: one prompt per entry (its own class).

        Returns:
            no bias: [C, D], or [B, D] with ``class_index``;
            bias: [B, D] with ``class_index`` (sample i with class class_index[i]), else [B, C, D] (every sample
            with every class). L2-normalized float32 unless ``normalize`` is False (then the encoder's dtype).
        """
        p = self.prompts(class_names)
        count = p.token_ids.shape[0]
        ctx = self.ctx
        if class_index is not None:
            class_index = torch.as_tensor(class_index, device=p.token_ids.device)
            if class_index.ndim != 1 or class_index.dtype not in (torch.int64, torch.int32):
                raise ValueError("class_index must be a 1-D integer tensor")
            if class_index.numel() and (int(class_index.min()) < 0 or int(class_index.max()) >= count):
                raise ValueError(f"class_index must lie in [0, {count})")
        if bias is None:
            idx = class_index
            rows = count if idx is None else idx.numel()
            ctx_rows = ctx.unsqueeze(0).expand(rows, -1, -1)
        else:
            b = self._check_bias(bias)
            batch = b.shape[0]
            if class_index is not None:
                if class_index.numel() != batch:
                    raise ValueError(f"bias has {batch} rows but class_index has {class_index.numel()}")
                idx = class_index
                ctx_rows = ctx.unsqueeze(0) + b  # [B, n_ctx, W]
            else:
                # Every sample with every class: row (i, c) = sample i's context with class c.
                idx = torch.arange(count, device=p.token_ids.device).repeat(batch)
                ctx_rows = (ctx.unsqueeze(0) + b).repeat_interleave(count, dim=0)
        ids = p.token_ids if idx is None else p.token_ids[idx]
        prefix = p.prefix if idx is None else p.prefix[idx]
        suffix = p.suffix if idx is None else p.suffix[idx]
        dtype = prefix.dtype
        embeddings = torch.cat([prefix, ctx_rows.to(dtype), suffix], dim=1)
        out = self._tower.encode_embeddings(embeddings, ids)
        if normalize:
            out = F.normalize(out.float(), dim=-1)
        if bias is not None and class_index is None:
            out = out.view(bias.shape[0], count, -1)
        return out

    def _check_bias(self, bias: torch.Tensor) -> torch.Tensor:
        """[B, W] or [B, n_ctx, W] -> [B, 1 or n_ctx, W] on ctx's device."""
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
            raise ValueError("bias must be a floating tensor")
        if bias.ndim == 2 and bias.shape[1] == self.width:
            bias = bias.unsqueeze(1)
        elif not (bias.ndim == 3 and bias.shape[1:] == (self.n_ctx, self.width)):
            raise ValueError(
                f"bias must have shape [B, {self.width}] or [B, {self.n_ctx}, {self.width}], got {tuple(bias.shape)}"
            )
        if bias.shape[0] < 1:
            raise ValueError("bias has no rows")
        return bias.to(self.ctx.device)

    def extra_repr(self) -> str:
        return f"n_ctx={self.n_ctx}, width={self.width}, output_dim={self.output_dim}, prefix={self.prompt_prefix!r}"
