"""Training data: load a dataset role, map its columns, order it, tokenize it, and cut it into
batches.

Any source loads through `datasets`: a hub id (`load_dataset(id)`, from the HF cache on a cluster),
a local JSON/JSONL/CSV/Parquet file, or a `save_to_disk` folder. Rows become the suite's fields
(prompt, response, chosen, rejected). The order is a seeded permutation; a volume n is its first n
examples. Loss covers response tokens only (every token for `lm`). A global batch is split across
ranks, length-sorted into micro-batches.

    rows = load_rows(job.data, exp_dir); order = seeded_order(len(rows), seed)
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from launch.core.layout import resolve
from launch.core.jobs import load_failure
from launch.core.schema import ConfigError
from launch.core.spec import PREFERENCE, Data, source_kind, split_range

CHAT = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"   # the paper's template (safe-rlhf)


def _load_dataset(data: Data, exp_dir: Path):
    datasets.disable_progress_bars()
    path = resolve(data.path, exp_dir)
    kind = "local" if data.path.startswith("@") else source_kind(data.path)
    try:
        if kind == "hub":
            return datasets.load_dataset(path, data.subset or None, split=data.split,
                                         revision=data.revision)
        p = Path(path)
        if not p.exists():
            raise ConfigError("data.path", f"{path} does not exist",
                              "run the stage that makes it, or fix the path")
        if p.is_dir() and any((p / f).exists() for f in ("dataset_dict.json", "dataset_info.json",
                                                         "state.json")):
            # a save_to_disk folder: a DatasetDict (splits) or one Dataset
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                name = data.split.split("[")[0]
                if name not in ds:
                    raise ConfigError("data.split", f"{p} has no split {name!r} (splits: "
                                                    f"{sorted(ds)})",
                                      "use one of them")
                ds = ds[name]
            return ds.select(split_range(data.split, len(ds)))
        if p.is_dir():
            return datasets.load_dataset(str(p), split=data.split)
        ext = {".jsonl": "json", ".json": "json", ".csv": "csv",
               ".parquet": "parquet"}.get(p.suffix)
        if ext is None:
            raise ConfigError("data.path", f"cannot read {p.suffix or 'extensionless'} file {p}",
                              "use .json, .jsonl, .csv, .parquet or a save_to_disk folder")
        split = data.split if data.split.startswith("train") else "train"
        return datasets.load_dataset(ext, data_files=str(p), split=split)
    except ConfigError:
        raise
    except ValueError as e:   # datasets' word for a split or subset it does not have
        raise ConfigError("data.split", f"cannot load {path} (split {data.split}): "
                                        f"{type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}", "check the split and subset") from None
    # datasets raises many types; the user needs the path and the reason
    except Exception as e:
        raise load_failure(f"a dataset (split {data.split})", path, e, "data.path",
                           "check the path, split and "
                           "subset; on a cluster run make prefetch first") from None


def load_rows(data: Data, exp_dir: Path | str = ".") -> list[dict]:
    """Rows with the suite's field names, after the filter."""
    ds = _load_dataset(data, Path(exp_dir))
    cols = set(ds.column_names)
    mapped = [c for v in data.fields.values() for c in ((v,) if isinstance(v, str) else v)]
    for col in list(data.filter) + mapped:
        if col not in cols:
            raise ConfigError("data.fields", f"column {col!r} is not in {data.path} (columns: "
                                             f"{sorted(cols)})",
                              "map the suite's fields to existing columns")
    for col in data.pair_with:
        if col not in cols:
            raise ConfigError("data.pair_with", f"column {col!r} is not in {data.path}",
                              "filter the paired rows on an existing column")
    paired = ds.filter(lambda r: all(r[k] == v for k, v in data.pair_with.items())) \
        if data.pair_with else None
    if data.filter:
        flt = dict(data.filter)
        ds = ds.filter(lambda r: all(r[k] == v for k, v in flt.items()))
    fields = dict(data.fields) or {c: c for c in ("prompt", "response", "chosen", "rejected",
                                                  "text") if c in cols}
    rows = []

    def value(r, c) -> str:
        if isinstance(c, str):
            return "" if r[c] is None else str(r[c])
        return " ".join(v for v in (value(r, x) for x in c) if v.strip())

    for r in ds:
        row = {k: value(r, c) for k, c in fields.items()}
        if "text" in row:
            text = row.pop("text")
            if data.prefix_words:
                words = text.split(" ")
                row.setdefault("prompt", " ".join(words[:data.prefix_words]))
                row.setdefault("response", (" " + " ".join(words[data.prefix_words:])) if
                               len(words) > data.prefix_words else "")
            else:
                row.setdefault("prompt", "")
                row.setdefault("response", text)
        row.setdefault("prompt", "")
        rows.append(row)
    if paired is not None:   # row i's rejected answer: the i-th paired row's chosen column
        rows = [{**row, "rejected": value(r, fields["chosen"])} for row, r in zip(rows, paired)]
    if not rows:
        raise ConfigError("data", f"{data.path} (split {data.split}) has no rows after the filter "
                                  f"{data.filter}",
                          "check the split and the filter values")
    return rows


