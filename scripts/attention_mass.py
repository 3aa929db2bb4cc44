#!/usr/bin/env python3
"""Where does stories260K put its attention? Evidence for EVALUATION.md.

StreamingLLM's explanation of why a plain window collapses: models trained with
every sequence starting at position 0 (and BOS) learn to dump surplus attention
on the first token, an "attention sink"; evicting it shifts that mass onto the
rest. This measures, with the float64 numpy reference (tests/reference), the
mean attention each layer pays to the first cell of a 512-token context, for
late queries (positions 256..511), against the uniform share 1/(pos+1), and the mass on the 64 most recent cells:

  - context = BOS + text (how perplexity and generate start);
  - context = text cut mid-way, no BOS (what a window cache shows the model);
  - the same with a BOS put back in front (what streaming(1, ...) keeps).

Usage: /usr/bin/python3 scripts/attention_mass.py TEXT [MODEL] [BIN]
"""
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
import llama_ref  # noqa: E402

text_path = sys.argv[1]
model_path = sys.argv[2] if len(sys.argv) > 2 else "/work/shared/models/stories260K.gguf"
binary = sys.argv[3] if len(sys.argv) > 3 else os.path.join(HERE, "..", "build", "service",
                                                             "sinkserve")
ids = [int(x) for x in subprocess.run(
    [binary, "tokenize", "--model", model_path, "--file", text_path],
    check=True, capture_output=True, text=True).stdout.split()]

model = llama_ref.Model(model_path)
captured = []
plain_softmax = llama_ref.softmax


def recording_softmax(x, axis=-1):
    p = plain_softmax(x, axis=axis)
    if p.ndim == 3:  # (n_heads, n_q, n_cells): attention probabilities
        captured.append(p)
    return p


llama_ref.softmax = recording_softmax


def first_cell_mass(tokens):
    captured.clear()
    model.forward_batch(tokens, model.new_cache())
    q = np.arange(256, len(tokens))
    rows = []
    for p in captured:  # one per layer
        mass = p[:, q, 0]  # (n_heads, n_q)
        recent = np.mean([p[:, t, max(0, t - 63):t + 1].sum(axis=-1).mean() for t in q])
        rows.append((mass.mean(), recent, mass.mean(axis=1).max()))
    return rows, np.mean(1.0 / (q + 1))


cases = [
    ("BOS + text[0:511]", [1] + ids[:511]),
    ("text[3000:3512], no BOS", ids[3000:3512]),
    ("BOS + text[3000:3511]", [1] + ids[3000:3511]),
]
for name, tokens in cases:
    rows, uniform = first_cell_mass(tokens)
    print(f"{name}: uniform share {uniform:.4f}")
    for layer, (mean, recent, best_head) in enumerate(rows):
        print(f"  layer {layer}: first cell {mean:.4f} (most sink-like head {best_head:.4f}); "
              f"last 64 cells {recent:.3f}")
