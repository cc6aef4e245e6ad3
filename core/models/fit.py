"""Settings that fit the machine: the scoring batch size from free memory, and a refusal, before any model
is loaded, of a run that would not fit even one trajectory at a time.

    shape = ModelShape.of_config(AutoConfig.from_pretrained(base))
    plan = plan_batch(Need(shape, tokens=4096, dtype_bytes=2, checkpoints=8, device="cuda", top_k=5),
                      free=free_bytes("cuda"), host=host_free_bytes())
    plan.batch_size            # trajectories per forward pass; raises DoesNotFit naming what to change

An estimate, not a measurement: bytes per trajectory row of ``tokens`` padded positions, from the model's
shape, as ``core.drift.scoring`` and ``core.drift.probe`` allocate them (one decoder layer's transients at a time under
no_grad; the shared-prefix KV cache; eager attention's (heads, T, T) scores; the decoder's output and the
completion rows' hidden states of the current, base and previous checkpoint; the statistics' (rows, V)
chunks; one full checkpoint loaded beside the base) plus, on the host, every checkpoint's result rows of the
batch. SAFETY leaves room for the allocator's fragmentation and the CUDA context.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import InputError
from core.models.forward import chunk_rows

GIB = 1 << 30
SAFETY = 0.8  # share of the free memory the estimate may plan for
MAX_AUTO = 64  # larger batches only pad more; the scorer's chunks already fill the device
FRAME_ROW_BYTES = 700  # host bytes per result row in pandas (measured: 659 with top-k 5; issue 15)
CHUNK_MATRICES = 8  # (rows, V) float32 alive at once in core.drift.scoring._stats_inner: base, parent, current (log p, p), JS
PROBE_QUERY = 2048  # ProbeConfig.max_tree_tokens: the probe's query chunk over a cached prefix


class DoesNotFit(InputError):
    """The run would not fit the device even one trajectory at a time (the message says what to change)."""


@dataclass(frozen=True)
class ModelShape:
    """What the memory of a decoder's forward pass depends on (read from its config, no weights loaded)."""
    hidden: int
    vocab: int
    layers: int
    heads: int
    kv_dim: int  # key/value heads x head dim (grouped-query attention keeps fewer)
    intermediate: int
    tied: bool = True  # input embeddings shared with the LM head
    eager: bool = False  # eager attention materialises (heads, T, T) scores per layer
    vision_hidden: int = 0  # a vision-language model's vision tower (0: a text model)
    vision_intermediate: int = 0
    vision_layers: int = 0

    @classmethod
    def of_config(cls, config) -> ModelShape:
        """From a transformers config (a vision-language model's text part)."""
        c = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
        kv_heads = getattr(c, "num_key_value_heads", None) or heads
        impl = getattr(config, "_attn_implementation", None) or getattr(c, "_attn_implementation", None)
        v = getattr(config, "vision_config", None)
        return cls(hidden=c.hidden_size, vocab=c.vocab_size, layers=c.num_hidden_layers, heads=heads,
                   kv_dim=kv_heads * head_dim, intermediate=getattr(c, "intermediate_size", None) or 4 * c.hidden_size,
                   tied=bool(getattr(config, "tie_word_embeddings", False)), eager=impl == "eager",
                   vision_hidden=getattr(v, "hidden_size", 0) or 0, vision_intermediate=getattr(v, "intermediate_size", 0) or 0,
                   vision_layers=getattr(v, "depth", None) or getattr(v, "num_hidden_layers", 0) or 0)

    @property
    def params(self) -> int:
        """Parameters, approximately: embeddings (and an untied head) plus attention and gated MLP per layer."""
        h, vh = self.hidden, self.vision_hidden
        per_layer = h * (h + 2 * self.kv_dim) + h * h + 3 * h * self.intermediate
        vision = self.vision_layers * (4 * vh * vh + 3 * vh * self.vision_intermediate)  # blocks: attention, MLP
        return self.vocab * h * (1 if self.tied else 2) + self.layers * per_layer + vision


