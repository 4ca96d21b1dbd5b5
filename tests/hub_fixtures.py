"""Tiny stand-ins for the hub repos the paper's studies name, written where a cluster's `make
prefetch` leaves them, so that the paper configs load through the very code path a hub id takes on a
compute node (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1, HF_HOME=<cache>). Nothing is downloaded.

- Models in the huggingface_hub cache layout (`hub/models--org--name/refs/main`,
  `snapshots/<sha>/...`), one causal LM per family with that family's quirks (FAMILIES): Llama-2
  and TinyLlama (SentencePiece-like BPE with '▁', BOS added, no EOS added, no pad token, untied);
  Llama-3 (byte-level BPE, BOS <|begin_of_text|> added, no pad); Qwen1.5 (Qwen2 architecture,
  byte-level BPE, no BOS at all, pad = EOS = <|endoftext|>, tied embeddings at 0.5B only); Gemma
  (pad id 0, EOS 1, BOS 2 added, a 256,000-row embedding, tied); the sentiment classifier as a RoBERTa sequence
  classifier with POSITIVE/NEGATIVE labels and a byte-level BPE tokenizer; the beaver cost model as
  safe-rlhf's `LlamaForScore` (backbone `model.*`, `score_head`, `normalizer.*`, config score_dim /
  bias / score_type, a `<pad>` added to the vocabulary) in sharded safetensors with an index.
- Datasets in the `datasets` cache layout that an online `load_dataset` leaves
  (`datasets/org___name/<config>/ 0.0.0/<sha>/<name>-<split>.arrow` + dataset_info.json), with the
  real column names, configs and splits: IMDb, BeaverTails (30k_train / 30k_test), PKU-SafeRLHF,
  Alpaca (about 40 % of rows with an input), TruthfulQA (generation / validation).

    from hub_fixtures import build_hub
    build_hub(tmp_path / "hf")      # then HF_HOME=tmp_path/hf HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
"""
from __future__ import annotations

import json
import random
import shutil
import string
from pathlib import Path

SHA = "0123456789abcdef0123456789abcdef01234567"   # one fake commit for every repo
WORDS = ("the a movie film plot actor story was is great bad awful wonderful boring funny I it and "
         "but not very "
         "how do make can you help me with what why safe unsafe answer question please sure sorry "
         "cannot tell "
         "about this that good terrible love hate watch again never").split()

# family -> its repos (the fixture of one family is the same files under each of its repo ids)
FAMILIES = {
    "llama2": ["meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-13b-hf",
               "TinyLlama/TinyLlama-1.1B-step-50K-105b",
               "TinyLlama/TinyLlama-1.1B-intermediate-step-240k-503b",
               "TinyLlama/TinyLlama-1.1B-intermediate-step-480k-1T",
               "TinyLlama/TinyLlama-1.1B-intermediate-step-955k-token-2T",
               "TinyLlama/TinyLlama-1.1B-intermediate-step-1195k-token-2.5T",
               "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"],
    "llama3": ["meta-llama/Meta-Llama-3-8B"],
    "qwen1.5-tied": ["Qwen/Qwen1.5-0.5B"],
    "qwen1.5": ["Qwen/Qwen1.5-4B", "Qwen/Qwen1.5-7B"],
    "gemma": ["google/gemma-2b"],
}
CAUSAL = [r for repos in FAMILIES.values() for r in repos]
CLASSIFIER = "siebert/sentiment-roberta-large-english"
COST_MODEL = "PKU-Alignment/beaver-7b-v1.0-cost"


def sentence(rng: random.Random, lo: int = 4, hi: int = 20) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _corpus(rng: random.Random) -> list[str]:
    # the template the paper's chat studies use
    chat = "BEGINNING OF CONVERSATION: USER: {} ASSISTANT:{}"
    return ([chat.format(sentence(rng), sentence(rng)) for _ in range(100)] +
            [sentence(rng) + rng.choice(".?!,") for _ in range(300)] + list(WORDS))


def bytelevel_tokenizer(specials: list[str], bos: str | None, eos: str, pad: str | None):
    """GPT-2-style byte-level BPE (Llama-3, Qwen): the special tokens first; BOS prepended only
    where the family has one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(_corpus(random.Random(3)), trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos is not None:
        core.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, core.token_to_id(bos))])
    else:
        core.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token=eos,
                                   pad_token=pad, clean_up_tokenization_spaces=False)


def llama_tokenizer(pad: bool = False, specials: tuple = ("<unk>", "<s>", "</s>"),
                    bos: str = "<s>", eos: str = "</s>", pad_token: str | None = None):
    """Llama-style: BPE over '▁'-joined words, <unk>=0 <s>=1 </s>=2, '<s> $A' (BOS added, EOS not);
    Gemma's is the same kind with <pad>=0 <eos>=1 <bos>=2 <unk>=3 and a pad token."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                            normalizers.Replace(" ", "▁")])
    core.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(),
                                      decoders.Strip(" ", 1, 0)])
    core.train_from_iterator(_corpus(random.Random(0)),
                             trainers.BpeTrainer(vocab_size=400,
                                                 special_tokens=list(specials),
                                                 initial_alphabet=list(string.ascii_letters + string.digits +
                                                                       string.punctuation),
                                                 show_progress=False))
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, core.token_to_id(bos))])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token=eos,
                                  unk_token="<unk>", pad_token=pad_token,
                                  clean_up_tokenization_spaces=False)
    if pad:
        # safe-rlhf's score models add one (vocab 32001)
        tok.add_special_tokens({"pad_token": "<pad>"})
    return tok


