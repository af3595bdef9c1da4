"""Small synthetic HellaSwag, LAMBADA and text files, shared by the evaluation tests and the
train.py --eval_tasks test."""
import json

import numpy as np

WORDS = "the cat sat on a mat while dogs ran far away into deep green woods".split()


def task_files(d, rows=6):
    """Small synthetic hellaswag, lambada and text files in d: {task: path}."""
    rng = np.random.default_rng(0)
    words = lambda n: " ".join(rng.choice(WORDS, n))
    hs, lb, tx = d / "hs.jsonl", d / "lambada.jsonl", d / "text.txt"
    hs.write_text("".join(json.dumps({"ctx": words(int(rng.integers(3, 10))),
                                      "endings": [words(int(rng.integers(1, 6)))
                                                  for _ in range(4)],
                                      "label": int(rng.integers(0, 4))}) + "\n"
                          for _ in range(rows)))
    lb.write_text("".join(json.dumps({"text": words(int(rng.integers(4, 20)))}) + "\n"
                          for _ in range(rows)))
    tx.write_text("\n\n".join(words(12) for _ in range(rows)))
    return {"hellaswag": str(hs), "lambada": str(lb), "text": str(tx)}
