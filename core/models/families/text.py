"""The text family: any decoder-only causal LM transformers loads with ``AutoModelForCausalLM`` and whose
layers take a 4-D attention mask, position ids and a KV cache (its model types are its rows of the family
matrix, ``core.models.families.matrix``, each checked by the matrix test on a tiny random model of that type).

What is text-specific lives here: records encoded through the tokenizer (``core.io.trajectories.encode``;
the chat template renders the records that are conversations), scoring's shared prompt prefix (a prefix
common to a whole batch encoded once, its KV cache repeated over the rows), the probe's trees with 1-D
positions and, for a long trajectory, the prefix's real KV cache (``CachedPrefix``), left-padded greedy
decoding, and CPO's pair tokenization (BOS + prompt | " " + completion + EOS).

    family = TEXT_FAMILY
    tok = family.load_processor("sample_data/model")
    encoded = family.encode(tok, records)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.errors import InputError
from core.io.trajectories import Encoded, encode, prompt_ids
from core.models.adapter_checks import check_adapter_keys, refuse_pickle_adapter
from core.models.families.base import TEXT, Family
from core.models.families.matrix import types_of
from core.models.families.windows import full_cache, layer_masks
from core.models.forward import decoder, hidden_states, token_logprobs
from core.models.loading import load_model, load_tokenizer
from core.models.prefix_trees import Block, LabelTokens, TreeBatch, build_tree

MODEL_TYPES = types_of("text")  # its rows of the family matrix (kept under this name for older imports)

MIN_SHARED = 32  # tokens: a shorter common prefix saves less than the extra forward call costs


def pad_right(encs: list[Encoded], pad_id: int, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``encs`` padded on the right.  -> (B, T), (B, T)"""
    width = max(len(e.input_ids) for e in encs)
    ids = torch.full((len(encs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encs), width), dtype=torch.long)
    for row, e in enumerate(encs):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[row, : len(e.input_ids)] = 1
    return ids.to(device), mask.to(device)


def shared_prefix(ids: torch.Tensor, spans: list[tuple[int, int]]) -> int:
    """How many leading tokens every row of the padded batch ``ids`` (B, T) has in common, up to the
    position that predicts the first completion token (whose hidden state must be computed per row)."""
    limit = min(s for s, _ in spans) - 1
    if ids.shape[0] < 2 or limit <= 0:
        return 0
    same = (ids[:, :limit] == ids[:1, :limit]).all(0).int()  # (limit,)
    return int(same.cumprod(0).sum())


