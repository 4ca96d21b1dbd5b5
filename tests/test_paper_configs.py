"""Every paper config, reduced, end to end on hub-shaped fixtures (tests/hub_fixtures.py), loaded
through the code path a hub id takes on a compute node (HF_HUB_OFFLINE=1 from a prefetched cache):
plan, train, eval, collect. Plus the formats that decide the paper's numbers, checked on the same
fixtures: the chat template and its tokenization (BOS, EOS, no space after 'ASSISTANT:', prompt
tokens masked), a tokenizer with no pad token, left-padded generation, the classifier's label
mapping and the score model's input, weights and sign.

The reduction keeps each config's models (the first; two for the Setting III axes), data roles,
columns, splits (numeric split bounds become the same share of the fixture), filters, template,
algorithm, loss weighting and scorer; it shrinks volumes, slices (three at most), prompts, lengths
and batches, and trains on CPU (ZeRO 0, fp32).

    .venv/bin/python -m pytest -q tests/test_paper_configs.py
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from hub_fixtures import CLASSIFIER, COST_MODEL, SHA, build_hub
from launch.core.spec import KNOWN_ROWS

pytestmark = pytest.mark.slow   # real training, images or subprocess studies: not in make test-fast

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for d in ("setting1", "setting2", "setting3", "ablations")
                 for p in (ROOT / "configs" / d).glob("*.yaml"))


@pytest.fixture(scope="session")
def hub(tmp_path_factory) -> Path:
    return build_hub(tmp_path_factory.mktemp("hub") / "hf")


@pytest.fixture()
def offline(hub, monkeypatch):
    for k, v in {"HF_HOME": str(hub), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}.items():
        monkeypatch.setenv(k, v)
    import datasets.config
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub / "hub"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hub / "datasets")
    return hub


def share_split(split: str, data: dict) -> str:
    """'validation[:417]' of an 817-row split -> 'validation[:51%]': the same share of the fixture.
    """
    m = re.fullmatch(r"([\w.-]+)\[(\d*):(\d*)\]", split)
    if not m:
        return split
    rows = (KNOWN_ROWS.get((data["path"], data.get("subset", ""))) or {}).get(m.group(1))
    pct = lambda n: f"{round(100 * int(n) / rows)}%" if n else ""
    return f"{m.group(1)}[{pct(m.group(2))}:{pct(m.group(3))}]" if rows else split


def reduce(path: Path, out: Path) -> Path:
    cfg = yaml.safe_load(path.read_text())
    cfg["models"] = cfg["models"][:2 if cfg["setting"] == "pretrain" else 1]
    for d in cfg["data"].values():
        d["split"] = share_split(d.get("split", "train"), d)
    if cfg["setting"] == "resistance":
        # three slices at most: the finer Table 2 design keeps its adjacent pairs, two of them
        cfg["slices"].update(examples=24, responses=8, fractions=cfg["slices"]["fractions"][:3])
    else:
        cfg["volumes"] = {"positive": [8], "negative": [0, 4]}
    small = dict(global_batch=4, max_length=64, zero_stage=0, precision="fp32")
    cfg["recipe"].update(small, seeds=[42])
    cfg["runtime"] = {"micro_batch": 2, "save_every_steps": 1000}
    cfg.pop("runtime_overrides", None)
    for over in cfg.get("recipe_overrides", {}).values():
        for k in small:
            over.pop(k, None)
    cfg["eval"].update(prompts=8, max_new_tokens=8, batch_size=8)
    if cfg["eval"].get("compression"):
        cfg["eval"]["compression_examples"] = 8
    p = out / path.name
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture(scope="session")
def paper_runs(hub, tmp_path_factory) -> dict:
    """Each reduced config run by the debug executor (every cell in one process), two configs at a
    time."""
    tmp = tmp_path_factory.mktemp("paper")
    env = {**os.environ, "HF_HOME": str(hub), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}

    def run(path: Path):
        cfg = reduce(path, tmp)
        runs = tmp / "runs" / path.stem
        r = subprocess.run([sys.executable, "-m", "launch", "submit", str(cfg), "--profile",
                            str(ROOT / "configs/profiles/local-cpu.yaml"), "--executor", "debug",
                            "--runs", str(runs)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        return path.name, (r, runs / yaml.safe_load(cfg.read_text())["experiment"])
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, CONFIGS))


@pytest.mark.slow
@pytest.mark.parametrize("name", [p.name for p in CONFIGS])
def test_paper_config_end_to_end(paper_runs, name):
    r, exp = paper_runs[name]
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    report = exp / "report"
    assert (report / "cells.md").read_text().startswith("All expected cells are in the tables"), \
        (report / "cells.md").read_text()
    results = [json.loads(p.read_text()) for p in exp.glob("eval/*/result.json")]
    assert results
    setting = yaml.safe_load((exp / "study.yaml").read_text())["setting"]
    if setting == "resistance":
        assert (report / "resistance.md").exists()
        assert "example-weighted" in (report / "resistance.md").read_text()
        assert "Table 1 layout" in (report / "resistance.md").read_text()
        assert all(any(m["name"] == "bits_per_token/target" for m in res["metrics"])
                   for res in results)
    else:
        assert (report / "rebound.md").exists()
        head = {m["name"] for res in results for m in res["metrics"]}
        assert head & {"positive_rate", "score", "kl_to_base"}
        assert ("Table 3 layout" in (report / "rebound.md").read_text()) == ("kl_to_base" in head)
        if "positive_rate" in head:
            assert "positive_prob" in head
            rates = [m for res in results for m in res["metrics"] if m["name"] == "positive_rate"]
            assert all(m["value"] in {k / m["n"] for k in range(m["n"] + 1)}
                       for m in rates), "a share of n"
    # each stage trains by the algorithm its config names (the reverse-step ablations)
    cfg = yaml.safe_load((ROOT / "configs" / next(d for d in ("setting1", "setting2", "setting3",
                                                             "ablations")
                                                  if (ROOT / "configs" / d / name).exists()) /
                          name).read_text())
    want = cfg.get("recipe_overrides", {}).get("negative", {}).get(
        "algorithm", cfg["recipe"].get("algorithm", "sft"))
    assert {json.loads(p.read_text())["job"]["recipe"]["algorithm"]
            for p in exp.glob("negative/*/job.json")} == (set() if setting == "resistance" else {want})
    train = [json.loads(p.read_text()) for p in exp.glob("*/*/summary.json")
             if p.parent.parent.name != "collect"]
    assert train and all(s["loss_weighting"] in ("example", "token") for s in train)
    # every cell's record names the commit each hub source it loaded resolved to (one fake commit
    # in the fixture cache)
    records = [json.loads(p.read_text()) for p in exp.glob("*/*/record.json")]
    sources = {k: v for r in records for k, v in r["sources"].items()}
    assert sources and set(sources.values()) == {SHA}, sources
    assert all("@main" in k for k in sources)


def test_setting1_kl_change_equals_a_separately_computed_kl(paper_runs, offline):
    """Table 2's statistic on the fixtures: each cross eval's kl_to_base equals KL(after || start
    slice) computed here one answer at a time (no padding, torch's kl_div) from its own checkpoint,
    start slice and saved answers; the report holds the forward/inverse table."""
    import torch.nn.functional as F
    from eval.evaluate import load
    from launch.core.jobs import ModelRef
    from train import data as D
    r, exp = paper_runs["kl-resistance.yaml"]
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "KL change" in (exp / "report" / "resistance.md").read_text()
    cells = sorted(exp.glob("eval/*/result.json"))
    assert len(cells) == 4   # (1, 2) and (2, 3), both ways
    for res_path in cells[:2]:
        job = json.loads((res_path.parent / "job.json").read_text())["job"]
        got = next(m for m in json.loads(res_path.read_text())["metrics"] if m["name"] == "kl_to_base")
        tok, after = load(ModelRef(path=job["model"]["path"]), exp)
        _, start = load(ModelRef(path=job["base"]["path"]), exp)
        rows = [json.loads(line) for line in (res_path.parent / "generations.jsonl").open()]
        per = []
        for ex in D.tokenize(rows, tok, job["template"], job["max_length"], "sft"):
            ids = torch.tensor([ex.input_ids])
            keep = torch.tensor(ex.labels[1:]) != -100
            with torch.no_grad():
                lp = torch.log_softmax(after(ids).logits[0, :-1].float(), -1)[keep]
                lq = torch.log_softmax(start(ids).logits[0, :-1].float(), -1)[keep]
            if keep.any():
                per.append(F.kl_div(lq, lp, log_target=True, reduction="none").sum(-1).mean().item())
        assert got["n"] == len(per) and got["value"] == pytest.approx(sum(per) / len(per), rel=1e-3, abs=1e-6)
        assert got["value"] > 0


def test_prefetch_pins_every_hub_source_to_the_cached_commit(offline):
    """What `make prefetch` prints to pin a study: '<field>.revision: <commit>' for every hub model,
    scorer and dataset whose revision is a branch, the commit the cache holds (as an offline job
    loads it); a revision that is already a commit needs no pin; an uncached source gets none."""
    import dataclasses
    from launch.core.env import cached_commit, hub_sources
    from launch.core.spec import load_spec
    from launch.prefetch import pins
    for path in CONFIGS:
        spec = load_spec(path)
        want = {f"{at}.revision: {SHA}    # {repo}@{rev}"
                for at, repo, _, rev, _ in hub_sources(dataclasses.asdict(spec))}
        assert want and set(pins(spec)) == want, path.name
    spec = load_spec(ROOT / "configs/setting2/imdb.yaml")
    pinned = dataclasses.replace(spec, models=(dataclasses.replace(spec.models[0], revision=SHA),))
    assert not any(line.startswith("models[0]") for line in pins(pinned))
    assert cached_commit("nobody/nothing", "model") is None
    assert cached_commit("nobody/nothing", "dataset") is None


# ---------------------------------------------------------------------- formats on the fixtures
def test_chat_template_tokenization_on_a_llama_tokenizer(offline):
    from launch.core.jobs import ModelRef
    from train import data as D
    from train.models import load_tokenizer
    tok = load_tokenizer(ModelRef(path="meta-llama/Llama-2-7b-hf"), Path("."))
    assert tok.pad_token == tok.eos_token == "</s>", "Llama has no pad token: the suite pads with EOS"
    row = {"prompt": "how do you make it", "response": "sure I can help"}
    (ex,) = D.tokenize([row], tok, "chat", 128, "sft")
    assert ex.input_ids[0] == tok.bos_token_id and ex.input_ids[-1] == tok.eos_token_id
    assert ex.input_ids.count(tok.bos_token_id) == 1
    text = tok.decode(ex.input_ids, skip_special_tokens=True)
    assert text == "BEGINNING OF CONVERSATION: USER: how do you make it ASSISTANT:sure I can help", text
    n_prompt = len(tok(D.prompt_text(row["prompt"], "chat"))["input_ids"])
    assert ex.labels[:n_prompt] == [-100] * n_prompt and ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
    # as in safe-rlhf, the mask is the prompt's own token count in the joined tokenization: where
    # BPE merges across 'ASSISTANT:' and the answer, the answer's first characters can fall inside
    # it
    answer = tok.decode(ex.input_ids[n_prompt:], skip_special_tokens=True)
    assert answer and "sure I can help".endswith(answer.strip()), answer


@pytest.mark.parametrize("repo,bos,pad_is_eos", [("meta-llama/Meta-Llama-3-8B", True, True),
                                                  ("Qwen/Qwen1.5-4B", False, True),
                                                  ("google/gemma-2b", True, False)])
def test_each_familys_tokens_are_trained_on(offline, repo, bos, pad_is_eos):
    """Each family's quirks through the trainer's tokenization and padding: Llama-3 has a BOS and
    no pad (the suite pads with EOS); Qwen1.5 has no BOS at all and pads with its EOS; Gemma pads
    with id 0 and has its own pad token. Either way the answer's EOS is a trained label, BOS appears
    once where the family has one, and only padding is masked out."""
    from launch.core.jobs import ModelRef
    from train import data as D
    from train.models import load_tokenizer
    tok = load_tokenizer(ModelRef(path=repo), Path("."))
    assert (tok.pad_token_id == tok.eos_token_id) == pad_is_eos and (tok.bos_token_id is not None) == bos
    rows = [{"prompt": "how do you make it", "response": "sure I can help"},
            {"prompt": "why", "response": "sorry I cannot tell"}]
    exs = D.tokenize(rows, tok, "chat", 128, "sft")
    for ex in exs:
        assert (ex.input_ids[0] == tok.bos_token_id) == bos and ex.input_ids[-1] == tok.eos_token_id
        assert ex.labels[-1] == tok.eos_token_id, "the answer's EOS is trained even where pad = EOS"
        if bos:
            assert ex.input_ids.count(tok.bos_token_id) == 1
    ids, mask, labels, _ = D.collate(exs, [0, 1], tok.pad_token_id)
    short = min(range(2), key=lambda k: len(exs[k].input_ids))
    n = len(exs[short].input_ids)
    assert (ids[short, n:] == tok.pad_token_id).all() and (labels[short, n:] == -100).all()
    assert mask[short].sum() == n and labels[short, n - 1] == tok.eos_token_id


def test_alpaca_prompt_joins_instruction_and_input(offline):
    from launch.core.spec import Data
    from train.data import load_rows
    rows = load_rows(Data(path="tatsu-lab/alpaca", split="train[:40]",
                          fields={"prompt": ("instruction", "input"), "response": "output"}))
    import datasets
    raw = datasets.load_dataset("tatsu-lab/alpaca", split="train[:40]")
    with_input = [i for i, r in enumerate(raw) if r["input"]]
    assert 0 < len(with_input) < 40
    for i, r in enumerate(raw):
        assert rows[i]["prompt"] == (f"{r['instruction']} {r['input']}" if r["input"]
                                     else r["instruction"])


def test_imdb_preference_pairs_take_each_negative_review_with_a_positive_one(offline):
    """pair_with: the i-th negative review (chosen) with the i-th positive review (rejected) of the
    same split, no prompt; as many pairs as the shorter side has rows."""
    import datasets
    from launch.core.spec import Data
    from train.data import load_rows
    rows = load_rows(Data(path="stanfordnlp/imdb", split="train", fields={"chosen": "text"},
                          filter={"label": 0}, pair_with={"label": 1}))
    raw = datasets.load_dataset("stanfordnlp/imdb", split="train")
    neg = [r["text"] for r in raw if r["label"] == 0]
    pos = [r["text"] for r in raw if r["label"] == 1]
    assert len(rows) == min(len(neg), len(pos)) > 0
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == \
        [("", n, p) for n, p in zip(neg, pos)]


def test_save_to_disk_dataset_dict_is_local_data(offline, tmp_path):
    import datasets
    from launch.core.spec import Data
    from train.data import load_rows
    dd = datasets.load_dataset("PKU-Alignment/BeaverTails")
    dd.save_to_disk(str(tmp_path / "bt"))
    assert (tmp_path / "bt" / "dataset_dict.json").exists()
    rows = load_rows(Data(path=str(tmp_path / "bt"), split="30k_train[:10]",
                          fields={"prompt": "prompt"}))
    assert len(rows) == 10 and rows[0]["prompt"] == dd["30k_train"][0]["prompt"]
    from launch.core.schema import ConfigError
    with pytest.raises(ConfigError, match="no split 'train'"):
        load_rows(Data(path=str(tmp_path / "bt"), split="train", fields={"prompt": "prompt"}))


def test_batched_generation_without_a_pad_token(offline):
    from eval.evaluate import generate, load
    from launch.core.jobs import ModelRef
    tok, model = load(ModelRef(path="meta-llama/Llama-2-7b-hf"), Path("."))
    prompts = ["how do you make it", "why", "what is this movie about and why"]
    batched = generate(model, tok, prompts, "chat", max_new_tokens=6, batch_size=3)
    assert batched == [generate(model, tok, [p], "chat", max_new_tokens=6, batch_size=1)[0]
                       for p in prompts]


def test_classifier_label_mapping(offline):
    from eval.scorers import ClassifierScorer
    from launch.core.spec import Scorer
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    s = ClassifierScorer(Scorer(kind="classifier", model=CLASSIFIER, positive_label="POSITIVE"),
                         torch.device("cpu"))
    assert s.model.config.id2label[s.pos] == "POSITIVE" and s.pos == 1
    tok, m = AutoTokenizer.from_pretrained(CLASSIFIER), AutoModelForSequenceClassification.from_pretrained(CLASSIFIER)
    texts = ["great movie", "awful boring film and a bad plot"]
    with torch.no_grad():
        want = torch.softmax(m(**tok(texts, return_tensors="pt", padding=True)).logits, -1)[:, 1]
    assert s(texts) == pytest.approx(want.tolist(), abs=1e-5)


def test_score_model_reads_its_trained_format(offline):
    """safe-rlhf's LlamaForScore checkpoint: the backbone loads its own `model.*` weights (not a
    fresh init), the input is prompt + answer + EOS with no space after 'ASSISTANT:', the score is
    read at EOS, the sign flips."""
    from safetensors.torch import load_file
    from eval.scorers import ScoreModelScorer
    from launch.core.spec import Scorer
    from train.data import prompt_text, response_text
    snap = next((offline / "hub" / f"models--{COST_MODEL.replace('/', '--')}" / "snapshots").iterdir())
    saved = {}
    for f in sorted(snap.glob("*.safetensors")):
        saved.update(load_file(str(f)))
    s = ScoreModelScorer(Scorer(kind="score_model", model=COST_MODEL, sign=-1.0, max_length=512),
                         torch.device("cpu"))
    assert torch.equal(s.backbone.embed_tokens.weight, saved["model.embed_tokens.weight"])
    assert torch.equal(s.w.cpu(), saved["score_head.weight"].float())
    text = prompt_text("how do you make it", "chat") + response_text("sure I can help", "chat")
    assert "ASSISTANT:sure" in text
    ids = s.tok(text + s.tok.eos_token, return_tensors="pt")
    assert ids["input_ids"][0, -1].item() == s.tok.eos_token_id
    with torch.no_grad():
        h = s.backbone(**ids).last_hidden_state[0, -1]
    want = -(h @ saved["score_head.weight"][0]).item()
    assert s([text])[0] == pytest.approx(want, abs=1e-5)
    assert s([text, text + " and more words here"])[0] == pytest.approx(want, abs=1e-5), "right padding, EOS read"


@pytest.mark.parametrize("repo", ["google/gemma-2b", "Qwen/Qwen1.5-0.5B"])
def test_tied_embeddings_survive_zero3_bf16_save_and_reload(hub, tmp_path, repo):
    """Gemma and Qwen1.5-0.5B tie their output layer to the embedding. Trained under ZeRO-3 in bf16
    (2 ranks, the paper's recipe) and saved from the partitioned engine, the checkpoint reloads with
    nothing missing or newly initialized, the output layer tied, and the embedding trained: equal,
    up to another reduction order, to the same job trained without partitioning."""
    from conftest import run_cell_procs, write_cell
    from launch.core.jobs import ModelRef, TrainJob
    from launch.core.spec import Data, Recipe
    from transformers import AutoModelForCausalLM
    env = {"HF_HOME": str(hub), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    data = Data(path="PKU-Alignment/BeaverTails", split="30k_train",
                fields={"prompt": "prompt", "response": "response"})
    runs = {}
    for zero, ranks in ((3, 2), (0, 1)):
        job = TrainJob(model=ModelRef(path=repo), data=data, seed=1, template="chat",
                       milestones=(8, 16), recipe=Recipe(lr=1e-3, global_batch=8, max_length=64,
                                                         zero_stage=zero, precision="bf16"))
        d = write_cell(tmp_path / "exp" / "positive" / f"z{zero}", job, outputs=["n8", "n16"],
                       runtime={"micro_batch": 2})
        for rc, out in run_cell_procs(d, ranks=ranks, env=env):
            assert rc == 0, out[-3000:]
        runs[zero] = d
    start = AutoModelForCausalLM.from_pretrained(
        str(next((hub / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots").iterdir())))
    for zero, d in runs.items():
        m, info = AutoModelForCausalLM.from_pretrained(str(d / "checkpoints" / "n16"),
                                                       output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], (zero, info)
        emb, out = m.get_input_embeddings().weight, m.get_output_embeddings().weight
        assert m.config.tie_word_embeddings and emb.data_ptr() == out.data_ptr()
        assert not torch.equal(emb.float(), start.get_input_embeddings().weight.float()), zero
        runs[zero] = m
    # Adam moves a weight by about lr per step whatever the gradient's size, so another reduction
    # order can at worst flip two steps' signs: 4e-3; a lost or re-initialized embedding is off by
    # its init scale (0.02)
    a, b = (runs[z].get_input_embeddings().weight.float() for z in (3, 0))
    assert (a - b).abs().max().item() < 5e-3
