"""The Mini-Omni language model: a Qwen2 decoder that reads 8 token streams and writes 8.

Every position carries 7 audio ids and 1 text id; their embeddings are averaged (whisper
features overwrite the audio streams where the user spoke). One head of 181120 rows scores the
text range and the 7 audio ranges. Parameter names are litgpt's, so `lit_model.pth` loads as is.

The arithmetic follows the reference op for op (fused QKV in litgpt's per-group interleave,
fp32 RMSNorm, rotate-half RoPE, the same summation order) so float32 greedy tokens match it.
"""

from collections.abc import Iterator
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from kernels import cpu_decode
from realtime.model import tokens
from realtime.model.config import ModelConfig

# Above this many rows a bf16 product on a CPU without native bf16 runs faster upcast to fp32
# (MKL's sgemm) than in torch's bf16 kernel, which slows down about linearly with the rows.
CPU_UPCAST_ROWS = 32
# From this many rows a product takes the weights packed for oneDNN, where the model has them:
# one row is as fast or faster on our GEMV, two are not (docs/kernels.md: the CPU kernels).
PACKED_MIN_ROWS = 2


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    packed: torch.Tensor | None = None,
):
    """x W^T + b, routed to the fastest path for bf16 on a CPU: oneDNN on `packed` weights
    (OmniLM.pack) from PACKED_MIN_ROWS rows, else our GEMV kernel for a decode step's few rows
    (kernels/cpu_decode.py), fp32 for a prefill's many unless the CPU has native bf16 (there
    torch's bf16 product is several times faster than the upcast)."""
    if x.device.type == "cpu" and x.dtype == torch.bfloat16:
        if packed is not None and x.numel() // x.shape[-1] >= PACKED_MIN_ROWS:
            return cpu_decode.packed_linear(x, packed, bias)
        if cpu_decode.usable(x, weight):
            return cpu_decode.gemv_bf16(x, weight, bias)
        if x.numel() // x.shape[-1] > CPU_UPCAST_ROWS and not cpu_decode.native_bf16():
            bias = None if bias is None else bias.float()
            return F.linear(x.float(), weight.float(), bias).to(x.dtype)
    return F.linear(x, weight, bias)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32, scale in the model dtype (as litgpt does).
        xf = x.float()
        xf = xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


class SwiGLU(nn.Module):
    """proj(silu(fc_1 x) * fc_2 x): litgpt's LLaMAMLP, also the whisper adapter."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int) -> None:
        super().__init__()
        self.fc_1 = nn.Linear(n_in, n_hidden, bias=False)
        self.fc_2 = nn.Linear(n_in, n_hidden, bias=False)
        self.proj = nn.Linear(n_hidden, n_out, bias=False)
        self.fc_12: torch.Tensor | None
        self.register_buffer("fc_12", None, persistent=False)  # set by fuse()
        self.fc_12_packed: torch.Tensor | None = None  # set by pack()
        self.proj_packed: torch.Tensor | None = None

    def fuse(self) -> None:
        """Store fc_1 and fc_2 as halves of one (2 hidden, in) matrix: one product per call
        instead of two. The parameters become views of it, so the state dict is unchanged."""
        self.fc_12 = torch.cat([self.fc_1.weight.data, self.fc_2.weight.data])
        self.fc_1.weight.data, self.fc_2.weight.data = self.fc_12.chunk(2)

    def _apply(self, fn, recurse=True):
        """`.to()` and the like move fc_12 with the parameters; the parameters then become its
        views again (else the moved module would hold both halves twice)."""
        super()._apply(fn, recurse)
        if self.fc_12 is not None:
            self.fc_1.weight.data, self.fc_2.weight.data = self.fc_12.chunk(2)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fc_12 is None:
            gate, up = F.linear(x, self.fc_1.weight), F.linear(x, self.fc_2.weight)
        else:
            gate, up = linear(x, self.fc_12, packed=self.fc_12_packed).chunk(2, dim=-1)
        return linear(F.silu(gate) * up, self.proj.weight, packed=self.proj_packed)

    def pack(self) -> None:
        """Keep the products' weights packed for oneDNN too (cpu_decode.pack)."""
        if self.fc_12 is None:
            self.fuse()
        assert self.fc_12 is not None  # set by fuse()
        self.fc_12_packed = cpu_decode.pack(self.fc_12)
        self.proj_packed = cpu_decode.pack(self.proj.weight)