def seeded_order(n: int, seed: int) -> list[int]:
    """The fixed example order of a seed: volume v is order[:v]."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def prompt_text(prompt: str, template: str) -> str:
    return CHAT.format(prompt=prompt) if template == "chat" else prompt


def response_text(response: str, template: str) -> str:
    """The answer as it follows the prompt: as the data has it (safe-rlhf appends the answer right
    after 'ASSISTANT:', no space added; IMDb's continuation keeps its own leading space)."""
    return response


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]          # -100 where no loss
    # DPO: the rejected sequence (input_ids holds the chosen one)
    rejected_ids: list[int] | None = None
    rejected_labels: list[int] | None = None

    @property
    def length(self) -> int:
        return max(len(self.input_ids), len(self.rejected_ids or ()))

    @property
    def loss_tokens(self) -> int:
        return sum(l != -100 for l in self.labels[1:])


def _encode(tok, prompt: str, response: str, template: str, max_length: int, all_tokens: bool):
    """Token ids and labels of prompt + response + EOS, tokenized as one text (as safe-rlhf does);
    the prompt's tokens are those of the prompt alone, with no loss (all_tokens: every token's)."""
    head = prompt_text(prompt, template)
    ids = tok(head + response_text(response, template), add_special_tokens=True)["input_ids"]
    n_prompt = len(tok(head, add_special_tokens=True)["input_ids"]) if head else 0
    if tok.bos_token_id is not None and (not ids or ids[0] != tok.bos_token_id) and not n_prompt:
        ids, n_prompt = [tok.bos_token_id] + ids, 1   # a text with no prompt still starts from BOS
    ids = (ids + [tok.eos_token_id])[:max_length]
    labels = list(ids) if all_tokens else ([-100] * n_prompt + ids[n_prompt:])[:max_length]
    return ids, labels


def tokenize(rows: list[dict], tok, template: str, max_length: int,
             algorithm: str) -> list[Example]:
    out = []
    for row in rows:
        if algorithm in PREFERENCE:
            if "chosen" not in row or "rejected" not in row:
                raise ConfigError("data.fields", f"{algorithm} needs chosen and rejected fields",
                                  "map fields.chosen and fields.rejected to columns")
            c, cl = _encode(tok, row["prompt"], row["chosen"], template, max_length, False)
            r, rl = _encode(tok, row["prompt"], row["rejected"], template, max_length, False)
            out.append(Example(c, cl, r, rl))
        else:
            if "response" not in row:
                raise ConfigError("data.fields", "training needs a response (or text) field",
                                  "map fields.response or fields.text to a column")
            ids, labels = _encode(tok, row["prompt"], row["response"], template, max_length,
                                  algorithm == "lm")
            out.append(Example(ids, labels))
    if not any(e.loss_tokens for e in out):
        raise ConfigError("recipe.max_length", f"every prompt fills max_length {max_length}: no "
                                               "response token "
                          "is left to train on", "raise recipe.max_length or shorten the prompts")
    return out


def epoch_sequence(volume: int, epochs: int, seed: int) -> list[int]:
    """Example indices in training order: epoch 0 is the seeded order itself (so volumes are
    prefixes), later epochs reshuffle the same examples with their own seed."""
    seq = list(range(volume))
    for e in range(1, epochs):
        again = list(range(volume))
        random.Random(seed * 1_000_003 + e).shuffle(again)
        seq += again
    return seq


def global_batches(volume: int, global_batch: int, tail: str = "partial") -> list[tuple[int, int]]:
    """(start, end) positions of each optimizer step of a run over `volume` positions; tail "drop"
    leaves out the last positions that fill no global batch (Recipe.tail)."""
    end = volume - volume % global_batch if tail == "drop" else volume
    return [(s, min(s + global_batch, end)) for s in range(0, end, global_batch)]


