"""Per-pixel timesteps inside a diffusers ``UNet2DConditionModel`` (METHOD.md §5).

The timestep enters an SD UNet only as an additive embedding in each ResNet block, right after
``conv1``. We keep diffusers' forward untouched and change two things while a map is active:
``time_emb_proj`` contributes zero, and a forward hook on ``conv1`` adds the per-pixel term instead.

Speed: the embedding depends on the integer timestep alone, so each block's projected embedding is
tabulated once for all ``num_train_timesteps`` values (the "embed distinct timesteps and gather"
form §5 allows). A step then costs one gather per block, with no MLP and no host-device sync. The
map is subsampled to a block's resolution by taking the top-left pixel of each cell.

SDXL-style UNets (``addition_embed_type="text_time"``) add a per-sample embedding (pooled text and
size ids) to the time embedding before the activation (METHOD.md §9), so a pixel's embedding is a
function of (sample, timestep): the tables then hold one row of all timesteps per sample, built once
per conditioning (kept by the identity of its tensors, freed with them) and gathered at
``sample·T + timestep``.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from diffusers.models.resnet import ResnetBlock2D


def _resnets(unet) -> list[ResnetBlock2D]:
    return [m for m in unet.modules() if isinstance(m, ResnetBlock2D) and m.time_emb_proj is not None]


# per-sample embeddings added to the time embedding that the tables handle (SDXL's pooled text + size ids)
ADDED_EMBEDDINGS = ("text_time",)


def check_supported(unet) -> None:
    """Raise at once for UNets whose time embedding is not the timestep's plus a per-sample embedding."""
    cfg = unet.config
    added = cfg.get("addition_embed_type")
    if getattr(unet, "class_embedding", None) is not None or added not in (None, *ADDED_EMBEDDINGS):
        kind = "class" if getattr(unet, "class_embedding", None) is not None else f"'{added}' addition"
        raise NotImplementedError(
            f"this UNet adds {kind} embeddings to the timestep embedding; asyndm supports SD 1.x/2.x "
            f"UNets and SDXL's text-time embedding only"
        )
    if cfg.get("time_cond_proj_dim") is not None:
        raise NotImplementedError("UNets with time_cond_proj_dim (LCM-style) are not supported")
    for block in _resnets(unet):
        if block.time_embedding_norm != "default":
            raise NotImplementedError(
                f"ResNet blocks with time_embedding_norm='{block.time_embedding_norm}' are not supported"
            )


