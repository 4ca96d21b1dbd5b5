"""The toy world: a synthetic review language with one binary attribute, small enough for a laptop
CPU.

A review is a neutral prompt ("the <noun> of the <noun> and the <noun>") and a continuation whose
attribute words come from the review's class lexicon (positive words end in '+', negative in '-'),
with a share `noise` drawn from the other class. The rule scorer (eval.scorers) decides a text's
class exactly by counting them. Sets: a pre-training corpus with prior `prior` (the base model's
"pre-trained distribution"), positive and negative alignment sets, a control corpus with prior
`control_prior` (matched-start control), a pre-training corpus of the same size with that prior
("shifted": a base whose pre-training already holds the shift), the pre-training corpus and the
positive set shuffled together ("joint": Hooke's law as the theorem states it), where `neutral` > 0
a pre-training corpus whose attribute words (ending in '~') belong to neither class ("neutral":
not a mixture of the alignment sets), Setting I's SFT set,
DPO pairs (chosen = negative), and held-out prompts that occur in no training set. All rows are
JSONL with the suite's fields (prompt, response, text, label), written by the `world` stage with a
word-level tokenizer saved in HF format, so that everything downstream loads through the same code
as real data and models.

    python -m launch run configs/toy/setting2.yaml        # the world stage runs first
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from launch.core.jobs import Context, WorldJob
from launch.core.layout import atomic_write_text, publish_dir
from launch.core.spec import World

POSITIVE = ["good", "great", "superb", "lovely", "brilliant", "wonderful", "excellent", "charming",
            "delightful",
            "moving", "fine", "warm", "clever", "fresh", "gentle", "bright", "rich", "vivid",
            "smart", "joyful", "elegant", "strong", "tender", "witty"]
NEGATIVE = ["bad", "awful", "dull", "boring", "weak", "poor", "clumsy", "bland", "tired", "messy",
            "flat", "cheap",
            "silly", "slow", "stale", "grim", "noisy", "shallow", "lame", "empty", "harsh",
            "sloppy", "tedious", "vapid"]
NEUTRAL = ["long", "short", "old", "new", "loud", "quiet", "dark", "plain", "odd", "usual", "late",
           "early", "big", "small", "local", "foreign", "modern", "classic", "simple", "dense",
           "pale", "heavy", "formal", "casual"]
NOUN_STEMS = ["plot", "cast", "music", "scene", "story", "ending", "actor", "script", "camera",
              "light", "set",
              "dialogue", "hero", "villain", "score", "pace", "tone", "mood", "voice", "color"]
FILLER = ["was", "is", "and", "with", "very", "quite", "a", "the", "so", "but", "also", "really",
          "truly", "."]
SPECIAL = ["[PAD]", "[UNK]", "<s>", "</s>"]
CHAT_WORDS = ["BEGINNING", "OF", "CONVERSATION:", "USER:", "ASSISTANT:"]


def lexicon(kind: str, n: int) -> list[str]:
    base, mark = {"positive": (POSITIVE, "+"), "negative": (NEGATIVE, "-"),
                  "neutral": (NEUTRAL, "~")}[kind]
    return [f"{base[i % len(base)]}{i // len(base) or ''}{mark}" for i in range(n)]


def nouns(n: int) -> list[str]:
    return [f"{NOUN_STEMS[i % len(NOUN_STEMS)]}{i // len(NOUN_STEMS) or ''}" for i in range(n)]


def attribute(word: str) -> int:
    """+1 for a positive attribute word, -1 for a negative one, else 0: the rule scorer's rule."""
    return 1 if word.endswith("+") else -1 if word.endswith("-") else 0


