"""Offline word-level tokenizers with T5-like or CLIP-like special tokens.

Tests and the synthetic Shapes world need tokenizers that behave like the real ones where the pipeline cares
(T5: ``words… </s> <pad>…`` with an attention mask; CLIP: ``<bos> words… <eos> <pad>…``, pooled at the EOS) but
cannot download the real vocabularies. A closed vocabulary of whole words is enough for templated captions.

Such a tokenizer can name a prompt normaliser in its config (``prompt_normalizer`` in tokenizer_config.json): a
pipeline whose model was trained on templated captions rewrites what a user types into their form before tokenising
(:func:`prompt_normalizer`); tokenizers without the key, every real one, leave prompts alone.
"""

from collections.abc import Callable, Iterable

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from .shapes_prompts import NormalizedPrompt, normalize_shapes_prompt


# The names a tokenizer config may give as ``prompt_normalizer``, and what they do to a prompt.
PROMPT_NORMALIZERS: dict[str, Callable[[str], NormalizedPrompt]] = {"shapes": normalize_shapes_prompt}


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    # Split on whitespace, then isolate every punctuation character as its own token.
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])


def build_word_level_tokenizer(
    words: Iterable[str],
    model_max_length: int,
    pad_token: str = "<pad>",
    eos_token: str = "</s>",
    bos_token: str | None = None,
    unk_token: str = "<unk>",
    prompt_normalizer: str | None = None,
) -> PreTrainedTokenizerFast:
    """Build a lowercasing word-level tokenizer over ``words`` that appends ``eos_token`` (and prepends
    ``bos_token`` when given) to every sequence.

    Ids: the special tokens come first, in the order pad, eos, unk, bos (so the T5-like default has T5's
    ``<pad>=0, </s>=1, <unk>=2``), then the lowercased ``words`` in first-seen order, duplicates dropped. Text is
    lowercased and split on whitespace, each punctuation character becoming its own token (so include "," or "."
    in ``words`` if captions use them); anything not in the vocabulary becomes ``unk_token``.

    Padding is on the right. With ``truncation=True`` the words are cut so that the special tokens still fit:
    ``max_length=4`` on "a red circle moving" gives ``a red circle </s>`` (T5-like) or ``<bos> a red <eos>``
    (CLIP-like); the EOS is always the last real token. The returned tokenizer produces ``input_ids`` and
    ``attention_mask`` only, and round-trips through ``save_pretrained`` / ``AutoTokenizer.from_pretrained``.

    ``prompt_normalizer`` (a key of :data:`PROMPT_NORMALIZERS`) is saved in the tokenizer's config so that pipelines
    rewrite prompts with it (see :func:`prompt_normalizer`); the tokenizer itself tokenises text as given.
    """
    if prompt_normalizer is not None and prompt_normalizer not in PROMPT_NORMALIZERS:
        raise ValueError(
            f"Unknown `prompt_normalizer` {prompt_normalizer!r}; expected None or one of {sorted(PROMPT_NORMALIZERS)}.")
    if not isinstance(model_max_length, int) or model_max_length < 2:
        raise ValueError(
            f"`model_max_length` must be an int >= 2 (room for a word and the EOS), got {model_max_length!r}.")
    specials: list[str] = [pad_token, eos_token, unk_token] + ([bos_token] if bos_token is not None else [])
    if any(not isinstance(t, str) or not t for t in specials) or len(set(specials)) != len(specials):
        raise ValueError(f"Special tokens must be distinct non-empty strings, got {specials}.")

    pre_tokenizer = _pre_tokenizer()
    vocab = {token: i for i, token in enumerate(specials)}
    for word in words:
        if not isinstance(word, str):
            raise ValueError(f"Every word must be a string, got {word!r}.")
        word = word.lower()
        if word in specials:
            raise ValueError(f"Word {word!r} collides with a special token.")
        pieces = [piece for piece, _ in pre_tokenizer.pre_tokenize_str(word)]
        if pieces != [word]:
            raise ValueError(
                f"Word {word!r} would be split into {pieces} by the pre-tokenizer (whitespace and punctuation); "
                "pass its pieces as separate words."
            )
        vocab.setdefault(word, len(vocab))
    if len(vocab) == len(specials):
        raise ValueError("`words` is empty: the vocabulary needs at least one word.")

    backend = Tokenizer(WordLevel(vocab=vocab, unk_token=unk_token))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizer
    prefix = f"{bos_token} " if bos_token is not None else ""
    special_ids = [(t, vocab[t]) for t in ([bos_token] if bos_token is not None else []) + [eos_token]]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{prefix}$A {eos_token}", pair=f"{prefix}$A {eos_token} $B {eos_token}", special_tokens=special_ids
    )

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=model_max_length,
        padding_side="right",
        truncation_side="right",
        pad_token=pad_token,
        eos_token=eos_token,
        unk_token=unk_token,
        bos_token=bos_token,
        model_input_names=["input_ids", "attention_mask"],
        **({"prompt_normalizer": prompt_normalizer} if prompt_normalizer is not None else {}),
    )


def known_words(tokenizer) -> list[str] | None:
    """The words a word-level tokenizer knows (its vocabulary without the special tokens, in id order), so that a
    warning about unknown words can say what to use instead; ``None`` for sub-word tokenizers (BPE, SentencePiece),
    whose vocabulary is no list of words."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not isinstance(backend.model, WordLevel):
        return None
    special = set(tokenizer.all_special_tokens)
    vocab = tokenizer.get_vocab()
    return [word for word in sorted(vocab, key=vocab.get) if word not in special]


def prompt_normalizer(tokenizer) -> Callable[[str], NormalizedPrompt] | None:
    """The prompt normaliser that ``tokenizer``'s config names (``prompt_normalizer`` in tokenizer_config.json, kept by
    ``save_pretrained``), or ``None`` when it names none. A name this version does not know raises ValueError rather
    than letting prompts reach the model in a form it was not trained on."""
    name = (getattr(tokenizer, "init_kwargs", None) or {}).get("prompt_normalizer")
    if name is None:
        return None
    if name not in PROMPT_NORMALIZERS:
        raise ValueError(
            f"The tokenizer's config names the prompt normaliser {name!r}, which this version of diffusers_neodragon "
            f"does not know (it knows {sorted(PROMPT_NORMALIZERS)}); upgrade diffusers_neodragon, or remove "
            "`prompt_normalizer` from tokenizer_config.json to pass prompts unchanged."
        )
    return PROMPT_NORMALIZERS[name]