def _after_shared_prefix(dec, ids: torch.Tensor, mask: torch.Tensor, shared: int) -> torch.Tensor | None:
    """Hidden states of the positions after the shared prefix, the prefix encoded once.  -> (B, T - shared, H)
    None for architectures whose cache cannot be repeated over a batch (some hybrid or recurrent layers):
    the caller then encodes every row in full."""
    try:
        cache = dec(input_ids=ids[:1, :shared], use_cache=True).past_key_values
        cache.batch_repeat_interleave(ids.shape[0])
    except (AttributeError, NotImplementedError, TypeError):
        return None
    pos = torch.arange(shared, ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
    return dec(input_ids=ids[:, shared:], attention_mask=mask, position_ids=pos, past_key_values=cache,
               use_cache=True).last_hidden_state


def completion_hidden(model, ids: torch.Tensor, mask: torch.Tensor, spans: list[tuple[int, int]],
                      shared: int = 0) -> tuple[torch.Tensor, int]:
    """Last hidden states of the rows predicting each completion token, rows in batch order, and the shared
    prefix length actually used (0 when the architecture cannot share).  -> (sum of L_b, H), int
    With ``shared`` (see ``shared_prefix``) of at least MIN_SHARED tokens, the common prefix (a system prompt,
    an instruction) is encoded once and its KV cache repeated over the batch, so it costs one row, not B."""
    hidden = _after_shared_prefix(decoder(model), ids, mask, shared) if shared >= MIN_SHARED else None
    if hidden is None:
        shared, hidden = 0, hidden_states(model, ids, None, mask)  # (B, T, H)
    width = ids.shape[1] - shared
    rows = torch.cat([torch.arange(s - 1 - shared, e - 1 - shared) + b * width
                      for b, (s, e) in enumerate(spans)]).to(ids.device)
    return hidden.reshape(-1, hidden.shape[-1])[rows], shared


@dataclass
class TextTrees:
    """Probe trees of text trajectories in one forward pass: 1-D positions, the 4-D mask of the trees."""
    batch: TreeBatch

    @torch.no_grad()
    def label_logprobs(self, model) -> list[np.ndarray]:
        """log P(label | prefix) per tree.  -> [(P_b, K)]"""
        b = self.batch
        hidden = hidden_states(model, b.ids, b.pos, layer_masks(model, b.allow, b.pos, b.pos))  # (B, L, H)
        return b.split(token_logprobs(model, hidden.reshape(-1, hidden.shape[-1])[b.rows], b.toks).cpu().numpy())


@dataclass
class CachedPrefix:
    """One long trajectory probed over its prefix's KV cache: the prefix (up to the last probe position) is
    encoded once, then the probe blocks run in query chunks of at most ``budget`` tokens, each block seeing
    the cached prefix up to its position j and itself (a (Q, T + Q) mask); the cache is cropped back to the
    prefix after each chunk. Tokens encoded: T + B x P, linear in length, whatever the positions. Every layer's
    cache keeps the whole prefix (``full_cache``), sliding layers' masks keep their window (``layer_masks``)."""
    prefix: list[int]
    positions: list[int]
    block: Block
    budget: int
    device: str
    dtype: torch.dtype

    @torch.no_grad()
    def label_logprobs(self, model) -> list[np.ndarray]:
        """log P(label | prefix) at every position.  -> [(P, K)]"""
        dec = decoder(model)
        T = len(self.prefix)
        cache = dec(input_ids=torch.tensor([self.prefix], device=self.device), past_key_values=full_cache(),
                    use_cache=True).past_key_values
        per = max(1, self.budget // len(self.block.ids))
        parts = []
        for a in range(0, len(self.positions), per):
            parts.append(self._chunk(model, dec, cache, T, self.positions[a: a + per]))
            cache.crop(T - cache.get_seq_length())  # drop the chunk's keys and values (a negative count: every
            # transformers version reads it so): the next chunk sees the prefix only
        return [np.concatenate(parts)]

    def _chunk(self, model, dec, cache, T: int, positions: list[int]) -> np.ndarray:
        blk, B = self.block, len(self.block.ids)
        Q = B * len(positions)
        allow = torch.zeros((Q, T + Q), dtype=torch.bool)
        rows, toks = [], []
        for p, j in enumerate(positions):
            allow[p * B: (p + 1) * B, :j] = True
            allow[p * B: (p + 1) * B, T + p * B: T + (p + 1) * B] = torch.from_numpy(blk.inner)
            for lab in blk.reads:
                rows += [p * B + r for r, _ in lab]
                toks += [t for _, t in lab]
        mask = torch.zeros((1, 1, Q, T + Q), dtype=self.dtype).masked_fill_(~allow, torch.finfo(self.dtype).min)
        ids = torch.tensor([blk.ids * len(positions)], device=self.device)
        pos = torch.tensor([[j + r for j in positions for r in blk.rel_pos]], device=self.device)
        keys = torch.cat([torch.arange(T, device=self.device)[None], pos], 1)  # (1, T + Q) the keys' positions
        hidden = dec(input_ids=ids, position_ids=pos, attention_mask=layer_masks(model, mask.to(self.device), pos, keys),
                     past_key_values=cache, use_cache=True).last_hidden_state[0]  # (Q, H)
        picked = token_logprobs(model, hidden[torch.tensor(rows, device=self.device)],
                                torch.tensor(toks, device=self.device)).cpu().numpy()
        sums = np.add.reduceat(picked, np.cumsum([0] + [len(lab) for lab in blk.reads] * len(positions))[:-1])
        return sums.reshape(len(positions), len(blk.reads))


@torch.no_grad()
def greedy_completions(model, tokenizer, prompts: list[str], max_new_tokens: int = 96, batch_size: int = 64,
                       device: str | torch.device = "cpu", chats: list[list[dict] | None] | None = None) -> list[str]:
    """The greedy completion text of each prompt (special tokens dropped, prompts left-padded); a prompt with
    its conversation in ``chats`` goes through the tokenizer's chat template."""
    chats = chats or [None] * len(prompts)
    model.eval()
    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = [prompt_ids(tokenizer, p, bool(c), c) for p, c in zip(prompts[i: i + batch_size], chats[i: i + batch_size], strict=True)]
        width = max(map(len, enc))
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc], device=device)  # (B, T), left-padded
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc], device=device)
        gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        out += tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
    return out