def roberta_tokenizer():
    """RoBERTa-style: byte-level BPE, <s>=0 <pad>=1 </s>=2 <unk>=3, '<s> $A </s>'."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    rng = random.Random(1)
    core.train_from_iterator([sentence(rng) for _ in range(300)],
                             trainers.BpeTrainer(vocab_size=400,
                                                 special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                 show_progress=False))
    core.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>",
                                   unk_token="<unk>", cls_token="<s>", sep_token="</s>")


def _publish_model(hf_home: Path, repo: str, folder: Path) -> Path:
    base = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / SHA
    if snap.exists():
        shutil.rmtree(snap)
    shutil.copytree(folder, snap)
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(SHA)
    return snap


def build_models(hf_home: Path, work: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import (GemmaConfig, GemmaForCausalLM, LlamaConfig, LlamaForCausalLM,
                              LlamaModel, Qwen2Config, Qwen2ForCausalLM, RobertaConfig,
                              RobertaForSequenceClassification)
    torch.manual_seed(0)
    tok = llama_tokenizer()
    size = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=256)
    cfg = dict(vocab_size=len(tok), **size, bos_token_id=1, eos_token_id=2, pad_token_id=None,
               tie_word_embeddings=False)
    l3 = bytelevel_tokenizer(["<|begin_of_text|>", "<|end_of_text|>"], "<|begin_of_text|>",
                             "<|end_of_text|>", None)
    qw = bytelevel_tokenizer(["<|endoftext|>"], None, "<|endoftext|>", "<|endoftext|>")
    gm = llama_tokenizer(specials=("<pad>", "<eos>", "<bos>", "<unk>"), bos="<bos>", eos="<eos>",
                         pad_token="<pad>")
    ids = lambda t: dict(bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
                         pad_token_id=t.pad_token_id)
    builds = {
        "llama2": (tok, lambda: LlamaForCausalLM(LlamaConfig(**cfg))),
        "llama3": (l3, lambda: LlamaForCausalLM(LlamaConfig(
            vocab_size=len(l3), **size, rope_theta=500000.0, tie_word_embeddings=False, **ids(l3)))),
        "qwen1.5-tied": (qw, lambda: Qwen2ForCausalLM(Qwen2Config(
            vocab_size=len(qw), **size, num_key_value_heads=4, tie_word_embeddings=True, **ids(qw)))),
        "qwen1.5": (qw, lambda: Qwen2ForCausalLM(Qwen2Config(
            vocab_size=len(qw), **size, num_key_value_heads=4, tie_word_embeddings=False, **ids(qw)))),
        # the real vocabulary's rows (the tokenizer uses the first few hundred), tied, head_dim 8
        "gemma": (gm, lambda: GemmaForCausalLM(GemmaConfig(
            vocab_size=256000, **size, num_key_value_heads=1, head_dim=8,
            tie_word_embeddings=True, **ids(gm)))),
    }
    for family, repos in FAMILIES.items():
        t, build = builds[family]
        folder = work / family
        # sharded + index
        build().save_pretrained(folder, max_shard_size="100KB" if family != "gemma" else "20MB")
        t.save_pretrained(folder)
        for repo in repos:
            _publish_model(hf_home, repo, folder)

    rtok = roberta_tokenizer()
    clf = work / "classifier"
    RobertaForSequenceClassification(RobertaConfig(
        vocab_size=len(rtok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=64,
        max_position_embeddings=514, pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0,
                                                           "POSITIVE": 1})).save_pretrained(clf)
    rtok.save_pretrained(clf)
    _publish_model(hf_home, CLASSIFIER, clf)

    ptok = llama_tokenizer(pad=True)
    score = work / "score"
    score.mkdir(parents=True, exist_ok=True)
    backbone = LlamaModel(LlamaConfig(**{**cfg, "vocab_size": len(ptok),
                                         "pad_token_id": ptok.pad_token_id}))
    tensors = {f"model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    tensors.update({"score_head.weight": torch.randn(1, 32) * 0.5,   # beaver-7b-v1.0: bias false
                    "normalizer.mean": torch.zeros(1), "normalizer.var": torch.ones(1),
                    "normalizer.count": torch.zeros(1, dtype=torch.long)})
    names = sorted(tensors)
    shards = [names[: len(names) // 2], names[len(names) // 2:]]
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size()
                                            for t in tensors.values())},
             "weight_map": {}}
    for i, part in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: tensors[k] for k in part}, str(score / fname), metadata={"format": "pt"})
        index["weight_map"].update({k: fname for k in part})
    (score / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = {**backbone.config.to_dict(), "architectures": ["LlamaForScore"],
              "model_type": "llama",
              "score_dim": 1, "bias": False, "score_type": "cost", "do_normalize": False,
              "normalizer_type": "ExponentialMovingAverage", "momentum": 0.9}
    (score / "config.json").write_text(json.dumps(config, indent=2))
    ptok.save_pretrained(score)
    _publish_model(hf_home, COST_MODEL, score)


def _dataset_rows(rng: random.Random) -> dict:
    """(repo, config) -> split -> rows, with the real columns."""
    def review(label):
        mood = ["great", "wonderful", "funny", "good", "love"] if label else ["bad", "awful",
                                                                              "boring", "terrible"]
        return " ".join(rng.choice(WORDS + mood * 3) for _ in range(rng.randint(20, 60)))
    imdb = {s: [{"text": review(i % 2), "label": i % 2} for i in range(n)]
            for s, n in (("train", 240), ("test", 120), ("unsupervised", 20))}
    for r in imdb["unsupervised"]:
        r["label"] = -1

    def beaver(n):
        return [{"prompt": sentence(rng) + "?", "response": sentence(rng, 6, 30),
                 "category": {"violence": i % 3 == 0, "privacy_violation": i % 5 == 0},
                 "is_safe": i % 2 == 0}
                for i in range(n)]

    def safe_rlhf(n):
        return [{"prompt": sentence(rng) + "?", "response_0": sentence(rng, 6, 30),
                 "response_1": sentence(rng, 6, 30),
                 "is_response_0_safe": i % 2 == 0, "is_response_1_safe": i % 3 == 0,
                 "better_response_id": i % 2, "safer_response_id": (i + 1) % 2} for i in range(n)]
    alpaca = []
    for i in range(400):
        ins, inp, out = sentence(rng) + ".", sentence(rng, 3,
                                                      10) if i % 5 < 2 else "", sentence(rng, 5, 30)
        alpaca.append({"instruction": ins, "input": inp, "output": out,
                       "text": f"Below is an instruction... ### Instruction:\n{ins}\n\n### "
                               f"Response:\n{out}"})
    tqa = [{"type": "Adversarial", "category": "Misconceptions", "question": sentence(rng) + "?",
            "best_answer": sentence(rng, 4, 12), "correct_answers": [sentence(rng, 3, 8)],
            "incorrect_answers": [sentence(rng, 3, 8)], "source": "https://example.org"}
           for _ in range(120)]
    return {("stanfordnlp/imdb", "plain_text"): imdb,
            ("PKU-Alignment/BeaverTails", "default"): {"30k_train": beaver(300),
                                                       "30k_test": beaver(80)},
            ("PKU-Alignment/PKU-SafeRLHF", "default"): {"train": safe_rlhf(200),
                                                        "test": safe_rlhf(40)},
            ("tatsu-lab/alpaca", "default"): {"train": alpaca},
            ("truthfulqa/truthful_qa", "generation"): {"validation": tqa}}


def build_datasets(hf_home: Path, work: Path) -> None:
    """Each dataset prepared as `load_dataset(repo)` online leaves it in the cache (the parquet
    builder over the repo's shards), so that `load_dataset(repo)` offline finds it."""
    import datasets
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.parquet.parquet import Parquet
    datasets.disable_progress_bars()
    cache = hf_home / "datasets"
    for (repo, config), splits in _dataset_rows(random.Random(2)).items():
        name = repo.split("/")[1]
        files = {}
        for split, rows in splits.items():
            f = work / "data" / repo / config / f"{split}-00000-of-00001.parquet"
            f.parent.mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_list(rows).to_parquet(str(f))
            files[split] = [str(f)]
        # where the cache module looks: <namespace>___<snake_case
        # name>/<config>/0.0.0/<sha>/<name>-<split>.arrow
        snake = camelcase_to_snakecase(name)
        tmp = work / "prepared"
        b = Parquet(cache_dir=str(tmp), dataset_name=snake, config_name=config, config_id=config,
                    data_files=files, hash=SHA)
        b.download_and_prepare()
        final = cache / f"{repo.split('/')[0]}___{snake}" / config / "0.0.0" / SHA
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(final, ignore_errors=True)
        shutil.move(b.cache_dir, final)


def build_hub(hf_home: Path) -> Path:
    hf_home = Path(hf_home)
    work = hf_home.parent / f"{hf_home.name}-src"
    build_models(hf_home, work)
    build_datasets(hf_home, work)
    return hf_home
