"""Scorers and likelihood metrics: what the eval stage measures on a checkpoint.

- `rule_scores`: toy world, exact: +1 per positive attribute word ('...+'), -1 per negative
  ('...-').
- `ClassifierScorer`: any HF sequence classifier (e.g. the sentiment RoBERTa for IMDb): P(positive
  label).
- `ScoreModelScorer`: a causal-LM backbone with a scalar `score_head` read from the checkpoint's
  weights, the form of PKU-Alignment/beaver-7b-v1.0-cost (score at the last token, inputs
  truncated), without safe-rlhf.
- `token_logps` / `bits_per_token` / `kl_per_token`: compression rate of a model on a dataset (bits
  per response token) and token-level KL(model || base).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors import safe_open
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from launch.core.jobs import load_failure
from launch.core.schema import ConfigError
from launch.core.spec import Scorer
from train.data import collate
from train.toyworld import attribute


def rule_scores(texts: list[str]) -> list[float]:
    out = []
    for t in texts:
        s = sum(attribute(w) for w in t.split())
        out.append(1.0 if s > 0 else 0.0 if s < 0 else 0.5)
    return out


def _load_source(path: str, revision: str, loader, **kw):
    try:
        return loader(path, revision=revision, **kw)
    except Exception as e:  # noqa: BLE001 - loaders raise many types
        raise load_failure("a scorer", path, e, "eval.scorer.model",
                           "check the path or hub id (make prefetch on a cluster)") from None


def _dtype(spec: Scorer):
    """The scorer's weights: the checkpoint's dtype ("auto"), or float32 (the seed's choice)."""
    return torch.float32 if spec.dtype == "float32" else "auto"


class ClassifierScorer:
    def __init__(self, spec: Scorer, device):
        self.tok = _load_source(spec.model, spec.revision, AutoTokenizer.from_pretrained)
        self.model = _load_source(spec.model, spec.revision,
                                  AutoModelForSequenceClassification.from_pretrained,
                                  dtype=_dtype(spec)).to(device).eval()
        labels = {str(v).lower(): int(k) for k, v in self.model.config.id2label.items()}
        if spec.positive_label.lower() not in labels:
            raise ConfigError("eval.scorer.positive_label", f"{spec.positive_label!r} is not a "
                                                            f"label of {spec.model} "
                              f"(labels: {sorted(labels)})", "set positive_label to one of them")
        self.pos, self.spec, self.device = labels[spec.positive_label.lower()], spec, device

    @torch.no_grad()
    def __call__(self, texts: list[str], batch: int = 32) -> list[float]:
        out = []
        for i in range(0, len(texts), batch):
            enc = self.tok(texts[i:i + batch], return_tensors="pt", padding=True, truncation=True,
                           max_length=self.spec.max_length).to(self.device)
            probs = torch.softmax(self.model(**enc).logits.float(), dim=-1)[:, self.pos]
            out += probs.tolist()
        return out


class ScoreModelScorer:
    """Backbone (AutoModel) + linear score head from the checkpoint's `score_head.*` tensors."""

    def __init__(self, spec: Scorer, device):
        self.tok = _load_source(spec.model, spec.revision, AutoTokenizer.from_pretrained)
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.tok.padding_side = "right"
        self.backbone = _load_source(spec.model, spec.revision, AutoModel.from_pretrained,
                                     dtype=_dtype(spec)).to(device).eval()
        if getattr(self.backbone.config, "do_normalize", False):
            raise ConfigError("eval.scorer.model", f"{spec.model} normalizes its scores "
                                                   "(do_normalize: true), which "
                              "this scorer does not reproduce", "use a score model with "
                                                                "do_normalize: false")
        head = _read_tensors(spec.model, spec.revision, "score_head.")
        if "score_head.weight" not in head:
            raise ConfigError("eval.scorer.model", f"{spec.model} has no score_head.weight tensor",
                              "use a score model checkpoint (LlamaForScore form) or kind: "
                              "classifier")
        self.w = head["score_head.weight"].float().to(device)
        self.b = head.get("score_head.bias", torch.zeros(self.w.shape[0])).float().to(device)
        self.spec, self.device = spec, device

    @torch.no_grad()
    def __call__(self, texts: list[str], batch: int = 8) -> list[float]:
        """Scores of prompt + answer texts, read at the last token (truncated at max_length): with
        EOS appended (append_eos: as safe-rlhf trained its score models on prompt + answer + eos),
        or as the texts are (the seed's scoring script and the model card's example)."""
        out = []
        if self.spec.append_eos:
            texts = [t + (self.tok.eos_token or "") for t in texts]
        for i in range(0, len(texts), batch):
            enc = self.tok(texts[i:i + batch], return_tensors="pt", padding=True, truncation=True,
                           max_length=self.spec.max_length).to(self.device)
            h = self.backbone(**enc).last_hidden_state.float()
            last = enc["attention_mask"].sum(-1) - 1                      # end-of-sequence score
            end = h[torch.arange(h.shape[0], device=self.device), last]
            out += ((end @ self.w.T + self.b)[:, 0] * self.spec.sign).tolist()
        return out


def _read_tensors(model: str, revision: str, prefix: str) -> dict:
    """Tensors whose names start with `prefix`, from a local folder or the hub cache (safetensors,
    else PyTorch shards); the backbone's from_pretrained has already put the weights in the cache,
    so nothing is downloaded."""
    p = Path(model)
    if not p.is_dir():
        p = Path(snapshot_download(model, revision=revision, local_files_only=True))
    out = {}
    for f in sorted(p.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            for k in sf.keys():
                if k.startswith(prefix):
                    out[k] = sf.get_tensor(k)
    if not out:   # older score-model repos ship PyTorch shards (pytorch_model-0000x-of-0000y.bin)
        for f in sorted(p.glob("*.bin")):
            out.update({k: v for k, v in torch.load(f, map_location="cpu",
                                                    weights_only=True).items()
                        if k.startswith(prefix)})
    return out


def make_scorer(spec: Scorer, device):
    if spec.kind == "rule":
        return rule_scores
    if spec.kind == "classifier":
        return ClassifierScorer(spec, device)
    if spec.kind == "score_model":
        return ScoreModelScorer(spec, device)
    return None


@torch.no_grad()
def token_logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids.to(model.device),
                 attention_mask=mask.to(model.device)).logits[:, :-1].float()


@torch.no_grad()
def bits_per_token(model, examples, pad_id: int, batch: int = 16,
                   attribute_ids: set[int] | None = None):
    """Per-example bits per loss token (and per attribute token, when ids are given)."""
    per, per_attr = [], []
    for i in range(0, len(examples), batch):
        ids, mask, labels, _ = collate(examples, list(range(i, min(i + batch, len(examples)))),
                                       pad_id)
        logp = torch.log_softmax(token_logits(model, ids, mask), dim=-1)
        tgt = labels[:, 1:].to(logp.device)
        keep = tgt != -100
        nll = -logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) / math.log(2)
        for k in range(ids.shape[0]):
            if keep[k].any():
                per.append((nll[k] * keep[k]).sum().item() / keep[k].sum().item())
            if attribute_ids:
                a = keep[k] & torch.isin(tgt[k],
                                         torch.tensor(sorted(attribute_ids), device=tgt.device))
                if a.any():
                    per_attr.append((nll[k] * a).sum().item() / a.sum().item())
    return per, per_attr


@torch.no_grad()
def kl_per_token(model, base, examples, pad_id: int, batch: int = 16) -> list[float]:
    """Per-example mean over response tokens of KL(p_model || p_base), in nats."""
    out = []
    for i in range(0, len(examples), batch):
        ids, mask, labels, _ = collate(examples, list(range(i, min(i + batch, len(examples)))),
                                       pad_id)
        lp = torch.log_softmax(token_logits(model, ids, mask), dim=-1)
        lq = torch.log_softmax(token_logits(base, ids, mask).to(lp.device), dim=-1)
        kl = (lp.exp() * (lp - lq)).sum(-1)
        keep = (labels[:, 1:] != -100).to(kl.device)
        for k in range(ids.shape[0]):
            if keep[k].any():
                out.append((kl[k] * keep[k]).sum().item() / keep[k].sum().item())
    return out