def tokenize_pairs(tokenizer, pairs: list[dict]) -> list[dict]:
    """TRL's tokenized columns in the sample world's format: BOS + prompt | " " + completion + EOS."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def ids(text: str) -> list[int]:
        return tokenizer(" " + text, add_special_tokens=False)["input_ids"] + eos

    def first(p: dict) -> list[int]:  # conversational pairs: their turns through the chat template
        templated = bool(p.get("chat")) and bool(getattr(tokenizer, "chat_template", None))
        return prompt_ids(tokenizer, p["prompt"], templated, p.get("chat"))

    return [{"prompt_ids": first(p), "chosen_ids": ids(p["chosen"]), "rejected_ids": ids(p["rejected"])}
            for p in pairs]


class TextFamily(Family):
    name = "text"
    modality = TEXT
    auto_class = "AutoModelForCausalLM"
    chat_prompts = "records that are conversations (messages); plain prompts are read as text with BOS"

    def load_processor(self, folder: str | Path, vision=None, trust_remote_code: bool = False):
        return load_tokenizer(folder, trust_remote_code)

    def tokenizer(self, processor):
        return processor

    def load_model(self, folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
                   trust_remote_code: bool = False):
        return load_model(folder, device, dtype, trust_remote_code)

    def attach_adapter(self, model, path: Path, name: str):
        from peft import PeftModel

        refuse_pickle_adapter(path)
        try:
            if isinstance(model, PeftModel):
                model.load_adapter(path, adapter_name=name, is_trainable=False)
            else:
                model = PeftModel.from_pretrained(model, path, adapter_name=name, is_trainable=False)
        except Exception as e:  # noqa: BLE001 - any failure to read an adapter is reported with its path
            first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
            raise InputError(f"{path}: adapter does not fit the base model ({first})") from None
        check_adapter_keys(model, name, path)  # missing or unexpected layers: an error, not a warning
        return model

    def encode(self, processor, records: list[dict], chat_template: bool = True, where: str = "") -> list[Encoded]:
        return encode(processor, records, chat_template=chat_template)

    def completion_hidden(self, series, model, encoded: list[Encoded], can_share: list[bool]) -> torch.Tensor:
        """Text batches share a common prompt prefix's KV cache when they can (``completion_hidden``)."""
        pad = series.tokenizer.pad_token_id if series.tokenizer.pad_token_id is not None else 0
        ids, mask = pad_right(encoded, pad, series.device)
        spans = [(e.start, len(e.input_ids)) for e in encoded]
        shared = shared_prefix(ids, spans) if can_share[0] else 0
        hidden, used = completion_hidden(model, ids, mask, spans, shared)  # (N, H)
        if shared >= MIN_SHARED and not used:
            can_share[0] = False  # the architecture's cache cannot be repeated: do not try again
        return hidden

    def tree_batch(self, series, jobs: list[tuple], tokens: LabelTokens) -> TextTrees:
        trees = [build_tree(e.input_ids[: ch[-1]], ch, tokens) for e, ch in jobs]
        return TextTrees(TreeBatch.make(trees, len(tokens.labels), series.device, series.dtype))

    def cached_prefix(self, series, enc, positions: list[int], tokens: LabelTokens, budget: int) -> CachedPrefix:
        return CachedPrefix(enc.input_ids[: positions[-1]], positions, Block.of(tokens), budget, series.device,
                            series.dtype)

    def greedy(self, model, processor, records: list[dict], max_new_tokens: int = 96, batch_size: int = 64,
               chat_template: bool = True) -> list[str]:
        with_images = next((r for r in records if r.get("images")), None)
        if with_images is not None:
            raise InputError(f"study {with_images.get('id')}: has images but the model is a text model "
                             f"({self.name} family); expected a vision-language model to decode it with its images")
        device = next(model.parameters()).device
        return greedy_completions(model, processor, [r["prompt"] for r in records], max_new_tokens, batch_size,
                                  device, chats=[r.get("chat") if chat_template else None for r in records])

    def encode_pairs(self, processor, pairs: list[dict], max_length: int, data: str = "",
                     model: str = "") -> tuple[list[dict], list[str]]:
        with_images = next((i for i, p in enumerate(pairs) if p.get("images")), None)
        if with_images is not None:
            return [], [f"{data}: pair {with_images + 1} has images but the base model {model} is a "
                        "text-only model; train a vision-language base on pairs with images"]
        return tokenize_pairs(processor, pairs), []

    def preference_collator(self, processor, max_length: int | None):
        from core.models.families.text_collator import WeightedPreferenceCollator  # TRL: imported by training only

        return WeightedPreferenceCollator(pad_token_id=processor.pad_token_id or 0, max_length=max_length)


TEXT_FAMILY = TextFamily()
