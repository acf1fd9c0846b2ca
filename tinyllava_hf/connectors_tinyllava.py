"""Connectors: modules that map tower features into the LM's embedding space.

Shipped as remote code beside `modeling_tinyllava.py`, so it imports only torch/transformers and flat siblings.
Every connector maps `(batch, tokens_in, input_size)` to `(batch, tokens_out, output_size)`; the number of output
tokens is what `TinyLlavaConfig.num_image_tokens` promises the processor.
"""

import math

import torch
from torch import nn

from .configuration_tinyllava import TinyLlavaConfig, canonical_connector_name, mlp_depth


class IdentityConnector(nn.Module):
    """Passes features through unchanged; the tower width must already equal the LM width."""

    def __init__(self, config: TinyLlavaConfig, input_size: int, output_size: int, connector_type: str):
        super().__init__()
        if input_size != output_size:
            raise ValueError(
                f"The 'identity' connector needs the tower width ({input_size}) to equal the LM width ({output_size})."
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class LinearConnector(nn.Module):
    """One linear projection (LLaVA-1.0 style)."""

    def __init__(self, config: TinyLlavaConfig, input_size: int, output_size: int, connector_type: str):
        super().__init__()
        self.linear = nn.Linear(input_size, output_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


class MlpGeluConnector(nn.Module):
    """`mlp{N}x_gelu`: N linear layers with (erf) GELU between them, as LLaVA-1.5 (N=2) and TinyLLaVA use."""

    def __init__(self, config: TinyLlavaConfig, input_size: int, output_size: int, connector_type: str):
        super().__init__()
        modules: list[nn.Module] = [nn.Linear(input_size, output_size)]
        for _ in range(mlp_depth(connector_type) - 1):
            modules += [nn.GELU(), nn.Linear(output_size, output_size)]
        # Indices 0, 2, 4, ... hold the linears, the same positions as upstream's nn.Sequential.
        self.layers = nn.Sequential(*modules)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class PerceiverAttention(nn.Module):
    """Latents attend to the concatenation of (media, latents), as in Flamingo's Perceiver resampler."""

    def __init__(self, width: int, num_heads: int, head_dim: int):
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.norm_media = nn.LayerNorm(width)
        self.norm_latents = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, inner, bias=False)
        self.to_kv = nn.Linear(width, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, width, bias=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        media = self.norm_media(media)
        latents = self.norm_latents(latents)
        query = self._split_heads(self.to_q(latents))
        key, value = self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1)
        key, value = self._split_heads(key), self._split_heads(value)
        scores = (query * self.head_dim**-0.5) @ key.transpose(-1, -2)
        # Subtracting the row maximum changes nothing mathematically; it mirrors upstream's numerics exactly.
        scores = scores - scores.amax(dim=-1, keepdim=True).detach()
        out = scores.softmax(dim=-1) @ value
        batch, _, length, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(batch, length, -1))