class KVCache:
    """Keys and values for `slots` independent rows, allocated once and reused.

    A row's entries past its length are never read (the attention mask stops at each row's own
    position), so freeing a slot needs no clearing.
    """

    def __init__(self, cfg: ModelConfig, slots: int, max_seq: int, device, dtype) -> None:
        shape = (cfg.n_layer, slots, cfg.n_query_groups, max_seq, cfg.head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.slots, self.max_seq = slots, max_seq


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        qkv_rows = (cfg.n_head + 2 * cfg.n_query_groups) * cfg.head_size
        self.attn = nn.Linear(cfg.n_embd, qkv_rows, bias=cfg.add_qkv_bias)
        self.proj = nn.Linear(cfg.n_head * cfg.head_size, cfg.n_embd, bias=False)
        self.attn_packed: torch.Tensor | None = None  # set by pack()
        self.proj_packed: torch.Tensor | None = None

    def pack(self) -> None:
        """Keep the products' weights packed for oneDNN too (cpu_decode.pack)."""
        self.attn_packed = cpu_decode.pack(self.attn.weight)
        self.proj_packed = cpu_decode.pack(self.proj.weight)

    def forward(self, x, cos, sin, cache: KVCache, layer: int, slots, positions, mask):
        cfg = self.cfg
        B, T, _ = x.shape
        q_per_kv = cfg.n_head // cfg.n_query_groups
        # litgpt packs each query group as [q_0 .. q_{q_per_kv-1}, k, v].
        qkv = linear(x, self.attn.weight, self.attn.bias, packed=self.attn_packed)
        if T == 1 and _rows_in_c(qkv, cos, cache, slots):
            rows = zip(slots.tolist(), positions[:, 0].tolist(), strict=True)
            y = torch.stack([
                cpu_decode.rope_attend_bf16(
                    qkv[b, 0], cos[b, 0, 0], sin[b, 0, 0], cache.k[layer, slot],
                    cache.v[layer, slot], pos, q_per_kv,
                )
                for b, (slot, pos) in enumerate(rows)
            ])  # fmt: skip
            return linear(y.view(B, 1, -1), self.proj.weight, packed=self.proj_packed)
        qkv = qkv.view(B, T, cfg.n_query_groups, q_per_kv + 2, cfg.head_size)
        qkv = qkv.permute(0, 2, 3, 1, 4)  # (B, groups, q_per_kv + 2, T, hs)
        # RoPE on queries and keys together: (B, groups * (q_per_kv + 1), T, hs)
        qk = apply_rope(qkv[:, :, : q_per_kv + 1].reshape(B, -1, T, cfg.head_size), cos, sin)
        qk = qk.view(B, cfg.n_query_groups, q_per_kv + 1, T, cfg.head_size)
        q = qk[:, :, :q_per_kv].reshape(B, cfg.n_head, T, cfg.head_size)
        k = qk[:, :, q_per_kv]  # (B, groups, T, hs)
        v = qkv[:, :, q_per_kv + 1]

        k_all, v_all = _cache_write_read(cache, layer, slots, positions, k, v, mask.shape[-1])
        if T == 1:
            y = _decode_attention(q, k_all, v_all, mask, cfg)
        else:
            y = F.scaled_dot_product_attention(
                q, k_all, v_all, attn_mask=mask, scale=cfg.head_size**-0.5, enable_gqa=True
            )  # (B, n_head, T, hs)
        y = y.transpose(1, 2).reshape(B, T, cfg.n_head * cfg.head_size)
        return linear(y, self.proj.weight, packed=self.proj_packed)


def _rows_in_c(qkv: torch.Tensor, cos, cache: KVCache, slots: torch.Tensor) -> bool:
    """CPU rows in bf16 at one position each: kernels/cpu_decode.py does a row's RoPE, cache
    write and attention in one call (the same roundings as the torch path below; RoPE tables
    in fp32), one call per row: in torch, ~30 tiny ops per layer and row cost more than the
    attention itself."""
    return (
        qkv.dtype == torch.bfloat16 == cache.k.dtype
        and cos.dtype == torch.float32
        and qkv.device.type == "cpu"
        and slots.device.type == "cpu"
        and cpu_decode.available()
    )


def _decode_attention(q, k, v, mask, cfg: ModelConfig) -> torch.Tensor:
    """One query per row: q (B, n_head, 1, hs), k/v (B, groups, L, hs), mask (B, 1, 1, L).

    Three small fp32 matmuls beat SDPA's flash kernel's fixed cost on a CPU at this size (and
    bf16 matmuls this small take a slow path there); the grouped queries of one key/value head
    are its rows.
    """
    B, groups, L, hs = k.shape
    q = q.view(B, groups, -1, hs).float()  # (B, groups, q_per_kv, hs)
    scores = (q @ k.float().transpose(-1, -2)) * hs**-0.5  # (B, groups, q_per_kv, L)
    if B > 1:  # a lone row attends to everything cached before it
        scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v.float()  # (B, groups, q_per_kv, hs)
    return out.to(v.dtype).view(B, cfg.n_head, 1, hs)


def _cache_write_read(cache: KVCache, layer, slots, positions, k, v, length: int):
    """Store k/v (B, groups, T, hs) at each row's positions; return each row's first `length`."""
    k_layer, v_layer = cache.k[layer], cache.v[layer]  # (slots, groups, max_seq, hs)
    if slots.shape[0] == 1 and slots.device.type == "cpu":
        # One row at consecutive positions (a CPU step or a prefill): plain slices, no gathers.
        slot, start = int(slots[0]), int(positions[0, 0])
        k_layer[slot, :, start : start + k.shape[2]] = k[0]
        v_layer[slot, :, start : start + v.shape[2]] = v[0]
        return k_layer[slot : slot + 1, :, :length], v_layer[slot : slot + 1, :, :length]
    rows = slots[:, None]  # (B, 1) broadcasts against positions (B, T)
    k_layer[rows, :, positions] = k.transpose(1, 2).to(k_layer.dtype)  # indexed as (B, T, g, hs)
    v_layer[rows, :, positions] = v.transpose(1, 2).to(v_layer.dtype)
    return k_layer[slots, :, :length], v_layer[slots, :, :length]  # (B, groups, length, hs)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm_1 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm_2 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.n_embd, cfg.intermediate_size, cfg.n_embd)

    def forward(self, x, cos, sin, cache, layer, slots, positions, mask):
        x = self.attn(self.norm_1(x), cos, sin, cache, layer, slots, positions, mask) + x
        return self.mlp(self.norm_2(x)) + x


class Blocks(nn.ModuleList):
    """The decoder's blocks in order (an nn.ModuleList whose items are typed as blocks)."""

    def __iter__(self) -> Iterator[Block]:
        return cast(Iterator[Block], super().__iter__())


class Transformer(nn.ModuleDict):
    """litgpt's `transformer` container (its names are the checkpoint's), with its entries
    typed: nn.Module's attribute lookup alone gives mypy `Tensor | Module`."""

    wte: nn.Embedding
    h: Blocks
    ln_f: RMSNorm


class OmniLM(nn.Module):
    """Decoder over (B, T, 8) token streams with an optional whisper-feature overwrite."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.whisper_adapter = SwiGLU(cfg.whisper_adapter_dim, cfg.intermediate_size, cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        self.transformer = Transformer(
            dict(
                wte=nn.Embedding(cfg.padded_vocab_size, cfg.n_embd),
                h=Blocks(Block(cfg) for _ in range(cfg.n_layer)),
                ln_f=RMSNorm(cfg.n_embd, cfg.norm_eps),
            )
        )
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in the checkpoint
        cos, sin = rope_cache(cfg.block_size, cfg.head_size, cfg.rope_base)
        self.cos: torch.Tensor
        self.sin: torch.Tensor
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.text_head_packed: torch.Tensor | None = None  # set by pack()
        self.audio_head_packed: torch.Tensor | None = None

    def adapt(self, features: torch.Tensor) -> torch.Tensor:
        """Whisper features (..., whisper_dim) -> audio-stream embeddings (..., n_embd)."""
        return self.whisper_adapter(features.to(self.lm_head.weight.dtype))

    def embed(
        self,
        ids: torch.Tensor,
        audio: torch.Tensor | None = None,
        audio_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean of the 8 stream embeddings; (B, T, 8) ids -> (B, T, C).

        Where `audio_mask` (B, T) is set, the 7 audio streams take `audio` (B, T, C) (adapted
        whisper features) instead of their ids' embeddings; the text stream keeps its id.
        """
        emb = self.transformer.wte(ids)  # (B, T, 8, C)
        if audio is not None:
            assert audio_mask is not None, "audio comes with its audio_mask"
            audio_streams = audio[:, :, None, :].expand(-1, -1, tokens.AUDIO_LAYERS, -1)
            keep = emb[:, :, : tokens.AUDIO_LAYERS]
            emb = torch.cat(
                (
                    torch.where(audio_mask[..., None, None], audio_streams, keep),
                    emb[:, :, tokens.AUDIO_LAYERS :],
                ),
                dim=2,
            )
        x = emb[:, :, 0]
        for stream in range(1, tokens.STREAMS):  # left to right, like the reference's sum
            x = x + emb[:, :, stream]
        return x / tokens.STREAMS

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        cache: KVCache,
        length: int | None = None,
    ) -> torch.Tensor:
        """Run the blocks over embeddings x (B, T, C) at `positions` (B, T) of cache rows `slots`
        (B,), writing their keys/values. Returns the final-norm hidden states (B, T, C).

        `length`: the cache positions attention reads (masked causally), at least the largest
        position + 1; by default exactly that, read back from the device."""
        if length is None:
            length = int(positions.max()) + 1
        key_pos = torch.arange(length, device=x.device)
        mask = (key_pos[None, None, :] <= positions[:, :, None])[:, None]  # (B, 1, T, length)
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # (B, 1, T, hs)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cos, sin, cache, layer, slots, positions, mask)
        return self.transformer.ln_f(x)

    def text_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (N, 152000): the text range of the head."""
        text_head = self.lm_head.weight[: tokens.TEXT_VOCAB_PADDED]
        return linear(h, text_head, packed=self.text_head_packed)

    def audio_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (N, 7, 4160): the 7 audio ranges, layer-local ids."""
        audio_head = self.lm_head.weight[tokens.TEXT_VOCAB_PADDED :]
        logits = linear(h, audio_head, packed=self.audio_head_packed)
        return logits.view(h.shape[0], tokens.AUDIO_LAYERS, tokens.AUDIO_LAYER_VOCAB)

    def fuse(self) -> "OmniLM":
        """Fuse each SwiGLU's fc_1/fc_2 (in place, state dict unchanged); call after .to()."""
        for module in self.modules():
            if isinstance(module, SwiGLU):
                module.fuse()
        return self

    def pack(self) -> bool:
        """On a CPU where cpu_decode.packing() (AMX), keep every product's bf16 weights also
        packed for oneDNN, which steps of several rows and prefills then take (a copy: 1.04 GB
        at the released shapes). Call after fuse() -> whether it packed."""
        head = self.lm_head.weight
        if head.device.type != "cpu" or head.dtype != torch.bfloat16 or not cpu_decode.packing():
            return False
        for module in self.modules():
            if isinstance(module, SwiGLU | Attention):
                module.pack()
        self.text_head_packed = cpu_decode.pack(head[: tokens.TEXT_VOCAB_PADDED])
        self.audio_head_packed = cpu_decode.pack(head[tokens.TEXT_VOCAB_PADDED :])
        return True

    def new_cache(self, slots: int, max_seq: int | None = None) -> KVCache:
        w = self.lm_head.weight
        return KVCache(self.cfg, slots, max_seq or self.cfg.block_size, w.device, w.dtype)


def rope_cache(seq_len: int, n_elem: int, base: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (seq_len, n_elem) for neox rotate-half RoPE, computed as litgpt does."""
    theta = 1.0 / (base ** (torch.arange(0, n_elem, 2).float() / n_elem))
    angles = torch.outer(torch.arange(seq_len) / 1, theta).repeat(1, 2)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on x (B, H, T, hs) with cos/sin broadcastable to it."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return ((x * cos) + (rotated * sin)).to(x.dtype)
