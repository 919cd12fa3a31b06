"""Measure one training step's peak RSS increase for a tiny BERT, in a fresh process (run as a script).

Usage: python tests/memory_probe.py '[{"batch": 8, "positions": 256, ...}, ...]' -> prints a JSON list, per
spec the measured increase of the peak resident set over the state just before the model is built, and the
model's parameter count. A spec with "amp": true runs the step under CPU bf16 autocast, as training does
where the CPU has bf16. Each spec runs in its own forked child (a fresh peak: Linux starts a child's
ru_maxrss from its own pages), so the libraries are imported once. A warm-up step on a throw-away model
first loads every kernel, so library start-up is not counted against the step.
"""
from __future__ import annotations

import json
import os
import resource
import sys

import torch
from transformers import BertConfig, BertModel


def bert(spec: dict) -> BertModel:
    config = BertConfig(
        vocab_size=8, hidden_size=spec["hidden"], num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"], intermediate_size=spec["intermediate"],
        hidden_dropout_prob=spec["dropout"], attention_probs_dropout_prob=spec["dropout"],
        max_position_embeddings=spec["positions"], attn_implementation=spec["attention"])
    return BertModel(config, add_pooling_layer=False)


def train_step(model: BertModel, head: torch.nn.Linear, batch: int, positions: int) -> None:
    optimizer = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1e-3)
    embeds = torch.randn(batch, positions, model.config.hidden_size)
    mask = torch.ones(batch, positions, dtype=torch.long)
    mask[0, positions // 2:] = 0  # padding, so the attention mask is really used
    hidden = model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    loss = torch.nn.functional.cross_entropy(head(hidden[:, 0]), torch.zeros(batch, dtype=torch.long))
    loss.backward()
    optimizer.step()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def autocast(spec: dict) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(spec.get("amp")))


def measure(spec: dict) -> dict:
    torch.manual_seed(0)
    warm = {**spec, "positions": 8}
    with autocast(spec):
        train_step(bert(warm).train(), torch.nn.Linear(spec["hidden"], spec["classes"]), 2, 8)
    before = peak_rss_bytes()
    model = bert(spec).train()
    head = torch.nn.Linear(spec["hidden"], spec["classes"])
    with autocast(spec):
        train_step(model, head, spec["batch"], spec["positions"])
    n_parameters = sum(p.numel() for p in [*model.parameters(), *head.parameters()])
    return {"peak_increase": peak_rss_bytes() - before, "n_parameters": n_parameters}


def measure_in_child(spec: dict) -> dict:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        with os.fdopen(write_end, "w") as out:
            out.write(json.dumps(measure(spec)))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as result:
        text = result.read()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError(f"measuring {spec} failed (wait status {status})")
    return json.loads(text)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps([measure_in_child(spec) for spec in json.loads(sys.argv[1])]))