def block_projections(
    unet, timesteps: torch.Tensor, dtype: torch.dtype, added: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """Per ResNet block, ``time_emb_proj`` of the embedding of each timestep: (*timesteps.shape, C).

    ``added`` (B, D): the per-sample embedding the UNet adds to the time embedding before the
    activation (SDXL); ``timesteps`` is then (B or 1, N) and the result (B, N, C).
    """
    emb = unet.time_embedding(unet.time_proj(timesteps.flatten()).to(dtype))  # as get_time_embed + time_embedding
    emb = emb.view(*timesteps.shape, -1)
    if added is not None:
        emb = emb + added[:, None, :]  # the UNet's emb + aug_emb, per sample
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
        self.blocks = _resnets(unet)  # once: walking the module tree costs ms per call on small models
        self.num_train_timesteps = num_train_timesteps
        self.tabulate = tabulate
        self._tables: dict[tuple, list[torch.Tensor]] = {}
        self._sample_tables: tuple | None = None  # (dtype/device, conditioning refs, tables, finalizers)
        self._switch: _PixelSwitch | None = None  # installed hooks (``install``), for compiled regions

    def install(self) -> None:
        """Install the per-pixel hooks for good, switched on only inside ``active``.

        For compiled regions (asyndm/compilation.py): hooks added and removed on every call would
        change what the compiler traced, and recompile each call; installed hooks that read the
        call's map and tables from one holder compile twice at most (plain calls and per-pixel
        ones) and are then reused. Outside ``active`` they leave the UNet's output untouched.
        """
        if self._switch is not None:
            return
        if not self.tabulate:
            raise ValueError("installed per-pixel hooks gather from the tables: use tabulate=True")
        self._switch = _PixelSwitch(len(self.blocks))
        for block, slot in zip(self.blocks, self._switch.slots):
            block.time_emb_proj.register_forward_hook(_zero_when_on(self._switch))
            block.conv1.register_forward_hook(_add_when_on(self._switch, slot))

    @property
    def dtype(self) -> torch.dtype:
        """The time embedding's dtype, read from its weights (``unet.dtype`` walks every module: ms per call)."""
        return self.unet.time_embedding.linear_1.weight.dtype

    @property
    def adds_embedding(self) -> bool:
        """Whether the UNet adds a per-sample embedding to the time embedding (SDXL)."""
        return self.unet.config.get("addition_embed_type") is not None

    def added_embedding(self, encoder_hidden_states, added_cond_kwargs) -> torch.Tensor:
        """(B, D): what the UNet adds to each sample's time embedding (SDXL: pooled text + size ids)."""
        if not added_cond_kwargs:
            raise ValueError("this UNet adds a text-time embedding: pass added_cond_kwargs (text_embeds, time_ids)")
        like = torch.empty(0, dtype=self.dtype, device=encoder_hidden_states.device)  # get_aug_embed reads its dtype
        return self.unet.get_aug_embed(like, encoder_hidden_states, added_cond_kwargs)

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

    @torch.no_grad()
    def _sample_projection_tables(self, dtype, device, encoder_hidden_states, added_cond_kwargs) -> list[torch.Tensor]:
        """Per ResNet block, (C, B·T): sample b's projected embedding of timestep t in column b·T + t.

        Kept while the conditioning lives: a call with the same ``added_cond_kwargs`` tensors (the
        same objects, as a sampling loop passes them every step) reuses the tables, and they are
        freed with those tensors. Tensors changed in place are not noticed.
        """
        sources = tuple(added_cond_kwargs.values())
        kept = self._sample_tables
        if (kept is not None and kept[0] == (dtype, device) and len(kept[1]) == len(sources)
                and all(ref() is source for ref, source in zip(kept[1], sources))):
            return kept[2]
        self._forget_sample_tables()  # the previous conditioning's tables go before these are built
        added = self.added_embedding(encoder_hidden_states, added_cond_kwargs)  # (B, D)
        t = torch.arange(self.num_train_timesteps, device=device)[None]  # (1, T): every sample, every timestep
        tables = [p.flatten(0, 1).t().contiguous() for p in block_projections(self.unet, t, dtype, added)]
        finalizers = tuple(weakref.finalize(source, self._forget_sample_tables) for source in sources)
        self._sample_tables = ((dtype, device), tuple(weakref.ref(s) for s in sources), tables, finalizers)
        return tables

    def _forget_sample_tables(self) -> None:
        if self._sample_tables is not None:
            for finalizer in self._sample_tables[3]:
                finalizer.detach()
        self._sample_tables = None

    def _tabulated(self, timestep_map: torch.Tensor, encoder_hidden_states=None, added_cond_kwargs=None):
        """(table column of each pixel (B, h, w), the tables per block (C, ·))."""
        batch = timestep_map.shape[0]
        if not self.adds_embedding:
            return timestep_map, self._projection_tables(self.dtype, timestep_map.device)
        tables = self._sample_projection_tables(self.dtype, timestep_map.device, encoder_hidden_states,
                                                added_cond_kwargs)
        if tables[0].shape[1] != batch * self.num_train_timesteps:
            raise ValueError(f"added_cond_kwargs hold {tables[0].shape[1] // self.num_train_timesteps} "
                             f"samples for a timestep map of {batch}")
        first = torch.arange(batch, device=timestep_map.device) * self.num_train_timesteps
        return timestep_map + first.view(batch, 1, 1), tables

    def _pixel_terms(self, timestep_map: torch.Tensor, encoder_hidden_states=None, added_cond_kwargs=None) -> list:
        """Per block, a function (h_b, w_b) → the (B, C, h_b, w_b) term to add after conv1."""
        hook = getattr(self.unet, "_hf_hook", None)  # model offloading: the tables use the UNet's weights
        if hook is not None and hasattr(hook, "pre_forward"):  # before its forward does: on the device now,
            hook.pre_forward(self.unet)  # as diffusers' apply_forward_hook does for vae.decode
        batch, height, width = timestep_map.shape
        if self.tabulate:
            columns_of, tables = self._tabulated(timestep_map, encoder_hidden_states, added_cond_kwargs)

            def gathered(table):
                return lambda block_h, block_w: _gathered(table, columns_of, block_h, block_w)

            return [gathered(table) for table in tables]
        added = self.added_embedding(encoder_hidden_states, added_cond_kwargs) if self.adds_embedding else None
        per_pixel = block_projections(self.unet, timestep_map.flatten(1), self.dtype, added)  # (B, h*w, C)

        def direct(projection):
            def term(block_h, block_w):
                full = projection.view(batch, height, width, -1).permute(0, 3, 1, 2)  # (B, C, h, w)
                return full[:, :, :: height // block_h, :: width // block_w]

            return term

        return [direct(projection) for projection in per_pixel]

    @contextmanager
    def active(self, timestep_map: torch.Tensor, encoder_hidden_states=None, added_cond_kwargs=None):
        """Within the block, UNet calls use ``timestep_map`` (B, h, w) per pixel; restored on exit.

        SDXL-style UNets also need the call's ``encoder_hidden_states`` and ``added_cond_kwargs``.
        """
        if self._switch is not None:  # the hooks stay installed; they read the map while it is set
            columns, tables = self._tabulated(timestep_map, encoder_hidden_states, added_cond_kwargs)
            for slot, table in zip(self._switch.slots, tables):
                slot.table = table
            self._switch.columns = columns
            try:
                yield
            finally:
                self._switch.columns = None
            return
        terms = self._pixel_terms(timestep_map, encoder_hidden_states, added_cond_kwargs)
        handles = []
        for block, term in zip(self.blocks, terms):
            handles.append(block.time_emb_proj.register_forward_hook(_zero_output))
            handles.append(block.conv1.register_forward_hook(_add_term(term)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def __call__(self, sample, timestep_map, encoder_hidden_states, added_cond_kwargs=None, **kwargs):
        """UNet output for ``sample`` (B, C, h, w) with per-pixel timesteps ``timestep_map`` (B, h, w)."""
        if timestep_map.shape != (sample.shape[0], *sample.shape[2:]):
            raise ValueError(
                f"timestep map shape {tuple(timestep_map.shape)} does not match latents {tuple(sample.shape)}"
            )
        placeholder = torch.zeros((), dtype=torch.long, device=sample.device)
        with self.active(timestep_map, encoder_hidden_states, added_cond_kwargs):
            return self.unet(sample, placeholder, encoder_hidden_states=encoder_hidden_states,
                             added_cond_kwargs=added_cond_kwargs, **kwargs)


def _zero_output(module, inputs, output):
    return torch.zeros_like(output)


def _gathered(table: torch.Tensor, columns_of: torch.Tensor, block_h: int, block_w: int) -> torch.Tensor:
    """(B, C, h_b, w_b): each cell's column of a (C, ·) table, the map subsampled to the block's grid."""
    cells = _subsample(columns_of, block_h, block_w)  # (B, h_b, w_b)
    columns = table.index_select(1, cells.reshape(-1))  # (C, B * h_b * w_b)
    return columns.view(-1, len(columns_of), block_h, block_w).transpose(0, 1)


class _TableSlot:
    """One block's table for the installed hook (a slot per block: a hook reading ``tables[index]``
    would specialise on the index and compile once per block)."""

    def __init__(self):
        self.table: torch.Tensor | None = None


class _PixelSwitch:
    """What the installed hooks read: the call's table columns (B, h, w) during a per-pixel call, else
    None, and each block's table."""

    def __init__(self, blocks: int):
        self.columns: torch.Tensor | None = None
        self.slots = [_TableSlot() for _ in range(blocks)]


def _zero_when_on(switch: _PixelSwitch):
    def hook(module, inputs, output):
        return None if switch.columns is None else torch.zeros_like(output)

    return hook


def _add_when_on(switch: _PixelSwitch, slot: _TableSlot):
    def hook(module, inputs, output):
        if switch.columns is None:
            return None
        return output.add_(_gathered(slot.table, switch.columns, *output.shape[2:]).to(output.dtype))

    return hook


def _subsample(timestep_map: torch.Tensor, block_h: int, block_w: int) -> torch.Tensor:
    """The top-left pixel of each cell of a block's grid (strided indexing, §5)."""
    latent_h, latent_w = timestep_map.shape[1:]
    if latent_h % block_h or latent_w % block_w:
        raise ValueError(f"block grid {block_h}x{block_w} does not divide the latent {latent_h}x{latent_w}")
    return timestep_map[:, :: latent_h // block_h, :: latent_w // block_w]


def _add_term(term):
    def hook(module, inputs, output):
        # in place: conv1's output is a fresh tensor that its backward does not need
        return output.add_(term(*output.shape[2:]).to(output.dtype))

    return hook
