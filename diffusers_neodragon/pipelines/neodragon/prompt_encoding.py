"""NeodragonPipeline's text side: tokenisation that says what it dropped, the token features (DT5 + ContextAdapter,
or the transformer's own context embedder), the pooled CLIP vector, and ``encode_prompt`` with diffusers' signature."""

import torch
from diffusers.utils import logging

from ...data.vocab_tokenizer import known_words, prompt_normalizer


logger = logging.get_logger(__name__)


def _join_rows(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``torch.cat([first, second])``, but without a copy when they are consecutive rows of one tensor (the negative
    and positive halves of one encoding): the joined tensor then keeps that encoding's memory layout, and with it the
    exact numerics of the transformer's kernels (a trimmed, non-contiguous view takes other paths than a copy)."""
    if (
        first.device == second.device and first.dtype == second.dtype and first.shape[1:] == second.shape[1:]
        and first.stride() == second.stride()
        and first.untyped_storage().data_ptr() == second.untyped_storage().data_ptr()
        and second.storage_offset() == first.storage_offset() + first.shape[0] * first.stride(0)
    ):
        return first.as_strided((first.shape[0] + second.shape[0], *first.shape[1:]), first.stride(),
                                first.storage_offset())
    return torch.cat([first, second])


class NeodragonPromptEncodingMixin:
    """Prompt encoding of [`NeodragonPipeline`] (it also provides ``_require`` and ``_text_feature_dim``)."""

    def _tokenize(self, tokenizer, name: str, texts: list[str], max_length: int, dropped: dict):
        """Pad/truncate to ``max_length``; record in ``dropped`` the words the tokenizer does not know (they become
        its unknown token) and the text cut off at ``max_length``, for one warning per call."""
        tokens = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        unk = tokenizer.unk_token_id
        for text in dict.fromkeys(texts):
            full = tokenizer(text, return_offsets_mapping=tokenizer.is_fast, verbose=False)
            if unk is not None and tokenizer.is_fast:
                for token, (start, stop) in zip(full.input_ids, full.offset_mapping):
                    if token == unk and start < stop:  # CLIP's unk is its end-of-text token (an empty span)
                        dropped["unknown"].setdefault(text[start:stop], []).append(name)
            if len(full.input_ids) > max_length:
                if tokenizer.is_fast:
                    kept = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
                    cut = text[max(stop for _, stop in kept.offset_mapping):].strip()
                else:
                    cut = tokenizer.decode(full.input_ids[max_length - 1 : -1])
                dropped["truncated"].setdefault((text, cut), []).append(f"{name} ({max_length} tokens)")
        return tokens

    def _normalize_texts(self, texts: list[str], dropped: dict) -> list[str]:
        """``texts`` rewritten by the prompt normaliser that the pipeline's tokenizers name in their config (the
        Shapes model's: free phrasings to its captions' form), unchanged when they name none; the words it left out
        are recorded in ``dropped`` for the call's one warning."""
        found = {}
        for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
            tokenizer = getattr(self, name, None)
            normalize = None if tokenizer is None else prompt_normalizer(tokenizer)
            if normalize is not None:
                found.setdefault(normalize, []).append(name)
        if len(found) > 1:
            raise ValueError(
                f"The pipeline's tokenizers name different prompt normalisers ({list(found.values())}); a prompt can "
                "be rewritten only one way: make their `prompt_normalizer` (tokenizer_config.json) agree"
            )
        if not found:
            return texts
        (normalize, names), = found.items()
        dropped["normalized_by"] = names
        normalized = []
        for text in texts:
            result = normalize(text)
            if result.ignored:
                dropped["ignored"].setdefault(text, (result.text, result.ignored))
            normalized.append(result.text)
        return normalized

    def _warn_dropped(self, dropped: dict):
        if dropped.get("ignored"):
            words = list(dict.fromkeys(w for _, ignored in dropped["ignored"].values() for w in ignored))
            readings = "; ".join(f"{text!r} as {read!r}" for text, (read, _) in dropped["ignored"].items())
            logger.warning(
                f"These words are not understood by the prompt normaliser that {', '.join(dropped['normalized_by'])} "
                f"name (it rewrites prompts to the captions the model was trained on) and were left out: {words}. "
                f"Read {readings}."
            )
        if dropped["unknown"]:
            names = sorted({n for found in dropped["unknown"].values() for n in found})
            message = (
                f"These words are not in the vocabulary of {', '.join(names)} and were replaced by its unknown token: "
                f"{sorted(dropped['unknown'])}."
            )
            vocabularies = [known_words(getattr(self, n)) for n in names]
            if all(v is not None for v in vocabularies):
                known = [w for w in vocabularies[0] if all(w in v for v in vocabularies[1:])]
                message += f" The model knows only these words: {', '.join(known)}."
            logger.warning(message)
        for (text, cut), names in dropped["truncated"].items():
            logger.warning(
                f"The following part of your input was truncated because {', '.join(names)} can only handle "
                f"sequences that long: {cut!r} (of {text!r})"
            )

    def _pooled_embeddings(self, texts: list[str], device, dropped: dict | None = None) -> torch.Tensor:
        """The pooled vector: the ``text_embeds`` of ``text_encoder`` and ``text_encoder_2`` concatenated."""
        dropped = {"unknown": {}, "truncated": {}} if dropped is None else dropped
        pooled = []
        for name in ("text_encoder", "text_encoder_2"):
            encoder = getattr(self, name)
            if encoder is None:
                continue
            tokenizer_name = name.replace("text_encoder", "tokenizer")
            self._require(tokenizer_name, purpose=f"tokenizes the prompt for `{name}`")
            tokenizer = getattr(self, tokenizer_name)
            ids = self._tokenize(tokenizer, tokenizer_name, texts, tokenizer.model_max_length, dropped).input_ids
            pooled.append(encoder(ids.to(device)).text_embeds)
        expected = self.transformer.config.pooled_projection_dim if self.transformer is not None else None
        width = sum(p.shape[-1] for p in pooled)
        if not pooled or (expected is not None and width != expected):
            raise ValueError(
                f"The pooled text vector needs `text_encoder` and/or `text_encoder_2` whose projections add up to the "
                f"transformer's pooled_projection_dim ({expected}); this pipeline's give {width}. Pass "
                "`pooled_prompt_embeds` (and `negative_pooled_prompt_embeds`) instead"
            )
        return torch.cat(pooled, dim=-1)

    def _encode_texts(self, texts: list[str], device, max_sequence_length: int):
        """Token features (through the ContextAdapter), their mask and the pooled vector for a list of texts.

        Trailing padding common to all texts is cut off: padded tokens influence nothing (the reference masks
        them out), so dropping them gives identical results with shorter attention. The mask is returned as
        ``None`` when no padding remains, which lets the transformer run unmasked fused attention.
        """
        self._require("text_encoder_3", "tokenizer_3", purpose="encodes the prompt (or pass `prompt_embeds`)")
        dropped = {"unknown": {}, "truncated": {}, "ignored": {}}
        texts = self._normalize_texts(texts, dropped)
        tokens = self._tokenize(self.tokenizer_3, "tokenizer_3", texts, max_sequence_length, dropped)
        ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
        embeds = self.text_encoder_3(ids, attention_mask=mask).last_hidden_state
        if self.context_adapter is not None:
            embeds = self.context_adapter(embeds.to(self.context_adapter.dtype))
        if self.transformer is not None and embeds.shape[-1] != self._text_feature_dim():
            raise ValueError(
                f"`text_encoder_3` gives {embeds.shape[-1]}-wide token features but the transformer takes "
                f"{self._text_feature_dim()}: this pipeline needs the `context_adapter` component that maps them"
            )
        lengths = tokens.attention_mask.sum(1)
        keep = max(int(lengths.max()), 1)
        embeds, mask = embeds[:, :keep], mask[:, :keep]
        if bool((lengths == keep).all()):
            mask = None
        pooled = self._pooled_embeddings(texts, device, dropped)
        self._warn_dropped(dropped)
        return embeds, mask, pooled

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        num_videos_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        max_sequence_length: int = 128,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        r"""Encode the prompt (and, for classifier-free guidance, the negative prompt) into what ``__call__`` takes.

        The pipeline's ``prompt_suffix`` is appended to every prompt and ``default_negative_prompt`` stands in for a
        missing ``negative_prompt``, as in ``__call__``. Embeddings given are used as they are (one row per
        prompt); positive and negative texts that are encoded are encoded in one batch, so that they share one
        trimmed length (see ``_encode_texts``). Every output has one row per video (rows repeated
        ``num_videos_per_prompt`` times): pass them back to ``__call__`` with ``num_videos_per_prompt=1``.

        Returns:
            ``(prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds,
            prompt_attention_mask, negative_prompt_attention_mask)``: token features [B, L, D] (after the
            ContextAdapter), pooled vectors [B, P], masks [B, L] (1 = token) or ``None`` when nothing is padded;
            the negative ones are ``None`` without CFG.
        """
        device = device or self._execution_device
        if dtype is None:
            dtype = (self.transformer or self.text_encoder_3).dtype
        prompts = None if prompt is None else [prompt] if isinstance(prompt, str) else list(prompt)
        if prompts is None and prompt_embeds is None:
            raise ValueError("Pass `prompt` or `prompt_embeds`")
        batch = len(prompts) if prompts is not None else prompt_embeds.shape[0]
        texts = [] if prompt_embeds is not None else [p + self.config.prompt_suffix for p in prompts]
        negatives = []
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negatives = negative_prompt if negative_prompt is not None else self.config.default_negative_prompt
            negatives = [negatives] * batch if isinstance(negatives, str) else list(negatives)
            negatives = negatives * batch if len(negatives) == 1 else negatives
        if texts or negatives:
            if prompt_embeds is not None and pooled_prompt_embeds is None:
                raise ValueError("`prompt_embeds` needs `pooled_prompt_embeds` too")
            embeds, mask, pooled = self._encode_texts(negatives + texts, device, max_sequence_length)
            split = len(negatives)
            if negatives:
                negative_prompt_embeds, negative_pooled_prompt_embeds = embeds[:split], pooled[:split]
                negative_prompt_attention_mask = None if mask is None else mask[:split]
            if texts:
                prompt_embeds, pooled_prompt_embeds = embeds[split:], pooled[split:]
                prompt_attention_mask = None if mask is None else mask[split:]

        def per_video(tensor, cast=True):
            if tensor is None:
                return None
            tensor = tensor.to(device=device, dtype=dtype if cast else tensor.dtype)
            return tensor.repeat_interleave(num_videos_per_prompt, dim=0) if num_videos_per_prompt > 1 else tensor

        prompt_embeds, pooled_prompt_embeds = per_video(prompt_embeds), per_video(pooled_prompt_embeds)
        prompt_attention_mask = per_video(prompt_attention_mask, cast=False)
        negative_prompt_embeds = per_video(negative_prompt_embeds)
        negative_pooled_prompt_embeds = per_video(negative_pooled_prompt_embeds)
        negative_prompt_attention_mask = per_video(negative_prompt_attention_mask, cast=False)
        return (
            prompt_embeds,
            negative_prompt_embeds,
            pooled_prompt_embeds,
            negative_pooled_prompt_embeds,
            prompt_attention_mask,
            negative_prompt_attention_mask,
        )

    @staticmethod
    def _negative_then_positive(negative: tuple, positive: tuple) -> tuple:
        """``(embeds, mask, pooled)`` of the CFG batch: negative rows first, both padded (masked) to one length; the
        mask is ``None`` when no row has padding."""
        (n_embeds, n_mask, n_pooled), (p_embeds, p_mask, p_pooled) = negative, positive
        length = max(n_embeds.shape[1], p_embeds.shape[1])
        if n_mask is None and p_mask is None and n_embeds.shape[1] == p_embeds.shape[1]:
            return _join_rows(n_embeds, p_embeds), None, _join_rows(n_pooled, p_pooled)

        def padded(embeds, mask):
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device) if mask is None else mask.long()
            extra = length - embeds.shape[1]
            if extra:
                embeds = torch.cat([embeds, embeds.new_zeros(embeds.shape[0], extra, embeds.shape[2])], dim=1)
                mask = torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], dim=1)
            return embeds, mask

        (n_embeds, n_mask), (p_embeds, p_mask) = padded(n_embeds, n_mask), padded(p_embeds, p_mask)
        mask = _join_rows(n_mask, p_mask)
        mask = None if bool(mask.bool().all()) else mask
        return _join_rows(n_embeds, p_embeds), mask, _join_rows(n_pooled, p_pooled)
