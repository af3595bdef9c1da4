"""Sample from a model: python sample.py [--init_from out] [--start TEXT | --start FILE:path] ...

stdout holds only the samples, each (prompt + continuation) followed by a line of dashes;
the config, compile time and tokens/s go to stderr. Samples are decoded in batches (at most
--batch_size, and no more than fit in memory) and written as each batch finishes, so any
--num_samples runs in bounded memory.
"""
import argparse
import os
import sys
import time

SEPARATOR = "---------------"
# the sampling flags' defaults (parse_args: None until then, so that a given one is known)
SAMPLING = {"num_samples": 3, "temperature": 0.8, "top_k": 200, "top_p": 1.0, "seed": 1337}


def parse_args(argv=None):
    from gpt_jax.cli.common import (MAX_SEED, ArgumentParser, add_model_flags, seed, str2bool,
                                    utf8_text)
    from gpt_jax.generation.memory import MAX_SAMPLE_BATCH
    from gpt_jax.generation.step import WEIGHT_FORMATS
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    p.add_argument("--start", default="\n", type=start_text,
                   help='prompt text, or FILE:path (default: "\\n")')
    p.add_argument("--num_samples", type=int, default=None, help="default: 3")
    p.add_argument("--max_new_tokens", type=int, default=200)
    # None: not given (beam search refuses them given); SAMPLING holds the defaults
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: 0.8)")
    p.add_argument("--top_k", type=int, default=None, help="0 = off (default: 200)")
    p.add_argument("--top_p", type=float, default=None, help="nucleus mass; 1 = off (default)")
    p.add_argument("--seed", type=seed, default=None, help=f"0..{MAX_SEED} (default: 1337)")
    p.add_argument("--eos", type=str2bool, default=False,
                   help="true: a sample ends at <|endoftext|>")
    p.add_argument("--batch_size", type=int, default=None,
                   help=f"samples decoded at once (default: up to {MAX_SAMPLE_BATCH}, as many as fit "
                        f"in memory); the seed fixes the samples for a given batch size")
    p.add_argument("--weights", default=None, choices=WEIGHT_FORMATS,
                   help="how the decode loop stores the weights (default: the model's dtype); "
                        "bfloat16 or int8 read fewer bytes per token: faster at batch 1 on "
                        "CPU, with slightly different logits")
    p.add_argument("--repetition_penalty", type=float, default=1.0,
                   help="> 1 makes ids already in the text less likely (transformers'); 1 = off")
    p.add_argument("--no_repeat_ngram_size", type=int, default=0,
                   help="never repeat an n-gram of this size; 0 = off")
    p.add_argument("--min_p", type=float, default=0.0,
                   help="keep tokens at least this fraction as likely as the top one; 0 = off")
    p.add_argument("--min_new_tokens", type=int, default=0,
                   help="with --eos true: no <|endoftext|> before this many new tokens")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT", type=utf8_text,
                   help="a sample ends where its text ends in TEXT (repeatable; \\n, \\t "
                        "and \\\\ are read as escapes); the text is cut before it")
    p.add_argument("--stream", type=str2bool, default=False,
                   help="true: print each sample as its tokens are made (one at a time)")
    p.add_argument("--num_beams", type=int, default=1,
                   help="> 1: beam search (deterministic, as transformers'; the sampling flags "
                        "and --num_samples are refused): prints the --num_return_sequences "
                        "best continuations of the prompt, best first, scores on stderr")
    p.add_argument("--length_penalty", type=float, default=1.0,
                   help="beam search: score = sum log p / length ** this (> 0 favours longer)")
    p.add_argument("--num_return_sequences", type=int, default=1,
                   help="beam search: how many of the best beams to print (<= --num_beams)")
    args = p.parse_args(argv)
    if args.stop is not None:
        args.stop = [unescape(s) for s in args.stop]
    if args.num_beams > 1:
        sampling = [f"--{k}" for k in SAMPLING if getattr(args, k) is not None]
        if sampling:   # what the library refuses too (beams with sampling); num_samples: one
            p.error(f"--num_beams {args.num_beams} is beam search: it does not sample, and "
                    f"prints the --num_return_sequences best beams, not --num_samples "
                    f"samples: leave out {', '.join(sampling)} (or use --num_beams 1)")
        other = [f for f, on in (("--repetition_penalty", args.repetition_penalty != 1.0),
                                 ("--no_repeat_ngram_size", args.no_repeat_ngram_size != 0),
                                 ("--min_p", args.min_p != 0.0),
                                 ("--min_new_tokens", args.min_new_tokens != 0),
                                 ("--stop", bool(args.stop)), ("--stream", args.stream)) if on]
        if other:
            p.error(f"--num_beams {args.num_beams} is beam search, which takes none of "
                    f"{', '.join(other)}: leave them out (or use --num_beams 1)")
    for name, value in SAMPLING.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("num_samples", "max_new_tokens", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.step is not None and args.step < 0:
        p.error(f"--step must be a checkpoint step (0 or more), got {args.step}")
    if not args.temperature >= 0:  # NaN too
        p.error(f"--temperature must be >= 0 (0 = greedy, inf = uniform over the top_k), "
                f"got {args.temperature}")
    if args.top_k < 0:
        p.error(f"--top_k must be >= 0 (0 = off), got {args.top_k}")
    if not 0 < args.top_p <= 1:
        p.error(f"--top_p must be in (0, 1], got {args.top_p}")
    if args.num_beams != 1 or args.num_return_sequences != 1 or args.length_penalty != 1.0:
        from gpt_jax.generation.beam import check_beam_settings
        check_beam_settings(args.num_beams, args.length_penalty, False,
                            args.num_return_sequences)   # one-line UserError, exit 1
        if args.num_beams == 1:
            p.error("--length_penalty and --num_return_sequences apply to beam search: "
                    "pass --num_beams > 1")
    return args


def start_text(value: str) -> str:
    """--start: UTF-8 text (as a prompt file must be), or FILE:path (any file name)."""
    from gpt_jax.cli.common import utf8_text
    return value if value.startswith("FILE:") else utf8_text(value)


def unescape(text: str) -> str:
    r"""\n, \t and \\ in a flag's text as the characters they name (a shell passes them as
    two characters)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


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


def load_model(init_from: str, step=None):
    """A train.py out_dir (it has checkpoints/; the default `out` always means one, so a
    missing one says "train first"): its latest step, or --step; anything else is a gpt2* hub
    id or a Hugging Face directory."""
    from gpt_jax.evaluation.tasks import load_model
    return load_model(init_from, step, step_hint="sample from the latest with --step {step}")


class ReaderLeft(Exception):
    """stdout's reader has gone (`| head`): the samples stop quietly."""


def emit(text: str) -> None:
    """Write text to stdout at once. A reader that left (`| head -c 100`) ends the samples
    quietly (ReaderLeft); any other failed write (a full disk, /dev/full) is one line. Either
    way stdout then points at /dev/null, so the interpreter's last flush has nothing to fail on."""
    from gpt_jax.errors import UserError
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise ReaderLeft from None
    except OSError as e:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise UserError(f"could not write the samples to stdout ({e.strerror or e}): "
                        f"redirect it to a file on a disk with room, or to a pipe") from None


def main():
    args = parse_args()
    from gpt_jax.errors import UserError
    if sys.stdout is None:   # started with stdout closed (`>&-`)
        raise UserError("stdout is closed, and sample.py writes the samples there: redirect "
                        "it to a file or a pipe")
    try:
        return run_samples(args)
    except ReaderLeft:
        print("[sample] stdout's reader has gone: stopped", file=sys.stderr)
        return 0


def run_samples(args):
    """Load the model, decode, and write the samples (main, after the flags)."""
    import jax
    import numpy as np
    import gpt_jax
    from gpt_jax.generation.checks import check_max_new_tokens, check_prompts
    from gpt_jax.errors import DecodeMemoryError, UserError
    from gpt_jax.generation.decoding import compile_generate, generate_args
    from gpt_jax.generation.prompts import bucket_length
    from gpt_jax.generation.memory import max_batch, plan_batches
    from gpt_jax.generation.stopping import check_stop, cut_text, stop_tables
    from gpt_jax.model.tokenizer import EOT_ID, EOT_TOKEN

    text = read_prompt(args.start)
    params, cfg = load_model(args.init_from, args.step)
    enc = gpt_jax.get_tokenizer()
    ids = enc.encode(text, allowed_special={EOT_TOKEN}) or [EOT_ID]
    if max(ids) >= cfg.vocab_size:
        raise UserError(f"the prompt has token id {max(ids)} but the model knows only ids below "
                        f"{cfg.vocab_size} (vocab_size): use a prompt within its vocabulary")
    eos_id = EOT_ID if args.eos and EOT_ID < cfg.n_real_vocab else None
    if args.eos and eos_id is None:
        print(f"[sample] --eos true ignored: the model's vocabulary ({cfg.vocab_size} ids) has "
              f"no <|endoftext|> ({EOT_ID})", file=sys.stderr)
    # A terminal or pipe that cannot encode a character gets "?" rather than a traceback
    # halfway through the samples (a model may emit any byte sequence).
    sys.stdout.reconfigure(errors="replace")
    check_prompts([ids], cfg, check_max_new_tokens(args.max_new_tokens, cfg))
    if args.num_beams > 1:
        return beam_main(args, params, cfg, ids, eos_id, enc)
    P = bucket_length(len(ids), cfg.block_size)
    tables = None   # a long stop's matching takes memory per row: batches count it
    if args.stop:
        tables = stop_tables(check_stop(args.stop), enc, cfg.vocab_size)
    batch, n_batches = plan_batches(cfg, args.num_samples, P, args.max_new_tokens,
                                    1 if args.stream else args.batch_size, tables)
    key = jax.random.key(args.seed)
    prompts = np.broadcast_to(np.asarray(ids), (batch, len(ids)))   # a view: no 10**9-row list

    def sampling(i):  # batch i draws with its own key; batch 0 with the seed's own key
        return dict(key=key if i == 0 else jax.random.fold_in(key, i),
                    temperature=args.temperature, top_k=args.top_k or None,
                    top_p=args.top_p if args.top_p < 1 else None, eos_id=eos_id,
                    weights=args.weights, repetition_penalty=args.repetition_penalty,
                    no_repeat_ngram_size=args.no_repeat_ngram_size, min_p=args.min_p or None,
                    min_new_tokens=args.min_new_tokens,
                    stop=args.stop)

    for again in (True, False):  # every check (memory too) before the config line and compile
        try:
            generate_args(params, cfg, prompts, args.max_new_tokens, **sampling(0))
            break
        except DecodeMemoryError:
            fit = max_batch(cfg, P, args.max_new_tokens, stop=tables) or 0
            if fit < 1:   # not even one row: the library's advice
                raise
            if args.batch_size is None and again:   # free memory shrank since the plan
                batch, n_batches = plan_batches(cfg, args.num_samples, P, args.max_new_tokens,
                                                fit, tables)
                prompts = np.broadcast_to(np.asarray(ids), (batch, len(ids)))
                continue
            given = f"--batch_size {batch}" if args.batch_size else f"{batch} samples at once"
            raise UserError(f"{given} is more than fits in memory: at most {fit} samples of "
                            f"this prompt and --max_new_tokens fit at once here: pass "
                            f"--batch_size {fit} or less") from None
    print(f"[sample] model {args.init_from}: {cfg.n_layer} layers, {cfg.n_head} heads, "
          f"{cfg.n_embd} wide, vocab {cfg.vocab_size}, block {cfg.block_size}, {cfg.dtype}; "
          f"prompt {len(ids)} tokens, {args.num_samples} samples x {args.max_new_tokens} tokens "
          f"({n_batches} batch{'es' if n_batches > 1 else ''} of {batch}), "
          f"temperature {args.temperature}, top_k {args.top_k or 'off'}, "
          f"top_p {args.top_p if args.top_p < 1 else 'off'}, seed {args.seed}"
          f"{f', weights {args.weights}' if args.weights else ''}", file=sys.stderr)
    if args.stream:
        return stream_samples(params, cfg, ids, text, args, sampling)
    t0 = time.perf_counter()
    decode, dargs = compile_generate(params, cfg, prompts, args.max_new_tokens, **sampling(0))
    compile_s = time.perf_counter() - t0
    left, n_tokens, run_s = args.num_samples, 0, 0.0
    for i in range(n_batches):
        if i:  # the same arguments but the key (checked once: a check of free memory now
            # would count what this process's allocator keeps from the batches before)
            dargs = dargs._replace(key=sampling(i)["key"])
        t0 = time.perf_counter()
        new = np.asarray(decode(*dargs))  # (batch, max_new_tokens)
        run_s += time.perf_counter() - t0
        rows = new.tolist()[:left]
        left -= len(rows)
        n_tokens += len(rows) * new.shape[1]
        texts = []
        for row in rows:
            for end in (eos_id, -1):   # -1: padding after a stop string
                if end is not None and end in row:
                    row = row[:row.index(end)]
            sample_text = enc.decode(ids + row) if not args.stop else \
                enc.decode(ids) + cut_text(enc.decode(row), args.stop)
            texts.append(sample_text + "\n" + SEPARATOR + "\n")
        emit("".join(texts))
    print(f"[sample] compile {compile_s:.1f}s, {n_tokens} tokens in {run_s:.2f}s = "
          f"{n_tokens / run_s:,.1f} tokens/s", file=sys.stderr)


def stream_samples(params, cfg, ids, text, args, sampling):
    """--stream: one sample at a time, each printed piece by piece as its tokens are made."""
    import time
    import gpt_jax
    n_tokens, t0 = 0, time.perf_counter()
    for i in range(args.num_samples):
        emit(text)
        for piece in gpt_jax.generate_stream(params, cfg, [ids], args.max_new_tokens,
                                             text=True, **sampling(i)):
            n_tokens += 1
            emit(piece.text[0])
        emit("\n" + SEPARATOR + "\n")
    run_s = time.perf_counter() - t0
    print(f"[sample] streamed {n_tokens} tokens in {run_s:.2f}s (compile included) = "
          f"{n_tokens / run_s:,.1f} tokens/s", file=sys.stderr)


def beam_main(args, params, cfg, ids, eos_id, enc):
    """--num_beams > 1: the --num_return_sequences best beams of the one prompt, as samples."""
    import numpy as np
    from gpt_jax.errors import DecodeMemoryError, UserError
    from gpt_jax.generation.beam import beam_args, beam_search
    settings = dict(num_beams=args.num_beams, length_penalty=args.length_penalty,
                    num_return_sequences=args.num_return_sequences, eos_id=eos_id,
                    weights=args.weights)
    try:   # every check first
        beam_args(params, cfg, [ids], args.max_new_tokens, **settings)
    except DecodeMemoryError as e:   # in this command's words
        raise UserError(str(e).replace("num_beams=", "--num_beams ")) from None
    print(f"[sample] model {args.init_from}: {cfg.n_layer} layers, {cfg.n_embd} wide; prompt "
          f"{len(ids)} tokens, beam search: {args.num_beams} beams, length_penalty "
          f"{args.length_penalty}, {args.num_return_sequences} returned, up to "
          f"{args.max_new_tokens} tokens", file=sys.stderr)
    t0 = time.perf_counter()
    tokens, scores = beam_search(params, cfg, [ids], args.max_new_tokens, **settings)
    tokens, scores = np.asarray(tokens), np.asarray(scores)
    for row, score in zip(tokens.tolist(), scores):
        if eos_id is not None and eos_id in row:
            row = row[:row.index(eos_id)]
        emit(enc.decode(ids + row) + "\n" + SEPARATOR + "\n")
        print(f"[sample] beam score {score:.4f} ({len(row)} tokens)", file=sys.stderr)
    print(f"[sample] beam search with compile {time.perf_counter() - t0:.1f}s", file=sys.stderr)


def entry() -> None:
    """The console script (gpt-jax-sample), `python sample.py` and `python -m
    gpt_jax.cli.sample`. Ctrl-C / SIGTERM end the process at once, mid-decode too (a compiled
    loop runs to its end before Python would see a KeyboardInterrupt: 90 s for a long beam
    search); samples are written and flushed as they are made, so a sudden exit loses none."""
    from gpt_jax.cli.common import exit_on_signals, run
    exit_on_signals("sample.py")
    run(main)


if __name__ == "__main__":
    entry()