def micro_batches(positions: list[int], examples: list[Example],
                  rank: int, world: int, micro: int) -> list[list[int]]:
    """This rank's micro-batches of one global batch: every rank gets the same number (ZeRO-3
    gathers every parameter once per micro-step, on all ranks together), never more than fixed
    micro-batching would take (ceil(batch / (world * micro))), with little padding.

    The batch is sorted longest first and cut into contiguous runs, one per micro-step; a run is
    dealt round-robin to the ranks, so its slowest rank holds ceil(run / world) rows of the run's
    first length. A small dynamic programme chooses the runs: it minimises the slowest rank's padded
    tokens summed over micro-steps plus a fixed cost per micro-step, under a memory budget of
    `micro` sequences of the batch's longest length per forward. The fixed cost starts at a quarter
    of a longest sequence and is raised until the count fits the cap. The loss is the token mean
    over the whole global batch, so the cut changes no maths. Where the batch has fewer examples
    than ranks, the ranks left over repeat one example with zero weight (a negative index)."""
    if not positions:
        return []
    order = sorted(positions, key=lambda i: (-examples[i].length, i))
    lens = [examples[i].length for i in order]
    n, budget = len(order), micro * lens[0]
    cap = -(-n // (world * micro))
    least = min(world, n)   # a run of at least `world` examples leaves no rank empty

    def cut(step_cost: float) -> list[tuple[int, int]]:
        best, back = [0.0] + [math.inf] * n, [0] * (n + 1)
        for j in range(1, n + 1):
            for i in range(j - 1, -1, -1):
                rows = -(-(j - i) // world)
                if rows * lens[i] > budget:
                    break
                if j - i < least and not (i == 0 and j == n):
                    continue
                c = best[i] + rows * lens[i] + step_cost
                if c < best[j]:
                    best[j], back[j] = c, i
        runs, j = [], n
        while j:
            runs.append((back[j], j))
            j = back[j]
        return runs[::-1]

    # at `hi` one more step never pays: the fewest steps win
    lo, hi = lens[0] / 4, float(lens[0] * n + 1)
    runs = cut(lo)
    if len(runs) > cap:
        runs = cut(hi)
        # the smallest step cost whose cut fits the cap (the count falls as the cost rises)
        for _ in range(12):
            mid = math.sqrt(lo * hi)
            trial = cut(mid)
            if len(trial) <= cap:
                hi, runs = mid, trial
            else:
                lo = mid
    out = []
    for i, j in runs:
        mine = order[i + rank:j:world]
        out.append(mine or [-1 - order[i]])
    return out


def collate(examples: list[Example], indices: list[int], pad_id: int, rejected: bool = False):
    """Right-padded tensors (input_ids, attention_mask, labels, weight) for one micro-batch; weight
    is 0 for a rank's zero-weight repeat (negative index). rejected=True: DPO's rejected ones."""
    seqs = [examples[abs(i) - 1 if i < 0 else i] for i in indices]
    pairs = [(e.rejected_ids, e.rejected_labels) if rejected else (e.input_ids, e.labels)
             for e in seqs]
    return _pad(pairs, pad_id, [0.0 if i < 0 else 1.0 for i in indices])


def collate_pair(examples: list[Example], indices: list[int], pad_id: int):
    """DPO: a micro-batch's chosen sequences, then its rejected ones, in one right-padded batch, so
    that one forward serves both (under ZeRO-3 each forward gathers every parameter). Rows [:k]
    chosen, [k:] rejected."""
    seqs = [examples[abs(i) - 1 if i < 0 else i] for i in indices]
    pairs = [(e.input_ids, e.labels) for e in seqs] + [(e.rejected_ids, e.rejected_labels)
                                                       for e in seqs]
    return _pad(pairs, pad_id, [0.0 if i < 0 else 1.0 for i in indices])


def _pad(pairs: list, pad_id: int, weight: list[float]):
    """(input ids, labels) pairs right-padded into one batch."""
    n = max(len(x) for x, _ in pairs)
    input_ids = torch.full((len(pairs), n), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), n), -100, dtype=torch.long)
    mask = torch.zeros((len(pairs), n), dtype=torch.long)
    for k, (x, y) in enumerate(pairs):
        input_ids[k, :len(x)] = torch.tensor(x)
        labels[k, :len(y)] = torch.tensor(y)
        mask[k, :len(x)] = 1
    return input_ids, mask, labels, torch.tensor(weight)