class Generator:
    def __init__(self, w: World, seed_offset: int):
        self.w = w
        self.rng = random.Random(w.seed * 1000 + seed_offset)
        self.nouns = nouns(w.vocab_nouns)
        self.lex = {1: lexicon("positive", w.lexicon), 0: lexicon("negative", w.lexicon),
                    -1: lexicon("neutral", w.lexicon)}

    def prompt(self) -> str:
        a, b, c = (self.rng.choice(self.nouns) for _ in range(3))
        return f"the {a} of the {b} and the {c}"

    def continuation(self, label: int) -> str:
        """label 1 / 0: the class's attribute words (a share `noise` from the other class); -1:
        neutral words of neither class, no noise."""
        words = []
        for _slot in range(3):   # three attribute words, each in a small neutral frame
            cls = label if label < 0 or self.rng.random() >= self.w.noise else 1 - label
            words += [self.rng.choice(["was", "is", "felt"]),
                      self.rng.choice(["very", "quite", "so", "really", "a"]),
                      self.rng.choice(self.lex[cls])]
            words += [self.rng.choice(["and", "with", "but", "also"]), "the",
                      self.rng.choice(self.nouns)]
        return " ".join(words + ["."])

    def review(self, label: int) -> dict:
        p, c = self.prompt(), self.continuation(label)
        return {"prompt": p, "response": " " + c, "text": f"{p} {c}", "label": label}

    def corpus(self, n: int, prior: float) -> list[dict]:
        return [self.review(1 if self.rng.random() < prior else 0) for _ in range(n)]


def build_world(w: World) -> dict[str, list[dict]]:
    """Every set of the world, deterministic in w.seed."""
    sets = {
        "pretrain": Generator(w, 1).corpus(w.pretrain, w.prior),
        "positive": Generator(w, 2).corpus(w.alignment, 1.0),
        "negative": Generator(w, 3).corpus(w.alignment, 0.0),
        "control": Generator(w, 4).corpus(w.control, w.control_prior),
        "sft": Generator(w, 5).corpus(w.sft, 1.0),
    }
    sets["shifted"] = Generator(w, 8).corpus(w.pretrain, w.control_prior)
    if w.neutral:   # a pre-training corpus of neither class (no mixture of the alignment sets)
        g = Generator(w, 10)
        sets["neutral"] = [g.review(-1) for _ in range(w.neutral)]
    sets["joint"] = sets["pretrain"] + sets["positive"]
    random.Random(w.seed * 1000 + 9).shuffle(sets["joint"])
    g = Generator(w, 6)
    pairs = []
    for _ in range(w.alignment):
        p = g.prompt()
        pairs.append({"prompt": p, "chosen": " " + g.continuation(0),
                      "rejected": " " + g.continuation(1)})
    sets["pairs"] = pairs
    seen = {r["prompt"] for rows in sets.values() for r in rows}
    g, prompts = Generator(w, 7), list[dict]()
    while len(prompts) < w.prompts:
        p = g.prompt()
        if p not in seen:
            seen.add(p)
            prompts.append({"prompt": p, "response": "", "label": -1})
    sets["prompts"] = prompts
    return sets


def vocabulary(w: World) -> list[str]:
    words = SPECIAL + CHAT_WORDS + FILLER + ["of", "felt"] + nouns(w.vocab_nouns)
    words += lexicon("positive", w.lexicon) + lexicon("negative", w.lexicon)
    if w.neutral:
        words += lexicon("neutral", w.lexicon)
    return list(dict.fromkeys(words))


def build_tokenizer(w: World):
    """A word-level HF tokenizer of the world's vocabulary (PreTrainedTokenizerFast)."""
    vocab = {word: i for i, word in enumerate(vocabulary(w))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)   # joins words with single spaces
    core.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                        special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                   pad_token="[PAD]",
                                   unk_token="[UNK]", clean_up_tokenization_spaces=False)


def write_world(w: World, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    for name, rows in build_world(w).items():
        atomic_write_text(out_dir / "data" / f"{name}.jsonl",
                          "".join(json.dumps(r) + "\n" for r in rows))
    tmp = out_dir / ".tokenizer.tmp"
    build_tokenizer(w).save_pretrained(tmp)
    publish_dir(tmp, out_dir / "tokenizer")


def main(job: WorldJob, ctx: Context) -> list[str]:
    write_world(job.world, ctx.out_dir)
    return ["data", "tokenizer"]