@dataclass(frozen=True)
class Need:
    """A scoring run's inputs to the estimate."""
    shape: ModelShape
    tokens: int  # padded length of the longest trajectory (prompt + completion)
    dtype_bytes: int  # 4 float32, 2 bfloat16 / float16
    checkpoints: int  # the base included: every checkpoint's rows of a batch are kept until it is written
    device: str = "cpu"
    top_k: int = 5
    full_checkpoints: bool = False  # a full-model series: one checkpoint loaded beside the base, grouped states
    weights_loaded: bool = False  # the base is already in memory (then free memory already lacks it)
    group_bytes: int = 2 << 30  # ScoreConfig.group_bytes
    longest: str = ""  # the longest trajectory's id, for the message
    patches: int = 0  # vision-language: the most image patches one trajectory brings (its pixel_values rows)

    def row_bytes(self) -> dict[str, int]:
        """Device bytes per trajectory in a batch, by cause."""
        s, t, b = self.shape, self.tokens, self.dtype_bytes
        out = {"activations": t * (4 * s.hidden + 2 * s.kv_dim + 3 * s.intermediate) * b,
               "kv cache": t * 2 * s.layers * s.kv_dim * b,  # the shared-prefix path keeps every layer's
               # the decoder's output and the completion rows under every checkpoint (core.drift.scoring._group_inner)
               "hidden states": (1 + max(3, self.checkpoints)) * t * s.hidden * b}
        if s.eager:
            out["attention scores"] = s.heads * t * t * (b + 4)  # and their float32 softmax
        if self.patches and s.vision_hidden:  # one vision block's transients over the row's patches, and the
            vh = s.vision_hidden  # image features kept for every checkpoint of the batch
            out["vision tower"] = self.patches * (5 * vh + 3 * s.vision_intermediate) * b
        return out

    def host_row_bytes(self) -> int:
        """Host bytes per trajectory: its result rows under every checkpoint, held until the batch is written."""
        return self.checkpoints * self.tokens * (FRAME_ROW_BYTES + 12 * self.top_k)

    def fixed_bytes(self) -> dict[str, int]:
        """Device bytes whatever the batch size, by cause."""
        weights = self.shape.params * self.dtype_bytes
        out = {"statistics chunks": CHUNK_MATRICES * 4 * self.shape.vocab * chunk_rows(self.shape.vocab, self.device)}
        if not self.weights_loaded:
            out["model weights"] = weights
        if self.full_checkpoints:
            out["a full checkpoint beside the base"] = weights
            out["grouped hidden states"] = self.group_bytes
        return out

    def probe_bytes(self) -> int:
        """The probe over the longest trajectory: its prefix's KV cache and one query chunk attending to it."""
        s, t, b, q = self.shape, self.tokens, self.dtype_bytes, PROBE_QUERY
        chunk = q * (t + q) * b + q * (4 * s.hidden + 2 * s.kv_dim + 3 * s.intermediate) * b
        scores = s.heads * q * (t + q) * (b + 4) if s.eager else 0
        return t * 2 * s.layers * s.kv_dim * b + chunk + scores


@dataclass(frozen=True)
class Plan:
    batch_size: int
    row_bytes: int  # per trajectory, on the device
    fixed_bytes: int
    free_bytes: int | None  # None: unknown (no check made)
    note: str = ""  # said before the run (e.g. a requested batch size above the estimate)


