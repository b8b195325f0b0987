"""Per-pixel timesteps inside a diffusers ``UNet2DConditionModel`` (METHOD.md §5).

The timestep enters an SD UNet only as an additive embedding in each ResNet block, right after
``conv1``. We keep diffusers' forward untouched and change two things while a map is active:
``time_emb_proj`` contributes zero, and a forward hook on ``conv1`` adds the per-pixel term instead.

Speed: the embedding depends on the integer timestep alone, so each block's projected embedding is
tabulated once for all ``num_train_timesteps`` values (the "embed distinct timesteps and gather"
form §5 allows). A step then costs one gather per block, with no MLP and no host-device sync. The
map is subsampled to a block's resolution by taking the top-left pixel of each cell.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.models.resnet import ResnetBlock2D


def _resnets(unet) -> list[ResnetBlock2D]:
    return [m for m in unet.modules() if isinstance(m, ResnetBlock2D) and m.time_emb_proj is not None]


def check_supported(unet) -> None:
    """Raise at once for UNets whose time embedding is not a pure function of the timestep."""
    cfg = unet.config
    if getattr(unet, "class_embedding", None) is not None or cfg.get("addition_embed_type"):
        raise NotImplementedError(
            "this UNet adds class or text-time embeddings to the timestep embedding (SDXL-style); "
            "asyndm supports SD 1.x/2.x UNets only"
        )
    if cfg.get("time_cond_proj_dim") is not None:
        raise NotImplementedError("UNets with time_cond_proj_dim (LCM-style) are not supported")
    for block in _resnets(unet):
        if block.time_embedding_norm != "default":
            raise NotImplementedError(
                f"ResNet blocks with time_embedding_norm='{block.time_embedding_norm}' are not supported"
            )


def block_projections(unet, timesteps: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    """Per ResNet block, ``time_emb_proj`` of the embedding of each timestep: (len(timesteps), C)."""
    emb = unet.time_embedding(unet.time_proj(timesteps).to(dtype))  # as get_time_embed + time_embedding
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    return [
        block.time_emb_proj(emb if block.skip_time_act else block.nonlinearity(emb)) for block in _resnets(unet)
    ]


class PixelTimestepUNet:
    """Calls ``unet`` with a (B, h, w) integer timestep map instead of a scalar timestep.

    ``tabulate=False`` embeds every pixel's timestep on each call (the straightforward form of §5);
    it exists so tests can check the tabulated fast path against it.
    """

    def __init__(self, unet, num_train_timesteps: int, tabulate: bool = True):
        check_supported(unet)
        self.unet = unet
        self.num_train_timesteps = num_train_timesteps
        self.tabulate = tabulate
        self._tables: dict[tuple, list[torch.Tensor]] = {}

    @torch.no_grad()
    def _projection_tables(self, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
        """Per ResNet block, the projected embedding of every timestep: (C, num_train_timesteps)."""
        key = (dtype, device)
        if key not in self._tables:
            t = torch.arange(self.num_train_timesteps, device=device)
            # stored (C, num_train_timesteps): a gather along dim 1 yields the term channel-major,
            # so adding it to the NCHW conv output reads both coalesced (measured on an H100)
            tables = [table.t().contiguous() for table in block_projections(self.unet, t, dtype)]
            self._tables = {key: tables}  # one dtype/device at a time
        return self._tables[key]

    def _pixel_terms(self, timestep_map: torch.Tensor) -> list:
        """Per block, a function (h_b, w_b) → the (B, C, h_b, w_b) term to add after conv1."""
        batch, height, width = timestep_map.shape
        if self.tabulate:
            tables = self._projection_tables(self.unet.dtype, timestep_map.device)

            def gathered(table):
                def term(block_h, block_w):
                    cells = _subsample(timestep_map, block_h, block_w)  # (B, h_b, w_b)
                    columns = table.index_select(1, cells.reshape(-1))  # (C, B * h_b * w_b)
                    return columns.view(-1, batch, block_h, block_w).transpose(0, 1)  # (B, C, h_b, w_b)

                return term

            return [gathered(table) for table in tables]
        per_pixel = block_projections(self.unet, timestep_map.flatten(), self.unet.dtype)

        def direct(projection):
            def term(block_h, block_w):
                full = projection.view(batch, height, width, -1).permute(0, 3, 1, 2)  # (B, C, h, w)
                return full[:, :, :: height // block_h, :: width // block_w]

            return term

        return [direct(projection) for projection in per_pixel]

    @contextmanager
    def active(self, timestep_map: torch.Tensor):
        """Within the block, UNet calls use ``timestep_map`` (B, h, w) per pixel; restored on exit."""
        handles = []
        for block, term in zip(_resnets(self.unet), self._pixel_terms(timestep_map)):
            handles.append(block.time_emb_proj.register_forward_hook(_zero_output))
            handles.append(block.conv1.register_forward_hook(_add_term(term)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def __call__(self, sample, timestep_map, encoder_hidden_states, **kwargs):
        """UNet output for ``sample`` (B, C, h, w) with per-pixel timesteps ``timestep_map`` (B, h, w)."""
        if timestep_map.shape != (sample.shape[0], *sample.shape[2:]):
            raise ValueError(
                f"timestep map shape {tuple(timestep_map.shape)} does not match latents {tuple(sample.shape)}"
            )
        placeholder = torch.zeros((), dtype=torch.long, device=sample.device)
        with self.active(timestep_map):
            return self.unet(sample, placeholder, encoder_hidden_states=encoder_hidden_states, **kwargs)


def _zero_output(module, inputs, output):
    return torch.zeros_like(output)


def _subsample(timestep_map: torch.Tensor, block_h: int, block_w: int) -> torch.Tensor:
    """The top-left pixel of each cell of a block's grid (strided indexing, §5)."""
    latent_h, latent_w = timestep_map.shape[1:]
    if latent_h % block_h or latent_w % block_w:
        raise ValueError(f"block grid {block_h}x{block_w} does not divide the latent {latent_h}x{latent_w}")
    return timestep_map[:, :: latent_h // block_h, :: latent_w // block_w]


def _add_term(term):
    def hook(module, inputs, output):
        return output + term(*output.shape[2:]).to(output.dtype)

    return hook
