#!/usr/bin/env python3
"""Writes the Hugging Face interop fixtures under tests/hf/fixtures/ and checks folders that
baregpt saved in the Hugging Face layout.

Requirements: Python 3 with torch, transformers (5.x), tokenizers and safetensors (made with
torch 2.15, transformers 5.24, tokenizers 0.23, safetensors 0.8: `pip install torch
transformers tokenizers safetensors`; PyPI's torch brings its CUDA libraries, a few GB).
Nothing is downloaded: the tokenizers are trained on the text in CORPUS_LINES below and the
models are random. Run from anywhere:

    python3 tests/hf/generate.py             # (re)write tests/hf/fixtures/
    python3 tests/hf/generate.py --verify    # regenerate in a temporary folder, compare bytes
    python3 tests/hf/generate.py --check     # check target/tmp/hf-saved/tiny-{gpt2,llama}
    python3 tests/hf/generate.py --check DIR [DIR ...]   # check other saved folders
    python3 tests/hf/generate.py --self-test # show that --check rejects broken folders

What it writes (see tests/hf/README.md for the list with sizes):

    corpus.txt                 the training text of both tokenizers (plain prose and dialogue)
    tiny-gpt2/                 GPT2LMHeadModel, float32, tied head, byte-level BPE tokenizer
    tiny-gpt2-f16/             the same weights stored as float16
    tiny-llama/                LlamaForCausalLM, float32, untied head, SentencePiece-style BPE
    tiny-llama-bf16-sharded/   the same weights stored as bfloat16 in several shards
    <folder>.reference.safetensors   ids, targets, logits, loss (and grad.<name> for the two
                                     float32 folders), computed by transformers in float64
    tokenizer_cases.json       texts with the ids and decodings of both tokenizers

Each model folder is what `save_pretrained` writes (config.json, generation_config.json,
model.safetensors or model-0000k-of-0000n.safetensors with model.safetensors.index.json) plus
the tokenizer files of `PreTrainedTokenizerFast.save_pretrained` (tokenizer.json,
tokenizer_config.json).

The tokenizers
--------------
gpt2:  byte-level BPE as GPT-2's tokenizer.json has it: no normalizer, ByteLevel pre-tokenizer
       with GPT-2's split regex (add_prefix_space false), ByteLevel post-processor (adds no
       tokens) and decoder. Ids 0..255 are the 256 byte symbols, then the learned merges, and
       `<|endoftext|>` is the last id (as 50256 is in GPT-2).
llama: Llama 2's tokenizer.json shape: normalizer Sequence[Prepend("▁"), Replace(" " -> "▁")],
       no pre-tokenizer, BPE with byte_fallback and fuse_unk, ids 0, 1, 2 = <unk>, <s>, </s>
       (added special tokens, not normalized), ids 3..258 = <0x00>..<0xFF>, then the learned
       pieces; post-processor TemplateProcessing "<s> $A"; decoder Sequence[Replace("▁" -> " "),
       ByteFallback, Fuse, Strip(" ", 1, 0)]. Its merges were learned with words split at "▁"
       (so no merge spans two words), like SentencePiece's default. Only the 50 most frequent
       characters are pieces; the others (newline, tab, most digits, "!", brackets, all
       non-ASCII) fall back to byte tokens. Note: the tokenizers library writes merges as
       pairs (["▁", "t"]), not as the older "▁ t" strings.

The models and their references
-------------------------------
Weights come from a seeded generator: matrices and embeddings normal(0, 0.2), norm weights
1 + normal(0, 0.1), biases normal(0, 0.1), so that a mapping bug (a missing transpose, q/k/v
in the wrong order, rotate-half taken for interleaved rotary) changes the logits by O(1).

The references load each folder back with `from_pretrained(folder, dtype=float64,
attn_implementation="eager")`, in eval mode, so they are exact functions of the *stored*
weights (a float16 or bfloat16 weight is exactly representable in float64). `loss` is the mean
cross-entropy of `logits` against `targets` over all B*T positions (no shift), and
`grad.<name>` is d loss / d parameter for every `named_parameters()` entry, in Hugging Face's
names and layouts (GPT-2's tied `transformer.wte.weight` includes the head's contribution).

The float64 Llama patch: transformers' Llama computes RMSNorm in float32
(`hidden_states.to(torch.float32)`), its rotary inv_freq and cos/sin in float32, and the eager
attention softmax with `dtype=torch.float32`, even in a float64 model. That is only ~1e-7
accurate, and the Rust tests compare to 1e-10. So for every Llama forward in this script
(references and --check) `llama_f64()` temporarily replaces `LlamaRMSNorm.forward` (same
formula in the input's dtype), `LlamaRotaryEmbedding.forward` (inv_freq and cos/sin in float64
from the config's rope_theta) and the module-level `eager_attention_forward` (softmax in the
input's dtype). The script prints the largest difference between patched and unpatched
float64 logits (8.7e-7 here, for logits of order 1 computed through float32 steps),
and checks both models against a plain-torch float64 implementation written below (agreement
~1e-15), which shows the patch leaves no float32 step behind. GPT-2 needs no patch.

Determinism: one thread, deterministic algorithms, fixed seeds; the tokenizers' BPE training
is deterministic. `--verify` regenerates everything in a temporary folder and compares every
file byte for byte with the committed ones; config.json records `transformers_version`, so a
different transformers version changes those bytes (and nothing else is expected to change).

--check DIR ...: for each folder (default target/tmp/hf-saved/tiny-gpt2 and tiny-llama under
the repository root, where baregpt's Rust test saves), picks the fixture of the same name (or,
failing that, by model_type), and checks that: the stored tensor names and shapes equal the
fixture's; from_pretrained reports no missing, unexpected or mismatched keys; the config values
that matter equal the fixture's; the float64 logits on the reference ids match the reference
(max |diff| <= 1e-10 when the folder stores the same or a wider dtype than the fixture; a
narrower dtype is compared with a lossy bound and said so); and, if the folder has a
tokenizer.json, that it encodes the corpus and the tokenizer cases exactly like the fixture's.
One line per folder; the exit status is non-zero if any folder fails.
"""

