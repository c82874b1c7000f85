"""Offline byte-level BPE tokenizer with ME-DLM's special tokens and a chat template.

Nothing is downloaded: the default tokenizer is trained in seconds with ``tokenizers`` on text the
project generates itself (the toy word problems) plus a slice of the Python standard library's own
source files, and saved so that ``AutoTokenizer.from_pretrained(dir)`` loads it.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

MASK = "<|mask|>"
DEL = "<|del|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
EOS = "<|endoftext|>"
# Order fixes the ids 0..5 in every tokenizer we train.
SPECIAL_TOKENS = [MASK, DEL, PAD, IM_START, IM_END, EOS]
DEFAULT_VOCAB_SIZE = 1024

# The default chat format as a Jinja template (``tokenizer.chat_template``): every message as
# ``<|im_start|>{role}\n{content}<|im_end|>\n``, then ``<|im_start|>assistant\n`` when a generation
# prompt is asked for. Tokenized, the special tokens split the text, so the ids equal encoding each
# piece on its own. A tokenizer that brings its own template (a converted LLaDA-8B) keeps it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# End-of-turn tokens of other chat formats that end a response when a tokenizer has them
# (LLaDA-8B-Instruct ends its turn with ``<|eot_id|>``, then pads with its eos).
END_OF_TURN_TOKENS = ("<|eot_id|>",)


@dataclass(frozen=True)
class SpecialIds:
    mask: int
    delete: int
    pad: int
    im_start: int
    im_end: int
    eos: int
    stops: tuple[int, ...] = ()  # the tokenizer's own END_OF_TURN_TOKENS, when it has any

    @property
    def no_insert(self) -> int:
        """The insertion head's 'nothing to insert' class (the pad id: pad is never inserted)."""
        return self.pad

    @property
    def end_ids(self) -> tuple[int, ...]:
        """Tokens that end a response: ``<|im_end|>``, eos and the tokenizer's own end-of-turn tokens."""
        return tuple(dict.fromkeys((self.im_end, self.eos, *self.stops)))


def response_end(ids: Sequence[int], special: SpecialIds, stop_ids: Sequence[int] = ()) -> Optional[int]:
    """Index of the first token that ends the response (``special.end_ids`` or ``stop_ids``), else None."""
    ends = set(special.end_ids) | set(stop_ids)
    return next((i for i, t in enumerate(ids) if t in ends), None)


def special_ids(tokenizer) -> SpecialIds:
    """Look up the special token ids, failing clearly when a tokenizer lacks one.

    mask / pad / eos follow the tokenizer's own ``mask_token`` / ``pad_token`` / ``eos_token`` when it
    names them (a converted LLaDA tokenizer keeps its ``<|mdm_mask|>``); the rest go by name.
    """
    names = {
        "mask": getattr(tokenizer, "mask_token", None) or MASK,
        "delete": DEL,
        "pad": getattr(tokenizer, "pad_token", None) or PAD,
        "im_start": IM_START,
        "im_end": IM_END,
        "eos": getattr(tokenizer, "eos_token", None) or EOS,
    }
    ids = {}
    for name, tok in names.items():
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is None or tokenizer.convert_ids_to_tokens(tid) != tok:
            raise ValueError(f"tokenizer has no special token {tok!r} ({name}); it needs all of {SPECIAL_TOKENS}")
        ids[name] = tid
    stops = []
    for tok in END_OF_TURN_TOKENS:
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is not None and tid != tokenizer.unk_token_id and tokenizer.convert_ids_to_tokens(tid) == tok:
            stops.append(int(tid))
    return SpecialIds(**ids, stops=tuple(stops))


def stdlib_corpus(max_files: int = 60, max_chars: int = 20_000) -> Iterator[str]:
    """A deterministic slice of the standard library's .py files: an offline code corpus."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())[:max_files]
    for path in files:
        try:
            yield path.read_text(encoding="utf-8")[:max_chars]
        except (UnicodeDecodeError, OSError):
            continue


def default_corpus(n_problems: int = 300, seed: int = 0) -> Iterator[str]:
    """Toy word problems (all solution phrasings) followed by standard-library code."""
    from medlm.tasks.toy import corpus_text

    yield from corpus_text(n_problems, seed=seed)
    yield from stdlib_corpus()


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts``; special tokens get ids 0..5 in ``SPECIAL_TOKENS`` order."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} is below the byte alphabet plus specials ({256 + len(SPECIAL_TOKENS)})")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(texts), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        mask_token=MASK,
        pad_token=PAD,
        eos_token=EOS,
        bos_token=EOS,
        additional_special_tokens=[DEL, IM_START, IM_END],
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_default_tokenizer(out_dir: str | Path | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE):
    """Train the project's default tokenizer (and save it when ``out_dir`` is given)."""
    tok = train_tokenizer(default_corpus(), vocab_size=vocab_size)
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def load_tokenizer(path: str | Path):
    """Load a saved tokenizer and check it carries the special tokens."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer at {path}")
    tok = AutoTokenizer.from_pretrained(str(path))
    special_ids(tok)
    return tok


def tokenizer_hash(tokenizer) -> str:
    """A content hash of the vocabulary and merges, recorded as provenance in every dataset."""
    state = tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else json.dumps(
        tokenizer.get_vocab(), sort_keys=True
    )
    return hashlib.sha256(state.encode("utf-8")).hexdigest()[:16]


def chat_prompt_ids(tokenizer, prompt: str | None = None, messages: Sequence[dict] | None = None) -> list[int]:
    """Token ids of a chat prompt ending where the assistant's response begins.

    Built with ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``: the tokenizer's own
    ``chat_template`` when it has one, else :data:`CHAT_TEMPLATE`
    (``<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n``).
    """
    if (prompt is None) == (messages is None):
        raise ValueError("pass exactly one of prompt or messages")
    if messages is None:
        messages = [{"role": "user", "content": prompt}]
    special_ids(tokenizer)  # a tokenizer without medlm's special tokens fails here, naming them
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"message role {role!r} is not one of system, user, assistant")
        if not isinstance(content, str):
            raise ValueError(f"message content must be a string, got {type(content).__name__}")
    ids = tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in messages],
        chat_template=tokenizer.chat_template or CHAT_TEMPLATE,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    return [int(i) for i in ids]


def response_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a reference response, terminated by ``<|im_end|>``."""
    return tokenizer.encode(text, add_special_tokens=False) + [special_ids(tokenizer).im_end]


def decode_response(tokenizer, ids: Sequence[int], stop_ids: Sequence[int] = ()) -> str:
    """Text of a generated response: up to the first end token (``<|im_end|>``, eos, the tokenizer's
    ``<|eot_id|>``, any of ``stop_ids``), specials dropped."""
    sp = special_ids(tokenizer)
    end = response_end(ids, sp, stop_ids)
    out = []
    for t in ids[:end]:
        if t in (sp.pad, sp.mask, sp.delete):
            continue
        out.append(int(t))
    return tokenizer.decode(out, skip_special_tokens=True)
