"""The pyramidal MMDiT of Neodragon / Pyramid-Flow (SD3-style joint blocks over a causal clip history).

One forward denoises one *noisy clip* (the last latent frame(s) at the current pyramid stage) given a
chronological list of clean *history clips* that may sit at lower resolutions. All clips are patchified into one
token sequence; attention is bidirectional inside a frame, causal across frames, and every image token sees all
valid text. Only the noisy clip's velocity is returned.

Parameter names follow the official checkpoints (``attn.norm_add_q`` etc.) so conversion is a key-for-key copy.
Computationally the forward differs from the reference only where results are provably identical:
padded text tokens may be dropped, queries of the last frame attend without a mask (fused kernels), and the
final block computes only the noisy clip's tokens (the rest is discarded by the reference anyway).
"""

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import FeedForward
from diffusers.models.embeddings import CombinedTimestepTextProjEmbeddings, get_1d_sincos_pos_embed_from_grid
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero, RMSNorm
from torch import nn

from ...utils.cuda_graphs import CUDAGraphRunner


def sincos_2d_crop(dim: int, grid_size: int, base_size: int, top: int, left: int, height: int, width: int):
    """Rows ``top:top+height`` x cols ``left:left+width`` of SD3's 2-D sincos table, computed directly.

    Equal to slicing the full ``grid_size``² table (positions are float32 ``k / (grid_size / base_size)``,
    frequencies float64, as the reference builds it) without materialising it. Returns float32 [h*w, dim];
    channels ``[:dim/2]`` encode the column, ``[dim/2:]`` the row.
    """
    step = grid_size / base_size
    rows = torch.arange(grid_size, dtype=torch.float32)[top : top + height] / step
    cols = torch.arange(grid_size, dtype=torch.float32)[left : left + width] / step
    grid_rows, grid_cols = torch.meshgrid(rows, cols, indexing="ij")
    emb_col = get_1d_sincos_pos_embed_from_grid(dim // 2, grid_cols.double(), dtype=torch.float64)
    emb_row = get_1d_sincos_pos_embed_from_grid(dim // 2, grid_rows.double(), dtype=torch.float64)
    return torch.cat([emb_col, emb_row], dim=1).float()


class PyramidPatchEmbed(nn.Module):
    """Per-frame 2-D patchify plus the stage-dependent spatial sincos embedding.

    The crop is centred on the grid of the *noisy* clip; lower-resolution history clips get that same crop
    bilinearly resized to their own grid, so a history frame covers the same spatial extent as the frame it
    conditions. Crops are cached (float32) because each generation reuses a handful of shapes.
    """

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int, pos_embed_max_size: int, base_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.pos_embed_max_size = pos_embed_max_size
        self.base_size = base_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self._pos_cache = {}

    def spatial_embedding(self, grid: tuple[int, int], target_grid: tuple[int, int], device) -> torch.Tensor:
        key = (grid, target_grid, str(device))
        if key not in self._pos_cache:
            th, tw = target_grid
            if th > self.pos_embed_max_size or tw > self.pos_embed_max_size:
                raise ValueError(
                    f"A {th}x{tw} token grid exceeds pos_embed_max_size={self.pos_embed_max_size}; "
                    "use a smaller height/width."
                )
            top, left = (self.pos_embed_max_size - th) // 2, (self.pos_embed_max_size - tw) // 2
            crop = sincos_2d_crop(self.embed_dim, self.pos_embed_max_size, self.base_size, top, left, th, tw)
            if grid != target_grid:
                crop = crop.reshape(1, th, tw, -1).permute(0, 3, 1, 2)
                crop = F.interpolate(crop, size=grid, mode="bilinear").permute(0, 2, 3, 1).reshape(-1, self.embed_dim)
            self._pos_cache[key] = crop.to(device)
        return self._pos_cache[key]

    def forward(self, clips: Sequence[torch.Tensor]) -> torch.Tensor:
        """clips: chronological [B, C, T, H, W] latents; returns [B, sum(T*h*w), D] tokens (frame-major)."""
        target_grid = (clips[-1].shape[-2] // self.patch_size, clips[-1].shape[-1] // self.patch_size)
        tokens = []
        for clip in clips:
            b, _, t, h, w = clip.shape
            x = self.proj(clip.transpose(1, 2).reshape(b * t, -1, h, w))
            x = x.flatten(2).transpose(1, 2)
            pos = self.spatial_embedding((h // self.patch_size, w // self.patch_size), target_grid, x.device)
            tokens.append((x + pos.to(x.dtype)).reshape(b, -1, self.embed_dim))
        return torch.cat(tokens, dim=1)


@dataclass
class JointAttentionLayout:
    """Everything the joint attention needs that depends only on the token layout, built once per forward.

    Queries are split in two groups. *Free* queries (the tokens of the last frame, and text when there is a
    single frame) may attend to every valid key, so they run unmasked (or with key padding only) and PyTorch
    can use a fused kernel. The remaining *prefix* queries use the reference's exact boolean rule
    ``same_group(i, j) and frame(i) >= frame(j)``, where padded text tokens form their own group.
    """

    num_free: int  # trailing query tokens (in [text; image] order) with unrestricted attention
    prefix_mask: torch.Tensor | None  # [B|1, 1, S - num_free, S] bool, None when num_free == S
    key_padding: torch.Tensor | None  # [B, 1, 1, S] bool, None when all text is valid
    rope: tuple[torch.Tensor, torch.Tensor] | None  # cos, sin [N_img, 1, D_head/2] fp32 (None: 1 frame)
    num_text: int
    num_last: int  # image tokens of the noisy clip


def apply_temporal_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2j], x[2j+1]) in fp32, as the reference does; x is [B, N, H, D]."""
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([cos * x0 - sin * x1, sin * x0 + cos * x1], dim=-1)
    return out.flatten(-2).to(x.dtype)


class NeodragonJointAttention(nn.Module):
    """Joint text/image attention with qk RMSNorm and temporal RoPE; names match the official checkpoints."""

    def __init__(self, dim: int, num_heads: int, qk_norm_eps: float, context_pre_only: bool):
        super().__init__()
        self.heads = num_heads
        self.head_dim = dim // num_heads
        self.context_pre_only = context_pre_only
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.add_q_proj, self.add_k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.add_v_proj = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(self.head_dim, eps=qk_norm_eps)
        self.norm_k = RMSNorm(self.head_dim, eps=qk_norm_eps)
        self.norm_add_q = RMSNorm(self.head_dim, eps=qk_norm_eps)
        self.norm_add_k = RMSNorm(self.head_dim, eps=qk_norm_eps)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        if not context_pre_only:
            self.to_add_out = nn.Linear(dim, dim)
        # fused layer -> the projections it replaces (fuse_projections): q, k and v of each stream, but only k and v
        # in the context-pre-only block (its image queries may cover fewer tokens than its keys, and its text
        # queries are unused when it runs ``last_only``)
        if context_pre_only:
            self.fusions = {"to_kv": ("to_k", "to_v"), "to_added_kv": ("add_k_proj", "add_v_proj")}
        else:
            self.fusions = {"to_qkv": ("to_q", "to_k", "to_v"),
                            "to_added_qkv": ("add_q_proj", "add_k_proj", "add_v_proj")}

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim))

    @property
    def fused_projections(self) -> bool:
        return any(name in self._modules for name in self.fusions)

    def fuse_projections(self):
        """Replace the separate projections of each stream by one linear layer (their weights stacked): one
        matrix multiply of N x 3D instead of three of N x D, which runs closer to the GPU's peak. The originals are
        removed (no weight is held twice); [`unfuse_projections`] restores them."""
        if self.fused_projections:
            return
        kinds = {name: type(getattr(self, name)) for names in self.fusions.values() for name in names}
        if any(kind is not nn.Linear for kind in kinds.values()):
            raise ValueError(f"Only plain nn.Linear projections can be fused, not {sorted(map(str, kinds.values()))} "
                             "(fuse before float8 weights; unload LoRA adapters first)")
        for fused, names in self.fusions.items():
            parts = [getattr(self, name) for name in names]
            layer = nn.Linear(parts[0].in_features, sum(part.out_features for part in parts),
                              device=parts[0].weight.device, dtype=parts[0].weight.dtype)
            with torch.no_grad():
                layer.weight.copy_(torch.cat([part.weight for part in parts]))
                layer.bias.copy_(torch.cat([part.bias for part in parts]))
            layer.requires_grad_(parts[0].weight.requires_grad)
            self._swap_modules(names, {fused: layer})

    def unfuse_projections(self):
        """Undo [`fuse_projections`]: the separate projections again, with the same weights."""
        if not self.fused_projections:
            return
        for fused, names in self.fusions.items():
            layer = self._modules[fused]
            width = layer.out_features // len(names)
            parts = {}
            for name, weight, bias in zip(names, layer.weight.split(width), layer.bias.split(width)):
                part = nn.Linear(layer.in_features, width, device=weight.device, dtype=weight.dtype)
                with torch.no_grad():
                    part.weight.copy_(weight)
                    part.bias.copy_(bias)
                parts[name] = part.requires_grad_(layer.weight.requires_grad)
            self._swap_modules((fused,), parts)

    def _swap_modules(self, old: tuple[str, ...], new: dict[str, nn.Module]):
        """Replace the submodules ``old`` by ``new`` where the first of ``old`` stood (state-dict order kept)."""
        modules = {}
        for name, module in self._modules.items():
            if name == old[0]:
                modules.update(new)
            elif name not in old:
                modules[name] = module
        self._modules.clear()
        self._modules.update(modules)

    def _project(self, x: torch.Tensor, fused: str) -> tuple[torch.Tensor, ...]:
        """The projections that ``fused`` stands for, of ``x``: through that layer when the block is fused."""
        names = self.fusions[fused]
        if fused in self._modules:
            return self._modules[fused](x).chunk(len(names), dim=-1)
        return tuple(getattr(self, name)(x) for name in names)

    def forward(self, img: torch.Tensor, txt: torch.Tensor, layout: JointAttentionLayout, last_only: bool = False):
        """img [B, N, D], txt [B, L, D] -> (img_out, txt_out).

        ``last_only`` (final block): queries only for the noisy clip's tokens, whose outputs are all that the
        model returns; keys and values still cover the whole sequence.
        """
        if self.context_pre_only:
            k, v = self._project(img, "to_kv")
            q = self.to_q(img[:, -layout.num_last :] if last_only else img)
            ck, cv = self._project(txt, "to_added_kv")
            cq = None if last_only else self.add_q_proj(txt)
        else:
            q, k, v = self._project(img, "to_qkv")
            cq, ck, cv = self._project(txt, "to_added_qkv")
        q, k, v = self.norm_q(self._heads(q)), self.norm_k(self._heads(k)), self._heads(v)
        if layout.rope is not None:
            cos, sin = layout.rope
            k = apply_temporal_rope(k, cos, sin)
            q = apply_temporal_rope(q, cos[-q.shape[1] :], sin[-q.shape[1] :])
        ck, cv = self.norm_add_k(self._heads(ck)), self._heads(cv)
        keys = torch.cat([ck, k], dim=1).transpose(1, 2)
        values = torch.cat([cv, v], dim=1).transpose(1, 2)
        num_text = txt.shape[1]

        if last_only:
            out = self._attend(q, keys, values, layout, first_query=keys.shape[2] - q.shape[1])
            return self.to_out[0](out), None

        cq = self.norm_add_q(self._heads(cq))
        out = self._attend(torch.cat([cq, q], dim=1), keys, values, layout, first_query=0)
        img_out = self.to_out[0](out[:, num_text:])
        txt_out = None if self.context_pre_only else self.to_add_out(out[:, :num_text])
        return img_out, txt_out

    @staticmethod
    def _attend(queries, keys, values, layout: JointAttentionLayout, first_query: int) -> torch.Tensor:
        """Queries [B, Q, H, d] are the sequence positions ``first_query:`` of the full [text; image] order."""
        seq_len = keys.shape[2]
        split = seq_len - layout.num_free  # positions >= split are free queries
        q = queries.transpose(1, 2)
        outs = []
        if first_query < split:
            mask = layout.prefix_mask[:, :, first_query:split]
            outs.append(F.scaled_dot_product_attention(q[:, :, : split - first_query], keys, values, attn_mask=mask))
        free_q = q[:, :, max(split - first_query, 0) :]
        if free_q.shape[2] > 0:
            outs.append(F.scaled_dot_product_attention(free_q, keys, values, attn_mask=layout.key_padding))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        return out.transpose(1, 2).flatten(2)


class NeodragonTransformerBlock(nn.Module):
    """SD3 joint block (adaLN-Zero on both streams); the last block is context-pre-only (text is only read)."""

    def __init__(self, dim: int, num_heads: int, qk_norm_eps: float, context_pre_only: bool):
        super().__init__()
        self.context_pre_only = context_pre_only
        self.norm1 = AdaLayerNormZero(dim)
        if context_pre_only:
            self.norm1_context = AdaLayerNormContinuous(dim, dim, elementwise_affine=False, eps=1e-6)
        else:
            self.norm1_context = AdaLayerNormZero(dim)
        self.attn = NeodragonJointAttention(dim, num_heads, qk_norm_eps, context_pre_only)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim=dim, dim_out=dim, activation_fn="gelu-approximate")
        if not context_pre_only:
            self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.ff_context = FeedForward(dim=dim, dim_out=dim, activation_fn="gelu-approximate")

    def forward(self, img, txt, temb, layout: JointAttentionLayout, last_only: bool = False):
        """Returns (img, txt); with ``last_only`` img holds only the noisy clip's tokens and txt is None."""
        if last_only and not self.context_pre_only:
            raise ValueError("last_only is only meaningful for the context-pre-only final block")
        norm_img, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(img, emb=temb)
        if self.context_pre_only:
            norm_txt = self.norm1_context(txt, temb)
        else:
            norm_txt, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(txt, emb=temb)

        attn_img, attn_txt = self.attn(norm_img, norm_txt, layout, last_only=last_only)
        if last_only:
            img = img[:, -layout.num_last :]
        img = img + gate_msa.unsqueeze(1) * attn_img
        norm_img = self.norm2(img) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        img = img + gate_mlp.unsqueeze(1) * self.ff(norm_img)

        if self.context_pre_only:
            return img, None
        txt = txt + c_gate_msa.unsqueeze(1) * attn_txt
        norm_txt = self.norm2_context(txt) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
        txt = txt + c_gate_mlp.unsqueeze(1) * self.ff_context(norm_txt)
        return img, txt


def temporal_rope_frequencies(frame_ids: torch.Tensor, head_dim: int, theta: float):
    """cos/sin [N, 1, head_dim/2] (fp32) for per-token frame indices: 1-D RoPE over the whole head dim."""
    omega = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=frame_ids.device) / head_dim)
    angles = frame_ids.double()[:, None] * omega
    return angles.cos().float()[:, None], angles.sin().float()[:, None]


class NeodragonTransformer3DModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    r"""The pyramidal, temporally causal MMDiT denoiser of Neodragon (18 blocks; 24 for Pyramid-Flow).

    Args:
        patch_size: spatial patch size (per frame).
        in_channels: latent channels (also the output channels).
        num_layers: number of joint blocks kept (the last one is context-pre-only).
        attention_head_dim, num_attention_heads: width = heads x head dim (64 x 24 = 1536).
        pooled_projection_dim: size of the pooled text vector (CLIP-L 768 + CLIP-G 1280).
        context_embedder_dim: when set, a ``context_embedder`` Linear(context_embedder_dim -> width) projects the
            text tokens inside the model (unpruned Pyramid-Flow, fed by T5-XXL); Neodragon leaves it ``None``
            because its ContextAdapter already outputs the width.
        sample_size: sets the sincos ``base_size`` = sample_size // patch_size, as in SD3.
        pos_embed_max_size: side of the sincos grid the per-stage crops are taken from.
        qk_norm_eps: epsilon of the q/k RMSNorms (1e-5 in the reference).
        rope_theta: base of the temporal RoPE.
        block_origin: for each kept block, its index in the model it was pruned from (provenance for pruning).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["NeodragonTransformerBlock"]
    _skip_layerwise_casting_patterns = ["pos_embed", "norm"]
    _repeated_blocks = ["NeodragonTransformerBlock"]  # for ModelMixin.compile_repeated_blocks()

    @register_to_config
    def __init__(
        self,
        patch_size: int = 2,
        in_channels: int = 16,
        num_layers: int = 18,
        attention_head_dim: int = 64,
        num_attention_heads: int = 24,
        pooled_projection_dim: int = 2048,
        context_embedder_dim: int | None = None,
        sample_size: int = 128,
        pos_embed_max_size: int = 192,
        qk_norm_eps: float = 1e-5,
        rope_theta: float = 10000.0,
        block_origin: list[int] | None = None,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if block_origin is not None and len(block_origin) != num_layers:
            raise ValueError(f"block_origin has {len(block_origin)} entries but num_layers is {num_layers}")
        dim = attention_head_dim * num_attention_heads
        self.inner_dim = dim
        self.pos_embed = PyramidPatchEmbed(patch_size, in_channels, dim, pos_embed_max_size, sample_size // patch_size)
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(dim, pooled_projection_dim)
        self.context_embedder = nn.Linear(context_embedder_dim, dim) if context_embedder_dim else None
        self.transformer_blocks = nn.ModuleList(
            [
                NeodragonTransformerBlock(dim, num_attention_heads, qk_norm_eps, context_pre_only=i == num_layers - 1)
                for i in range(num_layers)
            ]
        )
        self.norm_out = AdaLayerNormContinuous(dim, dim, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(dim, patch_size * patch_size * in_channels)
        self.gradient_checkpointing = False
        self._layout_cache = {}
        self._cuda_graphs = None

    def _layout(self, clips, text_mask: torch.Tensor | None, num_text: int, device) -> JointAttentionLayout:
        """The attention layout of this token sequence.

        Everything that depends only on the shapes is cached, so repeated calls do no host work and CUDA-graph
        capture never copies from the host; only a text padding mask (batches of prompts of different lengths)
        adds per-call device work.
        """
        p = self.config.patch_size
        frame_tokens = []  # tokens per frame, chronological
        for clip in clips:
            frame_tokens += [(clip.shape[-2] // p) * (clip.shape[-1] // p)] * clip.shape[2]
        key = (tuple(frame_tokens), clips[-1].shape[2], num_text, str(device))
        if key not in self._layout_cache:
            num_frames = len(frame_tokens)
            seq_len = num_text + sum(frame_tokens)
            frame_ids = torch.repeat_interleave(torch.arange(num_frames), torch.tensor(frame_tokens)).to(device)
            rope = None
            if num_frames > 1:
                rope = temporal_rope_frequencies(frame_ids, self.config.attention_head_dim, self.config.rope_theta)
            num_free = seq_len if num_frames == 1 else frame_tokens[-1]
            prefix_mask = None
            if num_free < seq_len:
                tpos = torch.cat([torch.zeros(num_text, dtype=frame_ids.dtype, device=device), frame_ids])
                prefix_mask = (tpos[: seq_len - num_free, None] >= tpos[None, :])[None, None]
            num_last = clips[-1].shape[2] * frame_tokens[-1]
            self._layout_cache[key] = JointAttentionLayout(num_free, prefix_mask, None, rope, num_text, num_last)
        layout = self._layout_cache[key]
        if text_mask is None:
            return layout

        seq_len = layout.num_text + sum(frame_tokens)
        valid = torch.cat([text_mask.bool(), text_mask.new_ones(text_mask.shape[0], seq_len - num_text).bool()], 1)
        key_padding = valid[:, None, None, :]
        prefix_mask = layout.prefix_mask
        if prefix_mask is not None:
            # Reference rule: padded text tokens form a group of their own (they only see each other).
            rows = prefix_mask.shape[2]
            prefix_mask = prefix_mask & (valid[:, None, :rows, None] == valid[:, None, None, :])
        return replace(layout, prefix_mask=prefix_mask, key_padding=key_padding)

    def enable_cuda_graphs(self, enabled: bool = True):
        """Replay each input shape's forward from a captured CUDA graph (inference on CUDA only).

        A generation calls the model with a handful of fixed shapes (one per stage and history length), and at
        batch 1 each call is bound by kernel-launch overhead, not by the GPU. The first call of a shape runs
        eagerly (filling the caches), the second captures a graph, later ones copy their inputs into the
        graph's static buffers and replay it. Outputs are cloned, so callers never see a buffer that a later
        replay overwrites. Eager for autograd and on the CPU; when the weights move (``.to()``, offload) the
        graphs are dropped and captured again. See :mod:`diffusers_neodragon.utils.cuda_graphs`.
        """
        self._cuda_graphs = CUDAGraphRunner(self._forward_impl, clone_outputs=True, weights=self) if enabled else None
        return self

    def fuse_qkv_projections(self):
        """Compute each block's query, key and value projections of a stream with one matrix multiply (diffusers'
        name for it): on a GPU the larger multiply runs closer to the peak. Inference only: the separate layers are
        replaced (no weight is held twice), so fuse plain weights before float8 weights, not with LoRA adapters
        loaded, and call [`unfuse_qkv_projections`] before ``save_pretrained``. Outputs change only by rounding."""
        for block in self.transformer_blocks:
            block.attn.fuse_projections()
        if self._cuda_graphs is not None:
            self._cuda_graphs.reset()  # the captured graphs read the separate weights
        return self

    def unfuse_qkv_projections(self):
        """Undo [`fuse_qkv_projections`]."""
        for block in self.transformer_blocks:
            block.attn.unfuse_projections()
        if self._cuda_graphs is not None:
            self._cuda_graphs.reset()
        return self

    # The signature stays ModelMixin's (through __wrapped__): pipelines pass `variant` only to methods that name it.
    @functools.wraps(ModelMixin.save_pretrained, assigned=("__module__", "__name__", "__qualname__"))
    def save_pretrained(self, *args, **kwargs):
        """``ModelMixin.save_pretrained``, refused while the projections are fused: the folder must keep the
        checkpoint layout that every loader (and the official code) reads."""
        if any(block.attn.fused_projections for block in self.transformer_blocks):
            raise ValueError("The transformer's q/k/v projections are fused: call unfuse_qkv_projections() before "
                             "save_pretrained (fused layers are an inference-time layout, not a checkpoint format).")
        return super().save_pretrained(*args, **kwargs)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor | None = None,
        history: Sequence[torch.Tensor] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        *,
        timestep_proj: torch.Tensor | None = None,
        attention_bias: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        r"""Predict the velocity (noisier minus cleaner endpoint) of the noisy clip.

        Args:
            hidden_states: the noisy clip [B, C, T, H, W] at the current stage's resolution.
            encoder_hidden_states: text tokens [B, L, width] (already through the ContextAdapter), or
                [B, L, context_embedder_dim] when the model has a ``context_embedder``.
            pooled_projections: pooled text vector [B, pooled_projection_dim].
            timestep: raw timestep in (0, 1000], scalar or [B].
            history: chronological clean clips [B, C, T_i, H_i, W_i] (any resolution whose grid fits) that the
                noisy clip is conditioned on; ``None`` or empty for the first frame.
            encoder_attention_mask: [B, L] with 1 for real tokens, 0 for padding; ``None`` = all real.

        Precomputed inputs, for callers that fix the token layout ahead of time (static-shape graphs for NPUs, whose
        history slots are zero-padded); each replaces what the model would otherwise derive from the shapes, so
        with values that describe the same layout the output is unchanged:

            timestep_proj: [B|1, 256] sinusoidal projection of the timestep (``time_text_embed.time_proj``, see
                :meth:`timestep_projection`), instead of ``timestep``.
            attention_bias: additive float mask [B|1, 1, S, S] over the ``[text; image tokens]`` sequence (0 where
                query i may see key j, a large negative value elsewhere), instead of the causal frame rule and
                ``encoder_attention_mask``; every query then runs through it.
            rotary_emb: temporal RoPE ``(cos, sin)``, each [N_img, 1, head_dim / 2] (see
                :func:`temporal_rope_frequencies`), instead of the frame indices of the clips.
        """
        clips = [*(history or []), hidden_states]
        for clip in clips:
            if clip.ndim != 5 or clip.shape[1] != self.config.in_channels or clip.shape[0] != hidden_states.shape[0]:
                raise ValueError(
                    f"Every clip must be [B={hidden_states.shape[0]}, {self.config.in_channels}, T, H, W]; "
                    f"got {tuple(clip.shape)}"
                )
            if clip.shape[-1] % self.config.patch_size or clip.shape[-2] % self.config.patch_size:
                raise ValueError(f"Clip H and W must be multiples of patch_size; got {tuple(clip.shape)}")
        batch_size = hidden_states.shape[0]
        if encoder_attention_mask is not None and encoder_attention_mask.shape != encoder_hidden_states.shape[:2]:
            raise ValueError(
                f"encoder_attention_mask {tuple(encoder_attention_mask.shape)} must match the text tokens "
                f"{tuple(encoder_hidden_states.shape[:2])}"
            )
        if (timestep is None) == (timestep_proj is None):
            raise ValueError("Give exactly one of `timestep` and `timestep_proj`")
        if attention_bias is not None and encoder_attention_mask is not None:
            raise ValueError("`attention_bias` already masks the padded text: pass no `encoder_attention_mask` with it")
        if timestep is not None:
            timestep = torch.as_tensor(timestep, device=hidden_states.device).reshape(-1).expand(batch_size)
        inputs = (hidden_states, encoder_hidden_states, pooled_projections, timestep, encoder_attention_mask,
                  timestep_proj, attention_bias, rotary_emb, *clips[:-1])
        # The runner replays a captured graph on CUDA without autograd and runs eagerly otherwise.
        out = (self._forward_impl if self._cuda_graphs is None else self._cuda_graphs)(*inputs)
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)

    def timestep_projection(self, timestep: torch.Tensor) -> torch.Tensor:
        """The weight-free sinusoidal projection [B, 256] of raw timesteps that ``timestep_proj`` replaces."""
        return self.time_text_embed.time_proj(torch.as_tensor(timestep).reshape(-1))

    def _conditioning(self, timestep, timestep_proj, pooled_projections) -> torch.Tensor:
        if timestep_proj is None:
            return self.time_text_embed(timestep, pooled_projections)
        # CombinedTimestepTextProjEmbeddings.forward after its time_proj.
        embed = self.time_text_embed
        return embed.timestep_embedder(timestep_proj.to(pooled_projections.dtype)) + embed.text_embedder(
            pooled_projections)

    def _forward_impl(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, encoder_attention_mask,
                      timestep_proj, attention_bias, rotary_emb, *history) -> torch.Tensor:
        clips = [*history, hidden_states]
        temb = self._conditioning(timestep, timestep_proj, pooled_projections)
        txt = encoder_hidden_states
        if self.context_embedder is not None:
            txt = self.context_embedder(txt)
        img = self.pos_embed(clips)
        layout = self._layout(clips, encoder_attention_mask, txt.shape[1], img.device)
        if rotary_emb is not None:
            if rotary_emb[0].shape[0] != img.shape[1]:
                raise ValueError(f"rotary_emb covers {rotary_emb[0].shape[0]} image tokens, the clips {img.shape[1]}")
            layout = replace(layout, rope=tuple(rotary_emb))
        if attention_bias is not None:
            seq_len = txt.shape[1] + img.shape[1]
            if tuple(attention_bias.shape[-2:]) != (seq_len, seq_len):
                raise ValueError(
                    f"attention_bias must be [B|1, 1, {seq_len}, {seq_len}], got {tuple(attention_bias.shape)}")
            layout = replace(layout, num_free=0, prefix_mask=attention_bias.to(img.dtype), key_padding=None)

        last = len(self.transformer_blocks) - 1
        for index, block in enumerate(self.transformer_blocks):
            args = (img, txt, temb, layout, index == last)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                img, txt = self._gradient_checkpointing_func(block, *args)
            else:
                img, txt = block(*args)

        img = self.proj_out(self.norm_out(img, temb))
        return self.unpatchify(img, hidden_states.shape)

    def unpatchify(self, tokens: torch.Tensor, shape) -> torch.Tensor:
        """Tokens [B, T*h'*w', p*p*C] (last axis ordered (row offset, column offset, channel)) -> [B, C, T, H, W].

        Only reshapes and permutes of rank <= 4 (the rank-7 form
        ``reshape(b, t, h', w', p, p, c).permute(0, 6, 1, 2, 4, 3, 5)`` moves the same elements, but rank > 4
        transposes do not compile for Qualcomm's HTP, where the exported graphs run).
        """
        b, c, t, h, w = shape
        p = self.config.patch_size
        x = tokens.reshape(b * t * (h // p), w // p, p, p * c).permute(0, 2, 1, 3)  # [., p, w', p*c]: rows, cols
        return x.reshape(b, t, h * w, c).permute(0, 3, 1, 2).reshape(b, c, t, h, w)