import argparse
import contextlib
import copy
import filecmp
import json
import math
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import (  # noqa: E402
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
import transformers.models.llama.modeling_llama as modeling_llama  # noqa: E402

transformers.utils.logging.disable_progress_bar()

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_CHECK = [
    os.path.join(REPO, "target", "tmp", "hf-saved", "tiny-gpt2"),
    os.path.join(REPO, "target", "tmp", "hf-saved", "tiny-llama"),
]

BATCH, SEQ = 2, 12
GPT2_VOCAB = 320  # 256 byte symbols + 63 merges + <|endoftext|>
LLAMA_PIECES = 93  # <unk> <s> </s>, 50 characters and 40 merges; + 256 byte tokens = 349
LLAMA_ALPHABET = 50
TOL = 1e-10

# Written for this project: a few scenes on a coast, as plain prose and dialogue lines.
CORPUS_LINES = [
    "The lighthouse keeper woke before the gulls and put the kettle on the stove.",
    '"Is the ferry running today?" asked the woman at the door.',
    '"Only if the wind drops," he said. "It hasn\'t dropped since Tuesday."',
    "She laughed, shook the rain from her coat, and sat down by the window.",
    "Outside, the sea was grey and loud, and the harbour boats rocked on their ropes.",
    "He poured two cups of tea and pushed the sugar bowl across the table.",
    '"I came to see the old map," she said. "The one your grandfather drew."',
    '"That map is wrong in three places," he told her, "but I\'ll show it to you."',
    "They climbed the narrow stairs to the lamp room, counting the steps as they went.",
    "There were ninety-two steps, and the last twelve were steep and worn in the middle.",
    "At the top the glass was salted white, and the great lens stood silent in its frame.",
    "The map hung in a wooden case beside the lens, faded to the colour of weak coffee.",
    '"Look here," he said, tapping the glass. "He put the reef a mile too far north."',
    '"Did anyone run aground because of it?" she asked.',
    '"Not that I know of. Everybody here learns the reef from their parents, not from paper."',
    "She took out a small notebook and wrote down the names along the coast.",
    "Some of the names were French, some were Norse, and one was so old that nobody could say it.",
    "In the afternoon the wind finally eased, and the ferry horn sounded twice from the pier.",
    "",
    "Marta ran a café in the square, next to the bakery and the shop that sold nets.",
    "Her menu was written in chalk: crêpes, soupe du jour, and a crème brûlée on Sundays.",
    "A visitor from München once told her that her strudel was better than his grandmother's.",
    'She did not believe him, but she wrote "Straße" on the board for a week to tease him.',
    "The fishermen came in at six, ordered coffee, and argued about the weather forecast.",
    '"Force five, gusting seven," said one. "Rubbish," said another. "It\'s a flat calm."',
    "Nobody was ever right, and nobody ever admitted being wrong, which suited them all.",
    "On the wall hung a photograph of the harbour in 1953, the year of the great storm.",
    "In the photograph the water reached the second step of the church, and boats lay in the road.",
    "Marta's father had been nine years old then; he remembered the bells ringing all night.",
    "",
    "Teacher: What do you think the tide does twice a day?",
    "Pupil: It comes in and goes out again, because the moon pulls on the water.",
    "Teacher: Good. And why is the tide higher at some times of the month?",
    "Pupil: When the sun and the moon pull in the same direction, the tides are bigger.",
    "Teacher: That's right. We call those spring tides, although they happen all year.",
    "Pupil: Then why are they called spring tides if they don't happen in spring?",
    "Teacher: Because the water seems to spring up. The word is older than the season's name.",
    "Pupil: I didn't know that. Can we go down to the rocks and measure it?",
    "Teacher: Tomorrow, at low water, if you bring your boots and a long stick.",
    "",
    "The naïve plan was to walk the whole coast path in four days, sleeping in barns.",
    "By the second evening their feet were blistered and their maps were soaked through.",
    "A farmer named Zoë let them dry their socks by her fire and fed them soup with bread.",
    "She had travelled once to Kyoto and kept a scroll that read 日本語 above the fireplace.",
    '"I can\'t read it," she admitted, "but the man who sold it swore it said \'language\'."',
    "They promised to send her a postcard from the end of the path, and they did.",
    "The card showed a puffin on a cliff and cost €2 to send, which seemed a lot for a bird.",
    "",
    "Every winter the village held a quiz night in the back room of the inn.",
    "Question one: how many legs does a spider have? Eight, shouted the whole room at once.",
    "Question two: what is the capital of Iceland? Reykjavík, said the postman, very proudly.",
    "Question three: who wrote the first dictionary of the local dialect? Nobody knew.",
    "The answer was the lighthouse keeper's grandfather, the same man who drew the wrong map.",
    '"He was better at words than at reefs," the keeper said, and everyone laughed.',
    "The prize was a cake shaped like a boat, with a sail made of rice paper.",
    "The winning team ate the sail first and argued about who should take the hull home.",
    "",
    '"How far is it to the next town?" the cyclist asked, leaning on her handlebars.',
    '"Eleven miles by the road," said the postman, "or seven if you take the cliff path."',
    '"Which is faster?" "The road. The path is shorter, but you\'ll stop to look at things."',
    "She took the path anyway, and stopped at every gate to watch the seals below.",
    "At the ruined chapel she met a man repairing a wall, stone by stone, without mortar.",
    '"My uncle built the first half of this in 1968," he said. "I\'m doing the second half."',
    '"How long will it take you?" "Another summer, maybe two, if my back holds out."',
    "The wall ran straight for forty metres and then bent, for no reason anyone remembered.",
    "",
    "Late in the year the days grew short, and the lamp was lit at four in the afternoon.",
    "The keeper wound the clockwork twice a night, although the motor had been electric for years.",
    '"Habit," he said when she asked him why. "And in case the power fails. It has, twice."',
    "She stayed until the new year, copying the old map by hand, reef and all.",
    "On her last morning she left the copy on his table with a note: Thank you — M.",
    "He pinned it beside the original and, after some thought, moved the reef a mile south.",
]
CORPUS = "\n".join(CORPUS_LINES) + "\n"

# Texts for tokenizer_cases.json: edge cases of both tokenizers.
CASE_TEXTS = [
    "",
    " ",
    "   ",
    "Hello world",
    "The keeper wound the clockwork twice a night.",
    "  two leading spaces",
    "trailing spaces   ",
    "runs  of   spaces    inside",
    "tabs\tand\t\ttabs",
    "\n",
    "\n\n",
    "\r\n",
    "line one\nline two\n\nline four",
    "windows\r\nline end",
    " \n leading space then newline",
    "don't you think it's odd? I'd say we'll see, they're sure, I've won, I'm here",
    "DON'T SHOUT, IT'S LATE!",
    "café naïve Straße Reykjavík crème brûlée",
    "日本語のテキスト",
    "emoji: 🙂 🚢🌊 and a family 👨\u200d👩\u200d👧",
    "combining: e\u0301 n\u0303 a\u0308 versus é ñ ä",
    "digits: 1953, 42 boats, 3.14159, 1,000,000 and 007",
    "€2 — “quoted” ‘single’ … done",
    "non\u00a0breaking and zero\u200bwidth",
    "nul\x00byte",
    "?!., ;: ((brackets)) [x] {y}",
    "Pneumonoultramicroscopicsilicovolcanoconiosis",
    "hello<|endoftext|>world",
    "<|endoftext|>",
    "<|endoftext|> <|endoftext|>",
    "a <s> b </s> c <unk>",
    "<s>",
    "She stayed until the new year, copying the old map by hand, reef and all.",
]


# --------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------


def build_gpt2_tokenizer():
    """Byte-level BPE in GPT-2's tokenizer.json shape, `<|endoftext|>` as the last id."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=GPT2_VOCAB - 1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS_LINES, trainer=trainer)
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    assert tok.get_vocab_size() == GPT2_VOCAB, tok.get_vocab_size()
    assert tok.token_to_id("<|endoftext|>") == GPT2_VOCAB - 1
    return tok


def llama_alphabet():
    """The LLAMA_ALPHABET most frequent characters of the "▁"-joined lines, ties by code point.

    Chosen here rather than by the trainer's own `limit_alphabet` cut, which breaks ties in
    hash order and so would not be reproducible.
    """
    counts = {}
    for line in CORPUS_LINES:
        if line:
            for ch in "▁" + line.replace(" ", "▁"):
                counts[ch] = counts.get(ch, 0) + 1
    ranked = sorted(counts, key=lambda ch: (-counts[ch], ord(ch)))
    return ranked[:LLAMA_ALPHABET]


def build_llama_tokenizer():
    """A Llama 2 style tokenizer (see the module docstring for its shape)."""
    specials = ["<unk>", "<s>", "</s>"]
    # Learn the pieces with words split at "▁", so that no merge spans a word boundary.
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=LLAMA_PIECES,
        special_tokens=specials,
        initial_alphabet=llama_alphabet(),
        limit_alphabet=LLAMA_ALPHABET,
        show_progress=False,
    )
    learner.train_from_iterator(CORPUS_LINES, trainer=trainer)
    learned = json.loads(learner.to_str())["model"]
    vocab = {t: i for i, t in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(specials) + b
    for piece, i in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if i >= len(specials):
            vocab[piece] = i + 256
    assert sorted(vocab.values()) == list(range(len(vocab)))
    merges = [tuple(m) for m in learned["merges"]]
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    assert tok.get_vocab_size() == LLAMA_PIECES + 256
    return tok


def fast_tokenizer(tok, family):
    if family == "gpt2":
        names = dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    else:
        names = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=32, **names)


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def gpt2_config(vocab_size):
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=32,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_inner=None,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
        bos_token_id=vocab_size - 1,
        eos_token_id=vocab_size - 1,
    )


def llama_config(vocab_size):
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        hidden_act="silu",
        bos_token_id=1,
        eos_token_id=2,
    )


def randomize(model, seed):
    """Seeded weights at a scale that makes every mapping bug visible in the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            z = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if p.dim() == 1 and name.endswith(".weight"):  # LayerNorm / RMSNorm gains
                value = 1.0 + 0.1 * z
            elif name.endswith(".bias"):
                value = 0.1 * z
            else:
                value = 0.2 * z
            p.copy_(value.to(p.dtype))


def make_model(family, vocab_size, seed):
    torch.manual_seed(seed)
    if family == "gpt2":
        model = GPT2LMHeadModel(gpt2_config(vocab_size))
    else:
        model = LlamaForCausalLM(llama_config(vocab_size))
    randomize(model, seed)
    return model.to(torch.float32).eval()


def save_folder(model, tok, family, folder, dtype, max_shard_size=None):
    os.makedirs(folder)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    copy.deepcopy(model).to(dtype).save_pretrained(folder, **kwargs)  # `model` stays float32
    fast_tokenizer(tok, family).save_pretrained(folder)


# --------------------------------------------------------------------------------------
# The float64 Llama patch
# --------------------------------------------------------------------------------------


def _rms_norm_forward(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _rotary_forward(self, x, position_ids):
    config = self.config
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    base = float(config.rope_parameters["rope_theta"])
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = position_ids[..., None].to(torch.float64) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    cos = emb.cos() * self.attention_scaling
    sin = emb.sin() * self.attention_scaling
    return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def _eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    key_states = modeling_llama.repeat_kv(key, module.num_key_value_groups)
    value_states = modeling_llama.repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    return attn_output.transpose(1, 2).contiguous(), attn_weights


@contextlib.contextmanager
def llama_f64():
    """Llama's RMSNorm, rotary tables and eager softmax in the model's own dtype (float64)."""
    saved = (
        modeling_llama.LlamaRMSNorm.forward,
        modeling_llama.LlamaRotaryEmbedding.forward,
        modeling_llama.eager_attention_forward,
    )
    modeling_llama.LlamaRMSNorm.forward = _rms_norm_forward
    modeling_llama.LlamaRotaryEmbedding.forward = _rotary_forward
    modeling_llama.eager_attention_forward = _eager_attention_forward
    try:
        yield
    finally:
        (
            modeling_llama.LlamaRMSNorm.forward,
            modeling_llama.LlamaRotaryEmbedding.forward,
            modeling_llama.eager_attention_forward,
        ) = saved


def load_f64(folder):
    model, info = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float64, attn_implementation="eager", output_loading_info=True
    )
    return model.to(torch.float64).eval(), info


def forward_logits(model, ids):
    patch = llama_f64() if model.config.model_type == "llama" else contextlib.nullcontext()
    with patch:
        return model(input_ids=ids, use_cache=False).logits


# --------------------------------------------------------------------------------------
# Independent float64 forwards (plain torch), to confirm the references
# --------------------------------------------------------------------------------------


def plain_gpt2(p, cfg, ids):
    b, t = ids.shape
    c, h = cfg.n_embd, cfg.n_head
    d = c // h
    eps = cfg.layer_norm_epsilon

    def ln(x, name):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * p[name + ".weight"] + p[name + ".bias"]

    def conv1d(x, name):  # GPT-2's Conv1D stores (in, out)
        return x @ p[name + ".weight"] + p[name + ".bias"]

    mask = torch.tril(torch.ones(t, t, dtype=torch.bool))
    x = p["transformer.wte.weight"][ids] + p["transformer.wpe.weight"][:t]
    for layer in range(cfg.n_layer):
        pre = f"transformer.h.{layer}."
        qkv = conv1d(ln(x, pre + "ln_1"), pre + "attn.c_attn")
        q, k, v = (z.reshape(b, t, h, d).transpose(1, 2) for z in qkv.split(c, dim=-1))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        att = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        x = x + conv1d(y, pre + "attn.c_proj")
        u = conv1d(ln(x, pre + "ln_2"), pre + "mlp.c_fc")
        u = 0.5 * u * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * u**3)))
        x = x + conv1d(u, pre + "mlp.c_proj")
    return ln(x, "transformer.ln_f") @ p["transformer.wte.weight"].T


