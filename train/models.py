"""Model and tokenizer loading, shared by the trainer and the evaluator (neither imports the other).

A model comes from a hub id, a local folder or an `@stage/cell/checkpoints/<milestone>` reference,
or is built from scratch by `ref.init` (toy world and benchmark sizes). A path or hub id that is not
there is a one-line ConfigError; a source that is there and fails to load (out of memory, torn
weights) a one-line LoadError.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel,
                          LlamaConfig, LlamaForCausalLM)

from launch.core.jobs import load_failure
from launch.core.layout import resolve


def load_tokenizer(ref, exp_dir: Path):
    path = resolve(ref.tokenizer or ref.path, exp_dir)
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=ref.revision,
                                            trust_remote_code=ref.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - tokenizers raise many types
        raise load_failure("a tokenizer", path, e, "model.path",
                           "check the path or hub id (make prefetch on a cluster)") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(ref, exp_dir: Path, tok, seed: int, dtype=None, zero3_config: dict | None = None):
    """A causal LM from a hub id / local dir / checkpoint, or built from `ref.init` (seeded), in
    `dtype`.

    With `zero3_config` (a ZeRO-3 DeepSpeed config) a pretrained model is partitioned as it is built
    (transformers' DeepSpeed integration runs it under deepspeed.zero.Init), so no rank ever holds
    the whole model: a rank's host memory peaks at its partition plus one checkpoint shard, not at
    the full model in fp32. Models built by `init` (toy and benchmark sizes) are built whole on
    every rank, then cast."""
    dtype = dtype or torch.float32
    if ref.init is not None:
        torch.manual_seed(seed)
        i = ref.init
        if i.arch == "gpt2":
            cfg = GPT2Config(vocab_size=len(tok), n_positions=i.context, n_embd=i.width,
                             n_layer=i.layers,
                             n_head=i.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
            return GPT2LMHeadModel(cfg).to(dtype)
        llama = LlamaConfig(vocab_size=len(tok), hidden_size=i.width, intermediate_size=4 * i.width,
                            num_hidden_layers=i.layers, num_attention_heads=i.heads,
                            max_position_embeddings=i.context,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
        return LlamaForCausalLM(llama).to(dtype)
    path = resolve(ref.path, exp_dir)
    hf_ds = None
    try:
        if zero3_config is not None:
            from transformers.integrations.deepspeed import HfDeepSpeedConfig
            # from_pretrained sees it through a weak reference
            hf_ds = HfDeepSpeedConfig(zero3_config)
        return AutoModelForCausalLM.from_pretrained(path, revision=ref.revision, dtype=dtype,
                                                    trust_remote_code=ref.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - from_pretrained raises many types
        raise load_failure("a model", path, e, "model.path",
                           "check the path or hub id (make prefetch on a cluster)") from None
    finally:
        # later loads in this process (eval cells of the debug executor) are not ZeRO-3
        if hf_ds is not None:
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config
            unset_hf_deepspeed_config()
