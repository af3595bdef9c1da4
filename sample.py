"""Sample from a model: python sample.py [--init_from out] [--start TEXT | --start FILE:path] ...

stdout holds only the samples, each (prompt + continuation) followed by a line of dashes;
the config, compile time and tokens/s go to stderr.
"""
import argparse
import os
import sys
import time

SEPARATOR = "---------------"


def parse_args(argv=None):
    from gpt_jax.cli import ArgumentParser, str2bool
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init_from", default="out",
                   help="a train.py out_dir (default: out), or a gpt2* name / Hugging Face dir")
    p.add_argument("--start", default="\n", help='prompt text, or FILE:path (default: "\\n")')
    p.add_argument("--num_samples", type=int, default=3)
    p.add_argument("--max_new_tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=200, help="0 = off")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus mass; 1 = off")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--eos", type=str2bool, default=False,
                   help="true: a sample ends at <|endoftext|>")
    args = p.parse_args(argv)
    for name in ("num_samples", "max_new_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.temperature < 0:
        p.error(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        p.error(f"--top_k must be >= 0 (0 = off), got {args.top_k}")
    if not 0 < args.top_p <= 1:
        p.error(f"--top_p must be in (0, 1], got {args.top_p}")
    return args


def read_prompt(start: str) -> str:
    from gpt_jax.errors import UserError
    if not start.startswith("FILE:"):
        return start
    path = start[len("FILE:"):]
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the prompt file {path!r} given by --start: "
                        f"{getattr(e, 'strerror', None) or e}")


def load_model(init_from: str):
    """A train.py out_dir (it has checkpoints/; the default `out` always means one, so a
    missing one says "train first"); anything else is a gpt2* hub id or a Hugging Face dir."""
    import gpt_jax
    if init_from == "out" or os.path.isdir(os.path.join(init_from, "checkpoints")):
        return gpt_jax.load_checkpoint(init_from)
    return gpt_jax.from_hf(init_from)


def main():
    args = parse_args()
    import jax
    import numpy as np
    import gpt_jax
    from gpt_jax.errors import UserError
    from gpt_jax.bench import compile_seconds
    from gpt_jax.generate import _decode, decode_args
    from gpt_jax.tokenizer import EOT_ID, EOT_TOKEN

    text = read_prompt(args.start)
    params, cfg = load_model(args.init_from)
    enc = gpt_jax.get_tokenizer()
    ids = enc.encode(text, allowed_special={EOT_TOKEN}) or [EOT_ID]
    if max(ids) >= cfg.vocab_size:
        raise UserError(f"the prompt has token id {max(ids)} but the model knows only ids below "
                        f"{cfg.vocab_size} (vocab_size): use a prompt within its vocabulary")
    eos_id = EOT_ID if args.eos and EOT_ID < cfg.vocab_size else None
    dargs, static = decode_args(
        params, cfg, [ids] * args.num_samples, args.max_new_tokens,
        key=jax.random.key(args.seed), temperature=args.temperature,
        top_k=args.top_k or None, top_p=args.top_p if args.top_p < 1 else None, eos_id=eos_id)
    print(f"[sample] model {args.init_from}: {cfg.n_layer} layers, {cfg.n_head} heads, "
          f"{cfg.n_embd} wide, vocab {cfg.vocab_size}, block {cfg.block_size}, {cfg.dtype}; "
          f"prompt {len(ids)} tokens, {args.num_samples} samples x {args.max_new_tokens} tokens, "
          f"temperature {args.temperature}, top_k {args.top_k or 'off'}, "
          f"top_p {args.top_p if args.top_p < 1 else 'off'}, seed {args.seed}", file=sys.stderr)
    decode, compile_s = compile_seconds(_decode, *dargs, **static)
    t0 = time.perf_counter()
    new = np.asarray(decode(*dargs))  # (num_samples, max_new_tokens)
    run_s = time.perf_counter() - t0
    print(f"[sample] compile {compile_s:.1f}s, {new.size} tokens in {run_s:.2f}s = "
          f"{new.size / run_s:,.1f} tokens/s", file=sys.stderr)
    for row in new.tolist():
        if eos_id is not None and eos_id in row:
            row = row[:row.index(eos_id)]
        sys.stdout.write(enc.decode(ids + row) + "\n" + SEPARATOR + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    from gpt_jax.cli import run
    run(main)
