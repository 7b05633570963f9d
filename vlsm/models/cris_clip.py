"""The CLIP RN50 image and text towers as CRIS uses them (docs/design.md, "Models"): a
dense attention pool (no pooling; position table resized to the grid; a 1x1 conv + BN
"connect" branch) and a text tower returning word features and the end-of-text token's
(found from the attention mask). Names follow OpenAI CLIP exactly, so an OpenAI ``RN50.pt``
and an official CRIS checkpoint (under ``backbone.``) load without renaming.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CLIPBackbone", "ModifiedResNet", "DenseAttentionPool", "TextTransformer"]


class Bottleneck(nn.Module):
    """ResNet bottleneck with CLIP's anti-aliased stride (avg-pool before the stride)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride > 1 or inplanes != out:
            # the pool has no parameters; "0"/"1" keep CLIP's state-dict keys
            self.downsample = nn.Sequential(OrderedDict([
                ("pool", nn.AvgPool2d(stride) if stride > 1 else nn.Identity()),
                ("0", nn.Conv2d(inplanes, out, 1, bias=False)),
                ("1", nn.BatchNorm2d(out)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(self.avgpool(y)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(y + identity)


class DenseAttentionPool(nn.Module):
    """CLIP's attention pool turned dense: (B, C, h, w) -> (B, out_dim, h, w). The position
    table keeps CLIP's shape (spacial_dim**2 + 1, C); row 0 (the pooled token) is unused."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int) -> None:
        super().__init__()
        self.spacial_dim = spacial_dim
        self.num_heads = num_heads
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.connect = nn.Sequential(nn.Conv2d(embed_dim, output_dim, 1, bias=False), nn.BatchNorm2d(output_dim))

    def _grid_positions(self, h: int, w: int) -> torch.Tensor:
        """Grid position embedding resized (bicubic) to (h, w): (h*w, C)."""
        s = self.spacial_dim
        grid = self.positional_embedding[1:]  # (s*s, C), row 0 is the pooled token
        grid = grid.reshape(1, s, s, -1).permute(0, 3, 1, 2)  # (1, C, s, s)
        if (h, w) != (s, s):
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return grid.flatten(2).squeeze(0).transpose(0, 1)  # (h*w, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        residual = self.connect(x)  # (B, out, h, w)
        tokens = x.flatten(2).transpose(1, 2)  # NCHW -> N(HW)C
        tokens = tokens + self._grid_positions(h, w).to(tokens.dtype)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, HW, C) -> (B, heads, HW, C/heads)
            return t.reshape(b, h * w, self.num_heads, -1).transpose(1, 2)

        q, k, v = heads(self.q_proj(tokens)), heads(self.k_proj(tokens)), heads(self.v_proj(tokens))
        y = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        y = self.c_proj(y.transpose(1, 2).reshape(b, h * w, c))  # (B, HW, out)
        y = y.transpose(1, 2).reshape(b, -1, h, w)  # (B, out, h, w)
        return F.relu(y + residual)


class ModifiedResNet(nn.Module):
    """CLIP's ResNet: 3-conv stem, anti-aliased strides, dense attention pool. Returns C3
    (B, 8w, H/8, W/8), C4 (B, 16w, H/16, W/16) and C5 (B, output_dim, H/32, W/32)."""

    def __init__(self, layers: tuple[int, int, int, int], output_dim: int, heads: int, input_resolution: int,
                 width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        inplanes = width
        stages = []
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            stage = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = DenseAttentionPool(input_resolution // 32, width * 32, heads, output_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """CLIP's initialisation (used when no weights are loaded)."""
        std = self.attnpool.c_proj.in_features**-0.5
        for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj):
            nn.init.normal_(proj.weight, std=std)
        nn.init.normal_(self.attnpool.c_proj.weight, std=std)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                # each residual block starts as the identity
                nn.init.zeros_(block.bn3.weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c3, c4, x4 = self.trunk(x)
        return c3, c4, self.attnpool(x4)  # C5: (B, output_dim, H/32, W/32)

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Everything before the attention pool: C3, C4 and layer4's output (B, 32w, H/32, W/32)
        (the frozen part while the pool's `connect` branch trains)."""
        x = x.to(self.conv1.weight.dtype)
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = self.relu(bn(conv(x)))
        x = self.layer1(self.avgpool(x))  # (B, 4w, H/4, W/4)
        c3 = self.layer2(x)  # (B, 8w, H/8, W/8)
        c4 = self.layer3(c3)  # (B, 16w, H/16, W/16)
        return c3, c4, self.layer4(c4)


class QuickGELU(nn.Module):
    """The GELU approximation CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block of the CLIP text tower (causal self-attention)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, causal_mask: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, attn_mask=causal_mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """Stack of causal blocks; ``resblocks`` keeps CLIP's state-dict keys."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        # True = may not attend: token i sees tokens 0..i only (right padding changes no real token)
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        for block in self.resblocks:
            x = block(x, causal)
        return x


class CLIPBackbone(nn.Module):
    """Image and text towers of CLIP RN50, named as in OpenAI's ``CLIP`` module."""

    def __init__(self, *, embed_dim: int, image_resolution: int, vision_layers: tuple[int, int, int, int],
                 vision_width: int, vision_heads: int, context_length: int, vocab_size: int,
                 transformer_width: int, transformer_heads: int, transformer_layers: int) -> None:
        super().__init__()
        self.visual = ModifiedResNet(vision_layers, embed_dim, vision_heads, image_resolution, vision_width)
        self.transformer = TextTransformer(transformer_width, transformer_layers, transformer_heads)
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = nn.LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        # unused by CRIS; kept so that CLIP and CRIS state dicts load strictly
        self.logit_scale = nn.Parameter(torch.tensor(2.6592600345611572))  # log(1/0.07)
        self._init_text(transformer_width, transformer_layers)

    def _init_text(self, width: int, layers: int) -> None:
        """CLIP's initialisation of the text tower (used when no weights are loaded)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width**-0.5)
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def encode_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> C3 (B, 8w, H/8, W/8), C4 (B, 16w, H/16, W/16), C5 (B, E, H/32, W/32)."""
        return self.visual(pixel_values)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) ids and right-padded mask -> words (B, L, width), sentence (B, E): the last
        attended (end-of-text) token's feature, projected."""
        x, pooled = self.encode_words(input_ids, attention_mask)
        return x, pooled @ self.text_projection  # (B, L, width), (B, E)

    def encode_words(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode_text` before the projection (which rounds by batch size on CPU, so it runs
        per batch in `decode`): words (B, L, width), the end-of-text token's features (B, width)."""
        n = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:n]  # (B, L, width)
        x = self.ln_final(self.transformer(x))  # (B, L, width)
        positions = torch.arange(n, device=input_ids.device)
        eot = (attention_mask.to(torch.long) * positions).argmax(dim=1)  # (B,) last attended
        return x, x[torch.arange(x.shape[0], device=x.device), eot]