def plan_batch(need: Need, free: int | None, host: int | None = None, requested: int | None = None,
               trajectories: int | None = None) -> Plan:
    """The batch size for ``need`` within ``free`` device bytes (and ``host`` bytes of RAM when the device is
    not the host): ``requested`` if given, else the largest power of two that fits, at most MAX_AUTO and the
    number of trajectories. Raises DoesNotFit when even one trajectory would not fit."""
    row, fixed = sum(need.row_bytes().values()), sum(need.fixed_bytes().values())
    host_row = need.host_row_bytes()
    if need.device.startswith("cpu") or host is None:  # one memory: the results live beside the tensors
        row, host = row + host_row, None
    if free is None:
        return Plan(requested or 8, row, fixed, None)
    room = SAFETY * free - fixed
    if room < max(row, need.probe_bytes()):
        raise DoesNotFit(_refusal(need, row, fixed, free))
    fits = int(room // row)
    if host is not None:
        fits = min(fits, int(SAFETY * host // host_row))
    if requested is not None:
        note = (f"--batch-size {requested} is above the {fits} trajectories of {need.tokens} tokens that "
                f"{_gib(free)} free on {need.device} hold by estimate; it may run out of memory" if requested > fits else "")
        return Plan(requested, row, fixed, free, note)
    size = max(1, min(fits, MAX_AUTO, trajectories or MAX_AUTO))
    return Plan(1 << (size.bit_length() - 1), row, fixed, free)


def _refusal(need: Need, row: int, fixed: int, free: int) -> str:
    causes = {**need.row_bytes(), **need.fixed_bytes()}
    big = ", ".join(f"{k} {_gib(v)}" for k, v in sorted(causes.items(), key=lambda kv: -kv[1])[:3])
    which = f", {need.longest}," if need.longest else ""
    hints = [f"score shorter trajectories (the longest{which} has {need.tokens} tokens: trim or --limit the data)",
             f"fewer checkpoints (now {need.checkpoints}, the base included)" if need.full_checkpoints
             else "fewer checkpoints"]
    if need.dtype_bytes == 4 and not need.device.startswith("cpu"):
        hints.append("--dtype bfloat16 (half the memory of float32)")
    hints.append("a device with more free memory (--device, or free this one)")
    return (f"this run will not fit: one trajectory of {need.tokens} tokens needs about {_gib(row)} on "
            f"{need.device}, plus {_gib(fixed)} whatever the batch (largest: {big}), or "
            f"{_gib(need.probe_bytes())} for the answer probe, and {_gib(free)} is free "
            f"(planning for {SAFETY:.0%} of it). Nothing was run. To fit: {'; '.join(hints)}.")


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def host_free_bytes() -> int | None:
    """Available RAM (psutil when installed, else /proc/meminfo's MemAvailable); None when unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def free_bytes(device: str) -> int | None:
    """Free memory of ``device``: CUDA's own count for the current GPU; the host's for cpu and mps (whose GPU
    shares it)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info()[0])
    return host_free_bytes()


def need_for(encoded: list, shape: ModelShape, dtype, device: str, checkpoints: int, full: bool, loaded: bool,
             top_k: int) -> Need:
    """``Need`` of scoring ``encoded`` (core.io.trajectories.Encoded) with a series of that shape."""
    import torch

    longest = max(encoded, key=lambda e: len(e.input_ids))
    patches = max((e.pixel_values.shape[0] for e in encoded if getattr(e, "pixel_values", None) is not None), default=0)
    return Need(shape, len(longest.input_ids), torch.empty((), dtype=dtype).element_size(), checkpoints, device,
                top_k, full, loaded, longest=longest.id, patches=patches)


def plan_for_series(series, encoded: list, top_k: int, requested: int | None = None) -> Plan:
    """The plan for a loaded ``core.models.series.ModelSeries`` (its weights already counted in the free memory)."""
    need = need_for(encoded, ModelShape.of_config(series.model.config), series.dtype, series.device,
                    len(series.names), any(c.kind != "adapter" for c in series.checkpoints), True, top_k)
    return plan_batch(need, free_bytes(series.device), host_free_bytes(), requested, len(encoded))


def plan_for_paths(base, infos: list, device: str, dtype, encoded: list, top_k: int, requested: int | None = None,
                   trust_remote_code: bool = False) -> Plan:
    """The plan before anything is loaded (``core.models.series.plan_series``'s answer): the shape from the base's
    config.json, the weights still to load counted against the free memory."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base, local_files_only=True, trust_remote_code=trust_remote_code)
    need = need_for(encoded, ModelShape.of_config(config), dtype, device, len(infos) + 1,
                    any(i.kind != "adapter" for i in infos), False, top_k)
    return plan_batch(need, free_bytes(device), host_free_bytes(), requested, len(encoded))