def plain_llama(p, cfg, ids):
    b, t = ids.shape
    c, h, kv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    d = c // h
    eps = cfg.rms_norm_eps
    theta = float(cfg.rope_parameters["rope_theta"])

    def rms(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w

    # Rotate-half rotary: pair feature j with j + d/2, angle pos * theta^(-2j/d).
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(t, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cos(ang), torch.sin(ang)

    def rope(z):
        z1, z2 = z[..., : d // 2], z[..., d // 2 :]
        return torch.cat((z1 * cos - z2 * sin, z2 * cos + z1 * sin), dim=-1)

    mask = torch.tril(torch.ones(t, t, dtype=torch.bool))
    x = p["model.embed_tokens.weight"][ids]
    for layer in range(cfg.num_hidden_layers):
        pre = f"model.layers.{layer}."
        a = rms(x, p[pre + "input_layernorm.weight"])
        q = (a @ p[pre + "self_attn.q_proj.weight"].T).reshape(b, t, h, d).transpose(1, 2)
        k = (a @ p[pre + "self_attn.k_proj.weight"].T).reshape(b, t, kv, d).transpose(1, 2)
        v = (a @ p[pre + "self_attn.v_proj.weight"].T).reshape(b, t, kv, d).transpose(1, 2)
        q, k = rope(q), rope(k)
        k = k.repeat_interleave(h // kv, dim=1)
        v = v.repeat_interleave(h // kv, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        att = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        x = x + y @ p[pre + "self_attn.o_proj.weight"].T
        m = rms(x, p[pre + "post_attention_layernorm.weight"])
        g = m @ p[pre + "mlp.gate_proj.weight"].T
        u = m @ p[pre + "mlp.up_proj.weight"].T
        x = x + (F.silu(g) * u) @ p[pre + "mlp.down_proj.weight"].T
    return rms(x, p["model.norm.weight"]) @ p["lm_head.weight"].T


def plain_check(model, ids, targets, logits, grads):
    """Max |diff| of logits and gradients between `model` and the plain implementation."""
    params = {n: q.detach().clone().requires_grad_(True) for n, q in model.named_parameters()}
    plain = plain_gpt2 if model.config.model_type == "gpt2" else plain_llama
    out = plain(params, model.config, ids)
    v = out.shape[-1]
    F.cross_entropy(out.reshape(-1, v), targets.reshape(-1)).backward()
    dl = (out.detach() - logits).abs().max().item()
    dg = max((params[n].grad - g).abs().max().item() for n, g in grads.items()) if grads else 0.0
    return dl, dg


# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------

FOLDERS = {
    # folder: (family, float dtype, with gradients, max_shard_size)
    "tiny-gpt2": ("gpt2", torch.float32, True, None),
    "tiny-gpt2-f16": ("gpt2", torch.float16, False, None),
    "tiny-llama": ("llama", torch.float32, True, None),
    "tiny-llama-bf16-sharded": ("llama", torch.bfloat16, False, "16KB"),
}
SEEDS = {"gpt2": 20261201, "llama": 20261202}


def reference(folder, family, with_grads, log):
    model, info = load_f64(folder)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"{folder}: from_pretrained reported {bad}")
    v = model.config.vocab_size
    gen = torch.Generator().manual_seed(SEEDS[family] + 7)
    ids = torch.randint(0, v, (BATCH, SEQ), generator=gen)
    targets = torch.randint(0, v, (BATCH, SEQ), generator=gen)
    model.zero_grad(set_to_none=True)
    logits = forward_logits(model, ids)
    loss = F.cross_entropy(logits.reshape(-1, v), targets.reshape(-1))
    out = {"ids": ids, "targets": targets, "logits": logits.detach(), "loss": loss.detach().reshape(1)}
    grads = {}
    if with_grads:
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        for n, g in grads.items():
            out["grad." + n] = g
    dl, dg = plain_check(model, ids, targets, out["logits"], grads)
    name = os.path.basename(folder)
    log(
        f"{name}: V={v}, loss={loss.item():.6f}, logits std {logits.std().item():.3f} "
        f"max|.| {logits.abs().max().item():.3f}; plain-torch f64 agrees: logits {dl:.1e}"
        + (f", grads {dg:.1e}" if with_grads else "")
    )
    if dl > 1e-12 or dg > 1e-12:
        raise SystemExit(f"{name}: the plain float64 implementation disagrees ({dl:.3e}, {dg:.3e})")
    if family == "llama":
        with torch.no_grad():
            unpatched = model(input_ids=ids, use_cache=False).logits
        gap = (unpatched - logits).abs().max().item()
        log(f"{name}: patched vs unpatched float64 Llama logits differ by {gap:.2e}")
    return {k: t.contiguous() for k, t in out.items()}


def tokenizer_cases(fixtures):
    files = {"gpt2": "tiny-gpt2/tokenizer.json", "llama": "tiny-llama/tokenizer.json"}
    toks = {k: Tokenizer.from_file(os.path.join(fixtures, f)) for k, f in files.items()}
    cases = []
    for text in CASE_TEXTS:
        case = {"text": text}
        for key, tok in toks.items():
            plain = tok.encode(text, add_special_tokens=False)
            special = tok.encode(text, add_special_tokens=True)
            case[key] = {
                "ids": plain.ids,
                "tokens": plain.tokens,
                "decoded": tok.decode(plain.ids, skip_special_tokens=False),
                "ids_with_special": special.ids,
                "decoded_with_special": tok.decode(special.ids, skip_special_tokens=False),
            }
        cases.append(case)
    return {
        "about": (
            "Written by tests/hf/generate.py. For each text and tokenizer: ids and tokens = "
            "Tokenizer.encode(text, add_special_tokens=False), decoded = decode(ids, "
            "skip_special_tokens=False); ids_with_special = encode(text, add_special_tokens=True) "
            "and decoded_with_special = decode(ids_with_special, skip_special_tokens=False)."
        ),
        "tokenizers": files,
        "cases": cases,
    }


def cases_json(doc):
    """The cases document with one case per line (readable diffs, compact lists)."""
    dump = lambda v: json.dumps(v, ensure_ascii=False)  # noqa: E731
    lines = [
        "{",
        f' "about": {dump(doc["about"])},',
        f' "tokenizers": {dump(doc["tokenizers"])},',
        ' "cases": [',
    ]
    for i, case in enumerate(doc["cases"]):
        lines.append("  " + dump(case) + ("," if i + 1 < len(doc["cases"]) else ""))
    lines += [" ]", "}", ""]
    text = "\n".join(lines)
    assert json.loads(text) == doc
    return text


def generate(out, log=print):
    """Writes every fixture into the empty folder `out`."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    with open(os.path.join(out, "corpus.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write(CORPUS)
    toks = {"gpt2": build_gpt2_tokenizer(), "llama": build_llama_tokenizer()}
    base = {fam: make_model(fam, toks[fam].get_vocab_size(), SEEDS[fam]) for fam in toks}
    for name, (family, dtype, with_grads, shard) in FOLDERS.items():
        folder = os.path.join(out, name)
        save_folder(base[family], toks[family], family, folder, dtype, shard)
        tensors = reference(folder, family, with_grads, log)
        save_file(
            tensors,
            os.path.join(out, name + ".reference.safetensors"),
            # One metadata key: safetensors writes several in no fixed order.
            metadata={
                "reference": json.dumps(
                    {
                        "folder": name,
                        "about": "tests/hf/generate.py: transformers float64 forward of the stored "
                        "weights; loss = mean cross-entropy(logits, targets) over all positions; "
                        "grad.<name> = dloss/dparam",
                        "transformers": transformers.__version__,
                        "torch": torch.__version__.split("+")[0],
                    },
                    sort_keys=True,
                )
            },
        )
    with open(os.path.join(out, "tokenizer_cases.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write(cases_json(tokenizer_cases(out)))
    return toks, base


def list_files(root):
    found = []
    for d, _, files in os.walk(root):
        for f in files:
            found.append(os.path.relpath(os.path.join(d, f), root))
    return sorted(found)


def describe(out):
    print("files:")
    total = 0
    for rel in list_files(out):
        size = os.path.getsize(os.path.join(out, rel))
        total += size
        print(f"  {size:8d}  {rel}")
    print(f"  {total:8d}  total bytes")
    for name in ("tiny-gpt2", "tiny-llama"):
        tensors = stored_tensors(os.path.join(out, name))
        count = sum(math.prod(s) for s, _ in tensors.values())
        print(f"{name}: {len(tensors)} stored tensors, {count} values")
        for n, (shape, dtype) in sorted(tensors.items()):
            print(f"  {n:48s} {str(list(shape)):12s} {dtype}")


# --------------------------------------------------------------------------------------
# --check
# --------------------------------------------------------------------------------------


def stored_tensors(folder):
    """{name: (shape, dtype)} over every safetensors file the folder's index (or single file) names."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for fname in files:
        with safe_open(os.path.join(folder, fname), framework="pt") as st:
            for key in st.keys():
                sl = st.get_slice(key)
                if key in out:
                    raise ValueError(f"tensor {key} stored twice")
                out[key] = (tuple(sl.get_shape()), sl.get_dtype())
    return out


CONFIG_KEYS = {
    "gpt2": [
        "model_type",
        "architectures",
        "vocab_size",
        "n_positions",
        "n_embd",
        "n_layer",
        "n_head",
        "n_inner",
        "activation_function",
        "layer_norm_epsilon",
        "tie_word_embeddings",
    ],
    "llama": [
        "model_type",
        "architectures",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_parameters",
        "tie_word_embeddings",
        "hidden_act",
        "attention_bias",
        "mlp_bias",
    ],
}


def config_values(folder):
    cfg = AutoConfig.from_pretrained(folder)
    keys = CONFIG_KEYS.get(cfg.model_type)
    if keys is None:
        raise ValueError(f"model_type {cfg.model_type!r} is neither gpt2 nor llama")
    values = {k: getattr(cfg, k, None) for k in keys}
    if cfg.model_type == "gpt2" and values["n_inner"] is None:
        values["n_inner"] = 4 * cfg.n_embd
    if cfg.model_type == "llama":
        rope = dict(values["rope_parameters"] or {})
        values["rope_parameters"] = {
            "rope_type": rope.get("rope_type"),
            "rope_theta": float(rope.get("rope_theta")),
        }
    return values


WIDTH = {"F64": 3, "F32": 2, "F16": 1, "BF16": 1}


def check_folder(folder, fixtures, tol):
    """(ok, one-line summary) for a saved folder."""
    problems, notes = [], []
    if not os.path.isdir(folder):
        return False, "no such folder"
    try:
        values = config_values(folder)
    except Exception as e:  # noqa: BLE001 - any failure to read is a failure of the folder
        return False, f"config.json unreadable: {e}"
    name = os.path.basename(os.path.normpath(folder))
    if name not in FOLDERS:
        name = {"gpt2": "tiny-gpt2", "llama": "tiny-llama"}[values["model_type"]]
    fixture = os.path.join(fixtures, name)
    notes.append(f"vs {name}")
    want = config_values(fixture)
    if values["model_type"] != want["model_type"]:
        return False, f"vs {name}: model_type {values['model_type']!r}, fixture has {want['model_type']!r}"
    for k in want:
        if values[k] != want[k]:
            problems.append(f"config {k} = {values[k]!r}, fixture has {want[k]!r}")
    try:
        got_t, want_t = stored_tensors(folder), stored_tensors(fixture)
    except Exception as e:  # noqa: BLE001
        return False, f"vs {name}: tensors unreadable: {e}"
    missing = sorted(set(want_t) - set(got_t))
    extra = sorted(set(got_t) - set(want_t))
    if missing:
        problems.append(f"missing tensors {missing}")
    if extra:
        problems.append(f"unexpected tensors {extra}")
    for k in sorted(set(want_t) & set(got_t)):
        if got_t[k][0] != want_t[k][0]:
            problems.append(f"{k} has shape {list(got_t[k][0])}, fixture {list(want_t[k][0])}")
    dtypes = sorted({d for _, d in got_t.values()})
    notes.append(f"{len(got_t)} tensors {'/'.join(dtypes)}")
    ref = load_file(os.path.join(fixtures, name + ".reference.safetensors"))
    if not missing and not extra and all(got_t[k][0] == want_t[k][0] for k in want_t):
        try:
            model, info = load_f64(folder)
            for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
                if info.get(kind):
                    problems.append(f"from_pretrained {kind}: {sorted(map(str, info[kind]))}")
            with torch.no_grad():
                logits = forward_logits(model, ref["ids"])
            diff = (
                (logits - ref["logits"]).abs().max().item()
                if logits.shape == ref["logits"].shape
                else math.inf
            )
            fixture_width = min(WIDTH.get(d, 0) for _, d in want_t.values())
            folder_width = min(WIDTH.get(d, 0) for _, d in got_t.values())
            bound = tol
            if folder_width < fixture_width:
                bound = 0.05 * max(1.0, ref["logits"].abs().max().item())
                notes.append("narrower dtype than the fixture: lossy bound")
            notes.append(f"logits max|diff| {diff:.2e} (tol {bound:.0e})")
            if not diff <= bound:
                problems.append(f"logits differ by {diff:.3e} > {bound:.0e}")
        except Exception as e:  # noqa: BLE001
            problems.append(f"transformers could not run it: {type(e).__name__}: {e}")
    tok_path = os.path.join(folder, "tokenizer.json")
    if os.path.exists(tok_path):
        try:
            got_tok = Tokenizer.from_file(tok_path)
            want_tok = Tokenizer.from_file(os.path.join(fixture, "tokenizer.json"))
            with open(os.path.join(fixtures, "corpus.txt"), encoding="utf-8") as f:
                corpus = f.read()
            texts = [corpus] + corpus.splitlines() + CASE_TEXTS
            bad = [
                t
                for t in texts
                if got_tok.encode(t).ids != want_tok.encode(t).ids
                or got_tok.encode(t, add_special_tokens=False).ids
                != want_tok.encode(t, add_special_tokens=False).ids
            ]
            if bad:
                problems.append(
                    f"tokenizer encodes {len(bad)} of {len(texts)} texts differently, e.g. {bad[0][:40]!r}"
                )
            else:
                notes.append(f"tokenizer ok ({len(texts)} texts)")
        except Exception as e:  # noqa: BLE001
            problems.append(f"tokenizer.json unreadable: {e}")
    else:
        notes.append("no tokenizer.json")
    text = ", ".join(notes)
    if problems:
        return False, text + "; " + "; ".join(problems)
    return True, text


def run_check(folders, fixtures, tol):
    torch.set_num_threads(1)
    failures = 0
    for folder in folders:
        ok, summary = check_folder(folder, fixtures, tol)
        failures += not ok
        shown = os.path.relpath(folder, REPO) if folder.startswith(REPO + os.sep) else folder
        print(f"{'PASS' if ok else 'FAIL'} {shown}: {summary}")
    return failures


# --------------------------------------------------------------------------------------
# --self-test: --check must reject broken folders
# --------------------------------------------------------------------------------------


def _edit_tensor(folder, key, fn):
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            fname = json.load(f)["weight_map"][key]
    else:
        fname = "model.safetensors"
    path = os.path.join(folder, fname)
    tensors = load_file(path)
    with safe_open(path, framework="pt") as st:
        meta = st.metadata()
    result = fn(tensors, key)
    save_file({k: v.contiguous() for k, v in result.items()}, path, metadata=meta)


def _edit_config(folder, fn):
    path = os.path.join(folder, "config.json")
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    fn(cfg)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)


def _interleave_rows(w, heads):
    """Reorders each head's rows from rotate-half pairing (j, j+d/2) to interleaved (2j, 2j+1)."""
    out, d = w.shape[0], w.shape[0] // heads
    return w.reshape(heads, 2, d // 2, -1).transpose(1, 2).reshape(out, -1)


def _drop_merge(folder):
    path = os.path.join(folder, "tokenizer.json")
    with open(path, encoding="utf-8") as f:
        tok = json.load(f)
    del tok["model"]["merges"][0]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)


BREAKAGES = [
    (
        "tiny-gpt2",
        "transpose attn.c_proj (16x16)",
        lambda d: _edit_tensor(d, "transformer.h.0.attn.c_proj.weight", lambda t, k: {**t, k: t[k].T}),
    ),
    (
        "tiny-gpt2",
        "q and k swapped in c_attn",
        lambda d: _edit_tensor(
            d,
            "transformer.h.1.attn.c_attn.weight",
            lambda t, k: {**t, k: torch.cat([t[k][:, 16:32], t[k][:, :16], t[k][:, 32:]], 1)},
        ),
    ),
    (
        "tiny-gpt2",
        "ln_f bias dropped",
        lambda d: _edit_tensor(
            d, "transformer.ln_f.bias", lambda t, k: {n: v for n, v in t.items() if n != k}
        ),
    ),
    (
        "tiny-gpt2",
        "untied head saved as lm_head.weight",
        lambda d: _edit_tensor(
            d, "transformer.wte.weight", lambda t, k: {**t, "lm_head.weight": t[k].clone()}
        ),
    ),
    (
        "tiny-gpt2",
        "activation gelu instead of gelu_new",
        lambda d: _edit_config(d, lambda c: c.update(activation_function="gelu")),
    ),
    ("tiny-gpt2", "first BPE merge dropped from tokenizer.json", _drop_merge),
    (
        "tiny-llama",
        "transpose q_proj (16x16)",
        lambda d: _edit_tensor(d, "model.layers.0.self_attn.q_proj.weight", lambda t, k: {**t, k: t[k].T}),
    ),
    (
        "tiny-llama",
        "q_proj and k_proj rows in interleaved rotary order",
        lambda d: [
            _edit_tensor(
                d,
                f"model.layers.{i}.self_attn.{p}_proj.weight",
                lambda t, k, h=h: {**t, k: _interleave_rows(t[k], h)},
            )
            for i in range(2)
            for p, h in (("q", 4), ("k", 2))
        ],
    ),
    (
        "tiny-llama",
        "gate_proj and up_proj swapped",
        lambda d: _edit_tensor(
            d,
            "model.layers.1.mlp.gate_proj.weight",
            lambda t, k: {
                **t,
                k: t["model.layers.1.mlp.up_proj.weight"],
                "model.layers.1.mlp.up_proj.weight": t[k],
            },
        ),
    ),
    (
        "tiny-llama",
        "rope_theta 500000",
        lambda d: _edit_config(
            d, lambda c: c.update(rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
        ),
    ),
    ("tiny-llama", "rms_norm_eps 1e-5", lambda d: _edit_config(d, lambda c: c.update(rms_norm_eps=1e-5))),
    (
        "tiny-llama",
        "tied head (lm_head.weight dropped, tie_word_embeddings true)",
        lambda d: (
            _edit_tensor(d, "lm_head.weight", lambda t, k: {n: v for n, v in t.items() if n != k}),
            _edit_config(d, lambda c: c.update(tie_word_embeddings=True)),
        ),
    ),
    (
        "tiny-llama-bf16-sharded",
        "one bf16 value nudged by one ulp",
        lambda d: _edit_tensor(
            d,
            "model.norm.weight",
            lambda t, k: {
                **t,
                k: torch.cat([torch.nextafter(t[k][:1], torch.tensor([9.0], dtype=t[k].dtype)), t[k][1:]]),
            },
        ),
    ),
]


def self_test(fixtures, tol):
    torch.set_num_threads(1)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in FOLDERS:
            ok, summary = check_folder(os.path.join(fixtures, name), fixtures, tol)
            print(f"{'ok  ' if ok else 'BAD '} intact {name} passes: {summary}")
            failures += not ok
        for i, (name, what, breaker) in enumerate(BREAKAGES):
            folder = os.path.join(tmp, str(i), name)
            shutil.copytree(os.path.join(fixtures, name), folder)
            breaker(folder)
            ok, summary = check_folder(folder, fixtures, tol)
            print(f"{'BAD ' if ok else 'ok  '} {name} with {what} fails: {summary}")
            failures += ok
    print(f"self-test: {len(FOLDERS) + len(BREAKAGES) - failures} passed, {failures} failed")
    return failures


# --------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--verify", action="store_true", help="regenerate in a temporary folder and compare bytes"
    )
    ap.add_argument("--check", nargs="*", metavar="DIR", help="check folders saved by baregpt")
    ap.add_argument("--self-test", action="store_true", help="show that --check rejects broken folders")
    ap.add_argument("--tol", type=float, default=TOL, help="logit tolerance of --check (default 1e-10)")
    args = ap.parse_args()
    if args.check is not None:
        sys.exit(
            1
            if run_check([os.path.abspath(d) for d in args.check] or DEFAULT_CHECK, FIXTURES, args.tol)
            else 0
        )
    if args.self_test:
        sys.exit(1 if self_test(FIXTURES, args.tol) else 0)
    if args.verify:
        with tempfile.TemporaryDirectory() as tmp:
            generate(tmp)
            new, old = list_files(tmp), list_files(FIXTURES)
            differ = sorted(set(new) ^ set(old))
            differ += [
                f
                for f in sorted(set(new) & set(old))
                if not filecmp.cmp(os.path.join(tmp, f), os.path.join(FIXTURES, f), shallow=False)
            ]
            for f in differ:
                print(f"differs: {f}")
            print(f"verify: {len(new)} files regenerated, {len(differ)} differ from tests/hf/fixtures")
        sys.exit(1 if differ else 0)
    tmp = tempfile.mkdtemp(prefix="hf-fixtures-")
    try:
        generate(tmp)
        if os.path.isdir(FIXTURES):
            shutil.rmtree(FIXTURES)
        shutil.copytree(tmp, FIXTURES)
    finally:
        shutil.rmtree(tmp)
    describe(FIXTURES)


if __name__ == "__main__":
    main()