class PerceiverFeedForward(nn.Module):
    def __init__(self, width: int, multiplier: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width * multiplier, bias=False)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(width * multiplier, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class PerceiverResamplerLayer(nn.Module):
    def __init__(self, width: int, num_heads: int, head_dim: int):
        super().__init__()
        self.attention = PerceiverAttention(width, num_heads, head_dim)
        self.feed_forward = PerceiverFeedForward(width)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = latents + self.attention(media, latents)
        return latents + self.feed_forward(latents)


class ResamplerConnector(nn.Module):
    """Perceiver resampler: `connector_num_queries` learned latents read the projected image tokens."""

    def __init__(self, config: TinyLlavaConfig, input_size: int, output_size: int, connector_type: str):
        super().__init__()
        self.input_proj = nn.Linear(input_size, output_size)
        self.latents = nn.Parameter(torch.empty(config.connector_num_queries, output_size))
        self.layers = nn.ModuleList(
            PerceiverResamplerLayer(output_size, config.connector_num_heads, config.connector_head_dim)
            for _ in range(config.connector_num_layers)
        )
        self.norm = nn.LayerNorm(output_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        media = self.input_proj(features)
        latents = self.latents.unsqueeze(0).expand(media.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(media, latents)
        return self.norm(latents)


class QFormerAttention(nn.Module):
    """BERT-style attention block: multi-head attention, output projection, residual, post layer norm."""

    def __init__(self, hidden_size: int, kv_size: int, num_heads: int, eps: float):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"qformer_hidden_size={hidden_size} must be divisible by connector_num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(kv_size, hidden_size)
        self.value = nn.Linear(kv_size, hidden_size)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        query = self._split_heads(self.query(hidden))
        key, value = self._split_heads(self.key(context)), self._split_heads(self.value(context))
        scores = (query @ key.transpose(-1, -2)) / math.sqrt(self.head_dim)
        out = scores.softmax(dim=-1) @ value
        batch, _, length, _ = out.shape
        return self.norm(self.dense(out.transpose(1, 2).reshape(batch, length, -1)) + hidden)


class QFormerLayer(nn.Module):
    def __init__(self, config: TinyLlavaConfig, encoder_width: int, has_cross_attention: bool):
        super().__init__()
        width, eps = config.qformer_hidden_size, config.qformer_layer_norm_eps
        self.self_attention = QFormerAttention(width, width, config.connector_num_heads, eps)
        self.cross_attention = (
            QFormerAttention(width, encoder_width, config.connector_num_heads, eps) if has_cross_attention else None
        )
        self.intermediate = nn.Linear(width, config.qformer_intermediate_size)
        self.act = nn.GELU()
        self.output = nn.Linear(config.qformer_intermediate_size, width)
        self.output_norm = nn.LayerNorm(width, eps=eps)

    def forward(self, queries: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        queries = self.self_attention(queries, queries)
        if self.cross_attention is not None:
            queries = self.cross_attention(queries, image_features)
        return self.output_norm(self.output(self.act(self.intermediate(queries))) + queries)


class QFormerConnector(nn.Module):
    """BLIP-2 style Q-Former on learned queries only (no text branch), then a projection to the LM width.

    Built from config fields alone: no BERT checkpoint is downloaded. Cross-attention to the image runs in layers
    0, k, 2k, ... (k = `qformer_cross_attention_freq`).
    """

    def __init__(self, config: TinyLlavaConfig, input_size: int, output_size: int, connector_type: str):
        super().__init__()
        width = config.qformer_hidden_size
        self.query_tokens = nn.Parameter(torch.empty(1, config.connector_num_queries, width))
        # BLIP-2's embedding layer norm without word/position embeddings; upstream keeps it non-affine.
        self.embed_norm = nn.LayerNorm(width, eps=config.qformer_layer_norm_eps, elementwise_affine=False)
        self.layers = nn.ModuleList(
            QFormerLayer(config, input_size, has_cross_attention=index % config.qformer_cross_attention_freq == 0)
            for index in range(config.connector_num_layers)
        )
        self.projector = nn.Linear(width, output_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        queries = self.embed_norm(self.query_tokens.expand(features.shape[0], -1, -1))
        for layer in self.layers:
            queries = layer(queries, features)
        return self.projector(queries)


class MoFConnector(nn.Module):
    """Mixture of features: one 2-layer GELU MLP per tower, output tokens interleaved (primary, auxiliary, ...)."""

    def __init__(self, config: TinyLlavaConfig, input_size: int, output_size: int, connector_type: str):
        super().__init__()
        aux_input_size = config.vision_aux_config.hidden_size * len(config.vision_feature_layers)
        self.primary = MlpGeluConnector(config, input_size, output_size, "mlp2x_gelu")
        self.auxiliary = MlpGeluConnector(config, aux_input_size, output_size, "mlp2x_gelu")

    def forward(self, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        primary, auxiliary = self.primary(features[0]), self.auxiliary(features[1])
        if primary.shape != auxiliary.shape:
            raise ValueError(f"MoF towers disagree: {tuple(primary.shape)} vs {tuple(auxiliary.shape)}")
        batch, tokens, width = primary.shape
        return torch.stack([primary, auxiliary], dim=2).reshape(batch, 2 * tokens, width)


CONNECTORS: dict[str, type[nn.Module]] = {
    "identity": IdentityConnector,
    "linear": LinearConnector,
    "mlp{N}x_gelu": MlpGeluConnector,
    "qformer": QFormerConnector,
    "resampler": ResamplerConnector,
    "mof": MoFConnector,
}


def list_connectors() -> list[str]:
    """Registry names, with `mlp{N}x_gelu` standing for the whole family."""
    return sorted(CONNECTORS)


def build_connector(connector_type: str, config: TinyLlavaConfig, input_size: int, output_size: int) -> nn.Module:
    """Instantiate a connector by exact name; an unknown name raises and lists the valid ones."""
    connector_class = CONNECTORS[canonical_connector_name(connector_type)]
    return connector_class(config, input_size, output_size, connector_type)


def init_connector_parameters(module: nn.Module, std: float, init) -> None:
    """Initialise the free parameters (latents, queries) that `PreTrainedModel._init_weights` does not know."""
    if isinstance(module, ResamplerConnector):
        init.normal_(module.latents, mean=0.0, std=1.0)
    elif isinstance(module, QFormerConnector):
        init.normal_(module.query_tokens, mean=0.0, std=std)
